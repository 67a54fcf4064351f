"""Export a trained model without its taps: TorchScript and ONNX.

    speechdistill export exp/baseline/best --out exp/baseline/export

Both take ``(feats (N, T, 80) float32, feat_lens (N,) int64)`` and return
``(log_probs (N, T', V), out_lens (N,))``. The ONNX file is checked against
PyTorch under onnxruntime on a padded batch before it is kept.
"""

from __future__ import annotations

import contextlib
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
    """Write an acoustic model to ``path``; returns the largest |onnx - torch| on padded batches."""
    feats, lens = _example()
    feats2, _ = _example(1)
    return export_checked_onnx(
        model,
        [(feats, lens), (feats2[:, :150], torch.tensor([150, 97]))],
        path,
        input_names=["feats", "feat_lens"],
        output_names=["log_probs", "out_lens"],
        frames={"log_probs": (0, 1)},
        atol=atol,
        dynamic_axes={
            "feats": {0: "N", 1: "T"},
            "feat_lens": {0: "N"},
            "log_probs": {0: "N", 1: "T_out"},
            "out_lens": {0: "N"},
        },
    )


def export_checked_onnx(
    model,
    examples: list[tuple[torch.Tensor, ...]],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    frames: dict[str, tuple[int, int]],
    atol: float = 1e-3,
    dynamic_axes: dict | None = None,
    dynamic_shapes: tuple | None = None,
) -> float:
    """Export ``model`` (traced on ``examples[0]``) and keep the file only if onnxruntime
    agrees with PyTorch on every example: the last output (the lengths) exactly, and each
    output in ``frames`` (name -> its batch and time axes) within ``atol`` on the real
    frames of each utterance. Returns the largest difference; the file is written
    atomically, and not at all if the check fails.

    With ``dynamic_axes`` the TorchScript tracer exports (fast); with ``dynamic_shapes``
    (``torch.export.Dim`` per input) ``torch.export`` does, which also sees what the
    tracer misses (Hugging Face models of transformers 5 collect their hidden states
    through hooks: traced, they come out wrong, and the check says so)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        names = dict(input_names=input_names, output_names=output_names)
        if dynamic_shapes is not None:
            torch.onnx.export(model, examples[0], dynamo=True, dynamic_shapes=dynamic_shapes, **names).save(
                str(tmp_path)
            )
        else:
            torch.onnx.export(
                model, examples[0], str(tmp_path), opset_version=17, dynamo=False, dynamic_axes=dynamic_axes, **names
            )
        session = ort.InferenceSession(str(tmp_path), providers=["CPUExecutionProvider"])
        worst = 0.0
        for inputs in examples:
            with torch.no_grad():
                ref = model(*inputs)
            got = session.run(None, {n: x.numpy() for n, x in zip(input_names, inputs, strict=True)})
            ref_lens = ref[-1].numpy()
            if not np.array_equal(got[-1], ref_lens):
                raise RuntimeError(f"ONNX output lengths {got[-1]} differ from PyTorch's {ref_lens}")
            for name, (batch_axis, time_axis) in frames.items():
                i = output_names.index(name)
                r = np.moveaxis(ref[i].numpy(), (batch_axis, time_axis), (0, 1))
                g = np.moveaxis(got[i], (batch_axis, time_axis), (0, 1))
                for b, t in enumerate(ref_lens.tolist()):
                    worst = max(worst, float(np.abs(g[b, :t] - r[b, :t]).max()))
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
    with plain_attention():
        _export(model, out, torchscript, onnx, written)
    return written


@contextlib.contextmanager
def plain_attention():
    """PyTorch's fused attention fast path (used in eval under no_grad) has no ONNX
    export and bakes shapes into traces: export the plain path."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


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
