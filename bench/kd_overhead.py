"""Training-step cost of distillation, measured side by side in one process.

    python bench/kd_overhead.py --corpus data/small --steps 30

    python bench/kd_overhead.py --corpus data/small --steps 20 --ssl-teacher exp/ssl/teacher/hf

Needs the three unit LMs and their soft-label caches (see configs/asr/hier.yaml).
Prints the median step time of `baseline`, of `hier` with cached soft labels,
and of `hier` with the LMs run online (soft labels computed for each batch),
and the ratios to the baseline; then how much of the baseline's and the cached
`hier`'s step is building the batch (reading the soft-label caches) and how much
the rest (forward, backward, optimizer). The configs alternate on the same batches so
that machine noise hits both alike.

With ``--ssl-teacher`` (a HF HuBERT directory, e.g. the one `make demo-ssl`
pre-trains) it also times one distillation step of each SSL student
(configs/ssl/distilhubert.yaml, fithubert.yaml) with the teacher's layers read
from memory (as from the fp16 cache) and with the teacher run online.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lhotse import CutSet

from speechdistill.config import load_config
from speechdistill.data.layout import CorpusDir
from speechdistill.train import TrainConfig, setup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/small")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-utterances", type=int, default=12)
    p.add_argument("--alignment", default="own", help="the named alignment the caches were built on (data.alignment)")
    p.add_argument("--ssl-teacher", default=None, help="also time SSL student steps with this teacher")
    args = p.parse_args()
    if args.ssl_teacher:
        ssl_steps(args)
    common = [f"data.corpus={args.corpus}", "progress=false", "out_dir=''", f"data.alignment={args.alignment}"]
    base = setup(load_config(TrainConfig, "configs/asr/baseline.yaml", common))
    hier = setup(load_config(TrainConfig, "configs/asr/hier.yaml", common))
    from speechdistill.distill.soft_labels import reference_positions
    from speechdistill.teachers.lm import top_k_soft_labels
    from speechdistill.teachers.lm_train import load_lm

    hier_task = hier[1]
    kd_taps = [t for t in hier_task.cfg.model.taps if t.kd is not None]  # not the phone CTC head
    lms = {t.unit: load_lm(CorpusDir(args.corpus).lm(t.unit))[0] for t in kd_taps}
    cuts = sorted(base[1].train_cuts, key=lambda c: c.id)
    times = {"baseline": [], "hier_cached": [], "hier_online_lm": []}
    batch_times = {"baseline": [], "hier_cached": []}  # the part of each step spent building the batch
    for i in range(args.steps):
        chunk = CutSet.from_cuts(cuts[i * args.batch_utterances : (i + 1) * args.batch_utterances])
        for name, (engine, task) in (("baseline", base), ("hier_cached", hier)):
            t0 = time.perf_counter()
            batch = task.dataset[chunk]
            batch_times[name].append(time.perf_counter() - t0)
            engine.forward_backward(batch)
            engine.optimizer_step()
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # online: the LMs score every reference sequence of the batch
        with torch.no_grad():
            for tap in kd_taps:
                for cut in chunk:
                    ids, _ = reference_positions(cut, tap.unit, hier_task.units)
                    top_k_soft_labels(
                        lms[tap.unit].position_logits(torch.tensor([ids]))[0], tap.kd.top_k, tap.kd.temperature
                    )
        batch = hier_task.dataset[chunk]
        hier[0].forward_backward(batch)
        hier[0].optimizer_step()
        times["hier_online_lm"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[3:]) for k, v in times.items()}  # first steps warm up
    for k, v in med.items():
        print(f"{k:16s} median step {v * 1000:7.1f} ms   ratio to baseline {v / med['baseline']:.3f}")
    for k, v in batch_times.items():
        built = statistics.median(v[3:])
        print(f"{k:16s} of which building the batch {built * 1000:6.1f} ms, the rest {(med[k] - built) * 1000:7.1f} ms")


def ssl_steps(args) -> None:
    """SSL student steps: teacher states from memory (fp16, as cached) vs the teacher online."""
    from speechdistill.config import load_config
    from speechdistill.data.batching import WaveData, WaveDataset, load_wave_cuts
    from speechdistill.distill.ssl_distill import DistillConfig
    from speechdistill.distill.ssl_losses import align_frames, distilhubert_loss, hint_loss
    from speechdistill.students.ssl import build_student
    from speechdistill.teachers.upstream import load_teacher

    teacher = load_teacher(args.ssl_teacher)
    cuts = sorted(load_wave_cuts(WaveData(args.corpus, max_hours=0.2)), key=lambda c: c.id)
    batches = [WaveDataset()[CutSet.from_cuts(cuts[i * 12 : (i + 1) * 12])] for i in range(min(args.steps, 12))]
    for kind in ("distilhubert", "fithubert"):
        cfg = load_config(DistillConfig, f"configs/ssl/{kind}.yaml", [f"teacher={args.ssl_teacher}"])
        torch.manual_seed(0)
        student = build_student(cfg.student, teacher)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        targets = student.targets
        weights = [0.1] * (len(targets) - 1) + [1.0]
        cached = []
        for _, wavs, lens in batches:  # what the fp16 cache holds
            states, flens = teacher(wavs, lens)
            cached.append(([states[t].half() for t in targets], flens))
        times = {"cached": [], "online": []}
        for i, (_, wavs, lens) in enumerate(batches):
            for mode in ("cached", "online"):
                t0 = time.perf_counter()
                if mode == "online":
                    states, flens = teacher(wavs, lens)
                    tgt = [states[t] for t in targets]
                else:
                    tgt, flens = [x.float() for x in cached[i][0]], cached[i][1]
                preds, plens, _, _ = student.predict(wavs, lens)
                pairs = [align_frames(p, plens, tgt[0].shape[1], flens) for p in preds]
                aligned, mask = [a for a, _ in pairs], pairs[0][1]
                loss = (
                    hint_loss(aligned, tgt, mask, weights)
                    if kind == "fithubert"
                    else distilhubert_loss(aligned, tgt, mask)
                )[0]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                times[mode].append(time.perf_counter() - t0)
        med = {k: statistics.median(v[2:]) for k, v in times.items()}
        print(
            f"{kind:13s} teacher cached {med['cached'] * 1000:7.1f} ms   online {med['online'] * 1000:7.1f} ms   "
            f"online / cached {med['online'] / med['cached']:.2f}"
        )


if __name__ == "__main__":
    main()
