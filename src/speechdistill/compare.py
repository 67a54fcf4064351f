"""The compression report: teacher vs students, side by side in one process.

    speechdistill compare exp/ssl/teacher/hf exp/ssl/distilhubert/student exp/ssl/fithubert/student

One row per upstream: parameters, MACs per second of audio (torch's FLOP counter,
MACs = FLOPs / 2), CPU inference time per second of audio (this process's CPU time,
on one intra-op thread unless told otherwise; median of repeated runs on the same 10 s
input, the upstreams taking turns so machine noise hits all alike), the probe scores
found beside each upstream (``speechdistill probe`` writes
``{upstream}.probe-{task}.json``), and each student's ratio to the teacher. An
upstream named ``fbank`` (e.g. ``exp/ssl/fbank``) is the filterbank reference row:
no parameters, what the features alone give the probes.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from speechdistill.probe import probe_result_path
from speechdistill.teachers.ssl import is_fbank
from speechdistill.teachers.upstream import load_teacher
from speechdistill.utils import atomic_write_text


def upstream_params(model) -> int:
    """Parameters of a model as an upstream: prediction heads exist only for training."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("heads.", "hidden_proj.")))


def count_macs(upstream, seconds: float = 1.0) -> float:
    """Multiply-accumulates of one forward pass over ``seconds`` of audio."""
    wav = torch.randn(1, int(16000 * seconds))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        upstream(wav, torch.tensor([wav.shape[1]]))
    return counter.get_total_flops() / 2


def time_upstreams(upstreams: dict, seconds: float = 10.0, repeats: int = 7, threads: int = 1) -> dict[str, float]:
    """Median CPU time per second of audio of each upstream on ``threads`` intra-op
    threads, taking turns.

    CPU time is the process's (``time.process_time``: every thread's, none of the time
    spent waiting for a core that another job holds). On one thread it is also the wall
    time of one core; on more, it counts each thread's share, OpenMP's spin-waits
    included, so a small model that cannot keep a second core busy shows it."""
    torch.manual_seed(0)
    wav = torch.randn(1, int(16000 * seconds)) * 0.1
    lens = torch.tensor([wav.shape[1]])
    times = {name: [] for name in upstreams}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for up in upstreams.values():  # warm-up
                up(wav, lens)
            for _ in range(repeats):
                for name, up in upstreams.items():
                    t0 = time.process_time()
                    up(wav, lens)
                    times[name].append((time.process_time() - t0) / seconds)
    finally:
        torch.set_num_threads(before)
    return {name: statistics.median(v) for name, v in times.items()}


def compare(
    teacher: str | Path, students: list[str | Path], tasks=("pr", "asr", "sid"), repeats: int = 7, threads: int = 1
) -> list[dict]:
    paths = [Path(teacher), *map(Path, students)]
    ups = {str(p): load_teacher(p) for p in paths}
    secs = time_upstreams(ups, repeats=repeats, threads=threads)
    rows = []
    for p in paths:
        up = ups[str(p)]
        inner = up.upstream
        params = upstream_params(inner)
        name = f"{p} (filterbank reference)" if is_fbank(p) else str(p)
        row = {
            "upstream": name,
            "params": params,
            "macs_per_second": count_macs(up),
            "cpu_seconds_per_second": secs[str(p)],
            "threads": threads,
            "frame_shift_ms": round(1000 * up.frame_shift),
        }
        for task in tasks:
            f = probe_result_path(p, task)
            row[task] = json.loads(f.read_text())["test"] if f.exists() else None
        rows.append(row)
    t = rows[0]
    for r in rows:
        r["params_ratio"] = r["params"] / t["params"]
        r["macs_ratio"] = r["macs_per_second"] / t["macs_per_second"]
        r["time_ratio"] = r["cpu_seconds_per_second"] / t["cpu_seconds_per_second"]
    return rows


def markdown(rows: list[dict]) -> str:
    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    out = (
        "| upstream | params | MACs / s audio | CPU s / s audio | frame | PR PER | ASR WER | SID acc "
        "| params ratio | time ratio |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        out += (
            f"| {r['upstream']} | {r['params'] / 1e6:.2f}M | {r['macs_per_second'] / 1e9:.3f}G "
            f"| {r['cpu_seconds_per_second']:.4f} | {r['frame_shift_ms']} ms | {f(r.get('pr'))} "
            f"| {f(r.get('asr'))} | {f(r.get('sid'))} | {r['params_ratio']:.3f} | {r['time_ratio']:.3f} |\n"
        )
    return out


def write_report(rows: list[dict], out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(out / "compare.md", markdown(rows))
