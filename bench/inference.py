"""Real-time factor of the exported acoustic model on one CPU thread, per preset.

    python bench/inference.py --seconds 10 --repeats 5 --presets xs s

Each preset (Conformer, subword CTC head of 256, no taps) is built with random
weights (speed does not depend on them) and exported with speechdistill's own
exporter; PyTorch eager, TorchScript and ONNX Runtime then take turns on the same
input, one intra-op thread each. RTF = compute seconds / audio seconds (median of
the repeats); the fbank column is kaldi-native-fbank on the same audio. Target:
RTF <= 0.05 for `xs`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["xs", "s", "m"])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import onnxruntime as ort

    from speechdistill.config import from_dict
    from speechdistill.data.features import FbankExtractor
    from speechdistill.export import export_model
    from speechdistill.students.model import AcousticModel, ModelConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    audio = (np.random.default_rng(0).standard_normal(int(16000 * args.seconds)) * 0.1).astype(np.float32)
    fbank = FbankExtractor()
    t0 = time.perf_counter()
    feats = torch.from_numpy(fbank(audio))[None]
    fbank_rtf = (time.perf_counter() - t0) / args.seconds
    lens = torch.tensor([feats.shape[1]])
    print(f"input: {args.seconds:g} s of audio, {feats.shape[1]} fbank frames; fbank RTF {fbank_rtf:.4f} (1 thread)")
    print(f"{'preset':6s} {'params':>8s} {'eager':>8s} {'torchscript':>12s} {'onnxruntime':>12s}")
    for preset in args.presets:
        cfg = from_dict(ModelConfig, {"encoder": {"kind": "conformer", "preset": preset, "dropout": 0.0}})
        model = AcousticModel(cfg, {"subword": 256, "phone": 40, "senone": 500}).without_taps().eval()
        with tempfile.TemporaryDirectory() as tmp:
            files = export_model(model, tmp)
            scripted = torch.jit.load(str(files["torchscript"]))
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            session = ort.InferenceSession(str(files["onnx"]), opts, providers=["CPUExecutionProvider"])
        runners = {  # used within this iteration only
            "eager": lambda: model(feats, lens),  # noqa: B023
            "torchscript": lambda: scripted(feats, lens),  # noqa: B023
            "onnxruntime": lambda: session.run(None, {"feats": feats.numpy(), "feat_lens": lens.numpy()}),  # noqa: B023
        }
        times = {k: [] for k in runners}
        with torch.no_grad():
            for run in runners.values():
                run()  # warm-up
            for _ in range(args.repeats):
                for k, run in runners.items():
                    t0 = time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - t0)
        rtf = {k: statistics.median(v) / args.seconds for k, v in times.items()}
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{preset:6s} {params / 1e6:7.2f}M {rtf['eager']:8.4f} {rtf['torchscript']:12.4f} {rtf['onnxruntime']:12.4f}"
        )


if __name__ == "__main__":
    main()
