"""Export a trained model without its taps: TorchScript and ONNX.

    speechdistill export exp/baseline/best --out exp/baseline/export

Both take ``(feats (N, T, 80) float32, feat_lens (N,) int64)`` and return
``(log_probs (N, T', V), out_lens (N,))``. The ONNX file is checked against
PyTorch under onnxruntime on a padded batch before it is kept.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from speechdistill.students.model import load_inference_model
from speechdistill.utils import atomic_write_bytes, atomic_write_text


def _example(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 230, 80, generator=g)
    lens = torch.tensor([230, 161])
    return feats, lens


def export_onnx(model, path: Path, atol: float = 1e-3) -> float:
    """Write ``path`` and return the largest |onnx - torch| on a padded test batch."""
    feats, lens = _example()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (feats, lens),
            str(tmp_path),
            input_names=["feats", "feat_lens"],
            output_names=["log_probs", "out_lens"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={
                "feats": {0: "N", 1: "T"},
                "feat_lens": {0: "N"},
                "log_probs": {0: "N", 1: "T_out"},
                "out_lens": {0: "N"},
            },
        )
        session = ort.InferenceSession(str(tmp_path), providers=["CPUExecutionProvider"])
        feats2, lens2 = _example(1)
        worst = 0.0
        for f, n in ((feats, lens), (feats2[:, :150], torch.tensor([150, 97]))):
            ref, ref_lens = model(f, n)
            got, got_lens = session.run(None, {"feats": f.numpy(), "feat_lens": n.numpy()})
            if not np.array_equal(got_lens, ref_lens.numpy()):
                raise RuntimeError(f"ONNX output lengths {got_lens} differ from PyTorch's {ref_lens}")
            for i, t in enumerate(ref_lens.tolist()):
                worst = max(worst, float(np.abs(got[i, :t] - ref[i, :t].numpy()).max()))
        if worst > atol:
            raise RuntimeError(f"ONNX outputs differ from PyTorch by {worst:.2e} (> {atol}); not written")
        atomic_write_bytes(path, tmp_path.read_bytes())
    return worst


def export_model(model, out: str | Path, torchscript: bool = True, onnx: bool = True) -> dict:
    """Export an InferenceModel into ``out``; returns the files written."""
    model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    # PyTorch's fused attention fast path (used in eval under no_grad) has no ONNX
    # export and bakes shapes into traces: export the plain path.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export(model, out, torchscript, onnx, written)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return written


def export(ckpt: str | Path, out: str | Path, torchscript: bool = True, onnx: bool = True) -> dict:
    model, meta = load_inference_model(ckpt)
    out = Path(out)
    written = export_model(model, out, torchscript, onnx)
    atomic_write_text(
        out / "model.json",
        json.dumps(
            {
                "checkpoint": str(ckpt),
                "main_unit": meta["config"]["model"]["main_unit"],
                "vocab": meta["vocab"],
                "frame_shift": model.encoder.cfg.frame_shift,
                "inputs": "feats (N,T,80) fbank, feat_lens (N,)",
                "outputs": "log_probs (N,T',V) CTC, blank=0; out_lens (N,)",
            },
            indent=1,
        )
        + "\n",
    )
    return written


def _export(model, out: Path, torchscript: bool, onnx: bool, written: dict) -> None:
    with torch.no_grad():
        if torchscript:
            feats, lens = _example()
            traced = torch.jit.trace(model, (feats, lens), check_trace=False)
            with tempfile.TemporaryDirectory() as tmp:
                traced.save(f"{tmp}/m.pt")
                atomic_write_bytes(out / "model.torchscript.pt", Path(f"{tmp}/m.pt").read_bytes())
            written["torchscript"] = out / "model.torchscript.pt"
        if onnx:
            err = export_onnx(model, out / "model.onnx")
            written["onnx"] = out / "model.onnx"
            written["onnx_max_abs_diff"] = f"{err:.2e}"
