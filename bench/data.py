"""Where data time goes: fbank extraction speed and loader throughput vs training.

    python bench/data.py --corpus data/small --utterances 200 --batches 40

1. Feature extraction, one thread, on the same utterances: lhotse's Fbank vs
   kaldi-native-fbank, in x real time (audio seconds per compute second).
2. The training loader (stored features, lhotse bucketing, `configs/asr/baseline.yaml`
   batches) with 0, 1 and 2 worker processes, in frames per second, and the same
   with on-the-fly features; against it, the frames per second one training step
   of the baseline consumes. A ratio loader/trainer above 1 means the trainer never
   waits on data.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/small")
    p.add_argument("--utterances", type=int, default=200)
    p.add_argument("--batches", type=int, default=40)
    args = p.parse_args()

    from speechdistill.config import load_config
    from speechdistill.data.audio import load_cut_audio
    from speechdistill.data.corpus import load_split
    from speechdistill.data.features import FbankExtractor
    from speechdistill.train import TrainConfig, setup

    torch.set_num_threads(1)
    cuts = load_split(args.corpus, "train").subset(first=args.utterances)
    audio = [load_cut_audio(c) for c in cuts]
    seconds = sum(len(a) for a in audio) / 16000
    print(f"fbank on {len(audio)} utterances ({seconds / 60:.1f} min of audio), one thread:")
    for kind in ("kaldi-native", "lhotse"):
        fb = FbankExtractor(kind)
        t0 = time.perf_counter()
        for a in audio:
            fb(a)
        print(f"  {kind:13s} {seconds / (time.perf_counter() - t0):7.0f} x real time")
    torch.set_num_threads(2)

    def frames_per_second(task, workers: int) -> float:
        task.cfg.data.num_workers = workers
        loader = task._loader(task.train_cuts, True, 0)
        it = iter(loader)
        next(it)  # worker start-up is paid once per epoch
        frames, t0 = 0, time.perf_counter()
        for _ in range(args.batches):
            batch = next(it, None)
            if batch is None:
                break
            frames += int(batch.feat_lens.sum())
        return frames / (time.perf_counter() - t0)

    common = [f"data.corpus={args.corpus}", "progress=false", "out_dir=''"]
    engine, stored = setup(load_config(TrainConfig, "configs/asr/baseline.yaml", common))
    _, fly = setup(load_config(TrainConfig, "configs/asr/baseline.yaml", [*common, "data.on_the_fly_features=true"]))
    # what training consumes: frames per second of forward + backward + update
    loader = stored._loader(stored.train_cuts, True, 0)
    it = iter(loader)
    frames, t_train = 0, 0.0
    for i in range(8):
        batch = next(it)
        t0 = time.perf_counter()
        engine.forward_backward(batch)
        engine.optimizer_step()
        if i >= 2:
            t_train += time.perf_counter() - t0
            frames += int(batch.feat_lens.sum())
    train_fps = frames / t_train
    print(f"training (baseline, 2 threads) consumes {train_fps:8.0f} frames/s")
    for name, task in (("stored features", stored), ("on-the-fly fbank", fly)):
        for workers in (0, 1, 2):
            fps = frames_per_second(task, workers)
            print(f"  loader, {name:16s} {workers} workers: {fps:9.0f} frames/s  loader/trainer {fps / train_fps:6.1f}")


if __name__ == "__main__":
    main()
