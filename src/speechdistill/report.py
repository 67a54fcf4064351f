"""Tables and plots of ablation results.

>>> rows = summarize(results, baseline="baseline")
>>> write_report(results, Path("exp/ablation"), "baseline")   # results.{md,csv,png}
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from matplotlib.figure import Figure

from speechdistill.utils import atomic_write_bytes, atomic_write_text

METRICS = ("dev_wer", "test_wer", "dev_per", "test_per")


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def summarize(results: list[dict], baseline: str) -> list[dict]:
    """One row per variant: mean and std of each metric over seeds, and the relative
    change of the mean against the baseline's mean (negative = fewer errors)."""
    variants = list(dict.fromkeys(r["variant"] for r in results))
    rows = []
    for v in variants:
        runs = [r for r in results if r["variant"] == v]
        row = {
            "variant": v,
            "seeds": len(runs),
            "params": runs[0]["params"],
            "train_minutes": round(statistics.fmean(r["train_seconds"] for r in runs) / 60, 2),
        }
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([r.get(m) for r in runs])
        rows.append(row)
    base = next((r for r in rows if r["variant"] == baseline), None)
    for row in rows:
        for m in METRICS:
            b = base[f"{m}_mean"] if base else float("nan")
            row[f"{m}_rel"] = 100.0 * (row[f"{m}_mean"] - b) / b if b and b == b else float("nan")
    return rows


def _cell(row: dict, metric: str) -> str:
    """mean ± std; the mean alone when there is no spread to show (one seed)."""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def markdown(rows: list[dict]) -> str:
    head = "| variant | seeds | dev WER | test WER | rel. test WER | dev PER | test PER | params | train min |\n"
    head += "|---|---|---|---|---|---|---|---|---|\n"
    body = ""
    for r in rows:
        body += (
            f"| {r['variant']} | {r['seeds']} | {_cell(r, 'dev_wer')} | {_cell(r, 'test_wer')} "
            f"| {r['test_wer_rel']:+.1f}% | {_cell(r, 'dev_per')} | {_cell(r, 'test_per')} "
            f"| {r['params'] / 1e6:.2f}M | {r['train_minutes']:.1f} |\n"
        )
    return head + body


def write_report(results: list[dict], out: Path, baseline: str, name: str = "results") -> list[dict]:
    """``{out}/{name}.md``, ``.csv`` and ``.png``; returns the summary rows."""
    rows = summarize(results, baseline)
    atomic_write_text(out / f"{name}.md", markdown(rows))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / f"{name}.csv", buf.getvalue())
    atomic_write_bytes(out / f"{name}.png", _plot(rows))
    return rows


def _plot(rows: list[dict]) -> bytes:
    fig = Figure(figsize=(max(4, 1.2 * len(rows)), 3.5))
    ax = fig.subplots()
    names = [r["variant"] for r in rows]
    errors = [0.0 if math.isnan(r["test_wer_std"]) else r["test_wer_std"] for r in rows]  # nan: one seed
    ax.bar(names, [r["test_wer_mean"] for r in rows], yerr=errors, capsize=4)
    ax.set_ylabel("test WER (%)")
    ax.set_title("mean ± std over seeds")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


__all__ = ["markdown", "summarize", "write_report"]
