"""The ablation command: a tiny real ablation that resumes, and the table's arithmetic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from speechdistill.ablate import ablate
from speechdistill.config import ConfigError
from speechdistill.parallel import call, run_jobs
from speechdistill.report import markdown, summarize


def test_summary_mean_std_and_relative_change():
    results = [
        {
            "variant": "baseline",
            "seed": 0,
            "params": 10,
            "train_seconds": 60,
            "dev_wer": 10.0,
            "test_wer": 20.0,
            "dev_per": 5.0,
            "test_per": 6.0,
        },
        {
            "variant": "baseline",
            "seed": 1,
            "params": 10,
            "train_seconds": 120,
            "dev_wer": 14.0,
            "test_wer": 22.0,
            "dev_per": 5.0,
            "test_per": 6.0,
        },
        {
            "variant": "hier",
            "seed": 0,
            "params": 10,
            "train_seconds": 60,
            "dev_wer": 9.0,
            "test_wer": 18.9,
            "dev_per": 4.0,
            "test_per": 5.0,
        },
    ]
    rows = {r["variant"]: r for r in summarize(results, "baseline")}
    assert rows["baseline"]["dev_wer_mean"] == pytest.approx(12.0)
    assert rows["baseline"]["dev_wer_std"] == pytest.approx(2.8284271, rel=1e-6)  # sample std
    assert rows["baseline"]["train_minutes"] == 1.5
    assert rows["hier"]["test_wer_rel"] == pytest.approx(100 * (18.9 - 21.0) / 21.0)
    assert rows["baseline"]["test_wer_rel"] == 0.0
    assert rows["hier"]["dev_wer_std"] != rows["hier"]["dev_wer_std"]  # one seed: no spread (nan), not 0
    table = markdown(list(rows.values()))
    assert "| baseline | 2 | 12.00 ± 2.83 | 21.00 ± 1.41 | +0.0% |" in table
    assert "| hier | 1 | 9.00 | 18.90 | -10.0% | 4.00 | 5.00 |" in table


def test_tiny_ablation_runs_and_resumes(tiny_units, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "name": "base",
                "progress": False,
                "data": {"corpus": str(tiny_units.parent), "max_duration": 30.0},
                "model": {"encoder": {"preset": None, "num_blocks": 2, "d_model": 32, "num_heads": 2, "ff_dim": 64}},
                "optim": {"max_steps": 3, "warmup_steps": 1},
            }
        )
    )
    spec = tmp_path / "ablation.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": str(base),
                "out_dir": str(tmp_path / "abl"),
                "baseline": "baseline",
                "variants": {"baseline": [], "senone_tap": ["model.taps=[{layer: 1, unit: senone}]"]},
            }
        )
    )
    results = ablate(spec, seeds=2)
    assert [(r["variant"], r["seed"]) for r in results] == [
        ("baseline", 0),
        ("baseline", 1),
        ("senone_tap", 0),
        ("senone_tap", 1),
    ]
    table = (tmp_path / "abl" / "results.md").read_text()
    assert "| senone_tap | 2 |" in table and (tmp_path / "abl" / "results.png").stat().st_size > 1000
    assert len((tmp_path / "abl" / "results.csv").read_text().splitlines()) == 3
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "abl").glob("*/seed*/result.json")}
    assert len(stamps) == 4
    assert ablate(spec, seeds=2) == results  # resumed: nothing is run again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a second ablation file sharing the out_dir (a control) reuses the runs and writes its
    # own table, leaving the first one's alone
    table_stamp = (tmp_path / "abl" / "results.md").stat().st_mtime_ns
    control = tmp_path / "control.yaml"
    control.write_text(
        yaml.safe_dump(yaml.safe_load(spec.read_text()) | {"report": "results-control", "variants": {"baseline": []}})
    )
    assert ablate(control, seeds=2) == results[:2]
    assert (tmp_path / "abl" / "results.md").stat().st_mtime_ns == table_stamp
    assert "| baseline | 2 |" in (tmp_path / "abl" / "results-control.md").read_text()
    # a finished run is not reported under a config it was not made with (a changed recipe)
    control.write_text(
        yaml.safe_dump(yaml.safe_load(control.read_text()) | {"overrides": ["optim.lr=0.01", "progress=true"]})
    )
    with pytest.raises(
        ConfigError, match=r"abl/baseline/seed0 holds a finished run .*\(optim.lr: 0.002 -> 0.01\); move"
    ):
        ablate(control, seeds=1)
    with pytest.raises(ValueError, match="report='x/y' must be a plain file name"):
        control.write_text(yaml.safe_dump(yaml.safe_load(spec.read_text()) | {"report": "x/y"}))
        ablate(control, seeds=1)


def test_runs_side_by_side_give_the_same_results_as_one_after_another(tiny_units, tmp_path):
    """jobs=2 (spawned processes) against jobs=1, both at one thread: the same numbers, in
    variant x seed order; only the wall time may differ."""
    base = tmp_path / "base.yaml"
    model = {"encoder": {"preset": None, "num_blocks": 1, "d_model": 32, "num_heads": 2, "ff_dim": 64}}
    base.write_text(
        yaml.safe_dump(
            {
                "data": {"corpus": str(tiny_units.parent), "max_duration": 30.0},
                "model": model,
                "optim": {"max_steps": 2, "warmup_steps": 1},
            }
        )
    )
    spec = tmp_path / "ablation.yaml"
    variants = {"baseline": [], "phone_tap": ["model.taps=[{layer: 1, unit: phone, kind: ctc}]"]}
    spec.write_text(yaml.safe_dump({"base": str(base), "variants": variants}))
    one = ablate(spec, seeds=1, out_dir=tmp_path / "one", jobs=1, threads=1)
    two = ablate(spec, seeds=1, out_dir=tmp_path / "two", jobs=2, threads=1)
    assert [(r["variant"], r["seed"]) for r in two] == [("baseline", 0), ("phone_tap", 0)]
    drop = ("train_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in two] == [
        {k: v for k, v in r.items() if k not in drop} for r in one
    ]
    assert (tmp_path / "two" / "phone_tap" / "seed0" / "best.safetensors").read_bytes() == (
        tmp_path / "one" / "phone_tap" / "seed0" / "best.safetensors"
    ).read_bytes()


def test_run_jobs_raises_a_jobs_failure_and_refuses_bad_counts():
    assert run_jobs(divmod, [(7, 2), (9, 4)], jobs=2) == [(3, 1), (2, 1)]
    with pytest.raises(ZeroDivisionError):
        run_jobs(divmod, [(1, 1), (1, 0)], jobs=2)
    with pytest.raises(ValueError, match="jobs=0 must be at least 1"):
        run_jobs(divmod, [(1, 1)], jobs=0)


def _write_later(path, text):
    import time

    time.sleep(0.5)  # long enough that a job not made to wait would start first
    Path(path).write_text(text)
    return text


def _read(path):
    return Path(path).read_text()


def test_run_jobs_starts_a_job_only_after_the_ones_it_waits_for(tmp_path):
    """Two processes: the reader waits for the slow writer (``after``), the job without a
    dependency goes beside it; results come back in call order."""
    f = str(tmp_path / "made")
    calls = [(_write_later, f, "lm"), (_read, f), (divmod, 7, 2)]
    assert run_jobs(call, calls, jobs=2, after=[(), (0,), ()]) == ["lm", "lm", (3, 1)]
    Path(f).unlink()
    had = torch.get_num_threads()
    assert run_jobs(call, calls, jobs=1, threads=1, after=[(), (0,), ()]) == ["lm", "lm", (3, 1)]
    assert torch.get_num_threads() == had  # the caller's thread count is left as it was
    with pytest.raises(ValueError, match="indices of earlier calls only"):
        run_jobs(call, calls, jobs=2, after=[(1,), (), ()])


def test_shipped_ablation_variants_all_build_configs():
    from speechdistill.ablate import load_ablation, run_config

    root = Path(__file__).parent.parent / "configs" / "asr"
    abl = load_ablation(root / "ablation.yaml")
    for variant in abl.variants:
        cfg = run_config(abl, variant, seed=1)
        assert cfg.seed == 1 and cfg.out_dir.endswith(f"{variant}/seed1")
    assert len(run_config(abl, "hier", 0).model.taps) == 5  # the phone CTC head + 4 aligned taps, 3 of them with KD


def test_demo_variants_are_the_baseline_plus_their_method():
    """The demo's recipe files (merged into the baseline) give exactly the configs the
    demo ran when every variant was written out as overrides (session 3's demo.yaml,
    now on the `own` alignment, with the baseline's aligned taps since session 18 and
    the second subword tap, without an LM, since session 19)."""
    from speechdistill.ablate import load_ablation, run_config
    from speechdistill.config import apply_override, from_dict, load_config, to_dict
    from speechdistill.train import TrainConfig

    root = Path(__file__).parent.parent / "configs" / "asr"
    demo = load_ablation(root / "demo.yaml")
    kd = "kd: {top_k: 8, temperature: 3.0}, ce_weight: 1.0"
    head = "{layer: 3, unit: phone, kind: ctc, weight: 0.3}"  # the baseline's phone CTC head
    senone, phone = (f"{{layer: {i}, unit: {u}, ce_weight: 1.0}}" for i, u in enumerate(("senone", "phone"), 2))
    sub5 = "{layer: 5, unit: subword, ce_weight: 1.0}"  # aligned truth alone: no LM at block 5
    written_out = {
        "baseline": [],
        "interp": ["interp.enabled=true"],
        "aux": [f"model.taps=[{head}, {senone}, {phone}, {{layer: 4, unit: subword, {kd}}}, {sub5}]"],
        "hier": [
            f"model.taps=[{head}, {{layer: 2, unit: senone, {kd}}}, {{layer: 3, unit: phone, {kd}}}, "
            f"{{layer: 4, unit: subword, {kd}}}, {sub5}]"
        ],
    }
    for variant, overrides in written_out.items():
        data = to_dict(load_config(TrainConfig, root / "baseline.yaml"))
        for o in [
            "precision=auto",
            "optim.max_epochs=4",
            "optim.fused=true",
            "data.alignment=own",
            *overrides,
            "seed=1",
            f"name={variant}",
            f"out_dir={Path('exp/demo') / variant / 'seed1'}",
        ]:
            apply_override(data, o)
        assert to_dict(run_config(demo, variant, 1)) == to_dict(from_dict(TrainConfig, data)), variant
    # what the demo's runs wait for (ablate's `first`): the LM caches on the own alignment
    assert run_config(demo, "baseline", 0).soft_labels == set()
    assert {(s.unit, s.top_k, s.temperature) for s in run_config(demo, "hier", 0).soft_labels} == {
        (u, 8, 3.0) for u in ("senone", "phone", "subword")
    }
    assert {s.unit for s in run_config(demo, "interp", 0).soft_labels} == {"subword"}


def test_a_student_run_waits_for_its_teacher_run_and_a_wrong_order_is_refused(tmp_path):
    """oracle.yaml's pattern: a variant whose teacher.path is another run's checkpoint
    waits for that run (index into ablate's job list, after the ``first`` jobs)."""
    from speechdistill.ablate import _waits_for, load_ablation, run_config

    root = Path(__file__).parent.parent / "configs" / "asr"
    abl = load_ablation(root / "oracle.yaml")
    abl.out_dir = str(tmp_path / "oracle")
    teacher = f"teacher.path={tmp_path / 'oracle' / 'teacher_labels' / 'seed0' / 'best'}"
    abl.variants = {"baseline": [], "teacher_labels": ["model.oracle=labels"], "student": [teacher]}
    configs = {v: run_config(abl, v, 0) for v in abl.variants}
    runs = [(v, s) for v in abl.variants for s in range(2)]  # teacher_labels seed 0 is run 2
    assert _waits_for(abl, configs, runs, first=3) == [(), (), (), (), (3 + 2,), (3 + 2,)]
    abl.variants = {"student": [teacher], "teacher_labels": ["model.oracle=labels"]}
    configs = {v: run_config(abl, v, 0) for v in abl.variants}
    runs = [(v, 0) for v in abl.variants]
    with pytest.raises(ConfigError, match="'student' distils from .* list the teacher's variant first"):
        _waits_for(abl, configs, runs, first=0)


JOB = """
import os, time

def job(folder):
    open(os.path.join(folder, f"{os.getpid()}.pid"), "w").close()
    time.sleep(300)  # a run that would outlive the test
"""
PARENT = """
import sys
sys.path.insert(0, sys.argv[1])
import slow
from speechdistill.parallel import run_jobs
run_jobs(slow.job, [(sys.argv[1],), (sys.argv[1],)], jobs=2, threads=1)
"""


def _running(pid: int) -> bool:
    """A process that exists and is not a zombie (PID 1 in a container may not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_parent_stops_its_jobs(tmp_path, sig):
    """`kill` (SIGTERM) of a running `ablate` stopped only the parent: its two workers went
    on training, reparented to init (nineteenth session). Now SIGTERM stops the jobs before
    the parent exits (143), and SIGKILL, which no handler sees, stops them through
    PDEATHSIG."""
    (tmp_path / "slow.py").write_text(JOB)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)])
    deadline = time.monotonic() + 120
    while len(pids := [int(p.stem) for p in tmp_path.glob("*.pid")]) < 2:
        assert parent.poll() is None and time.monotonic() < deadline, "the jobs never started"
        time.sleep(0.2)
    assert all(_running(p) for p in pids)
    parent.send_signal(sig)
    code = parent.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if _running(p)]
    for p in left:  # not to leave them to the next test
        os.kill(p, signal.SIGKILL)
    assert not left, "a job outlived its parent"
    assert code == (128 + sig if sig == signal.SIGTERM else -sig)
