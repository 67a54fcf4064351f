"""Checkpoints: tensors in safetensors, everything else in a JSON beside them.

    >>> save_checkpoint("exp/run/last", tensors, meta)     # last.safetensors + last.json
    >>> tensors, meta = load_checkpoint("exp/run/last")

The JSON holds the tensors' SHA-256, so a truncated or mismatched pair is detected and
named. Both files are written atomically, and the pair switches as one: the new JSON
is first written as ``{name}.json.next``, then the tensors replace the old ones, then
``.next`` becomes the JSON. A kill or a full disk at any point leaves the old pair
(the write fails before the tensors are replaced) or the new one (a reader that finds
the new tensors beside the old JSON takes the matching ``.next`` and completes the
switch). Nothing is unpickled: safetensors holds only tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, save

from speechdistill.utils import DataError, atomic_write_bytes, atomic_write_text

FORMAT = "speechdistill-checkpoint"
VERSION = 1


class CheckpointError(DataError):
    """A checkpoint that cannot be used; the message names the file and why."""


def _paths(prefix: str | Path) -> tuple[Path, Path]:
    prefix = Path(prefix)
    if prefix.suffix in (".safetensors", ".json"):
        prefix = prefix.with_suffix("")
    return prefix.with_suffix(".safetensors"), prefix.with_suffix(".json")


def save_checkpoint(prefix: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    st_path, json_path = _paths(prefix)
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    meta = {"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(data).hexdigest(), **meta}
    pending = _pending(json_path)
    atomic_write_text(pending, json.dumps(meta, indent=1) + "\n")
    try:
        atomic_write_bytes(st_path, data)
    except BaseException:
        pending.unlink(missing_ok=True)  # the old pair is untouched; nothing pending
        raise
    os.replace(pending, json_path)
    return st_path


def finish_interrupted_save(prefix: str | Path) -> None:
    """If a save of ``prefix`` was stopped after its tensors were replaced, complete it
    (``load_checkpoint`` does this too; call it before asking whether the JSON exists)."""
    st_path, json_path = _paths(prefix)
    if st_path.exists() and _pending(json_path).exists():
        _switch_if_pending(st_path, json_path, st_path.read_bytes())


def _pending(json_path: Path) -> Path:
    return json_path.with_name(json_path.name + ".next")


def _switch_if_pending(st_path: Path, json_path: Path, data: bytes) -> bool:
    """Completes a save that was stopped between replacing the tensors and the JSON: True
    when the tensors match the pending JSON (which then becomes the JSON)."""
    pending = _pending(json_path)
    try:
        meta = json.loads(pending.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return False
    os.replace(pending, json_path)
    return True


def load_checkpoint(prefix: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    st_path, json_path = _paths(prefix)
    if st_path.exists() and not json_path.exists():
        finish_interrupted_save(prefix)
    for p in (st_path, json_path):
        if not p.exists():
            raise CheckpointError(
                f"checkpoint file {p} is missing (a checkpoint is a .safetensors file plus a .json beside it)"
            )
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{json_path} is not valid JSON ({e}); the checkpoint is corrupt") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a speechdistill checkpoint")
    data = st_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("sha256") and _switch_if_pending(st_path, json_path, data):
        meta = json.loads(json_path.read_text())
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(
            f"{st_path} is truncated or does not belong to {json_path.name} "
            f"({len(data)} bytes; checksum mismatch); use another checkpoint"
        )
    try:
        tensors = load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{st_path} cannot be read as safetensors ({e})") from None
    return tensors, meta


def load_model_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path) -> None:
    """Load ``prefix``-ed tensors into ``module``; a mismatch names the first differences."""
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {path} is from another model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, shape mismatch {sorted(shapes)[:3]}"
        )
    module.load_state_dict(state)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "rng.python": torch.tensor(py_state[1], dtype=torch.int64),
    }
    return tensors, {
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], py_state[2]],
    }


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, gauss = meta["python"]
    random.setstate((version, tuple(int(x) for x in tensors["rng.python"].tolist()), gauss))


def save_training_state(prefix: str | Path, model: torch.nn.Module, key: str, optimizer, scheduler, meta: dict) -> None:
    """Weights (under ``key``), optimizer, scheduler and RNG states: all a resume needs."""
    opt_t, opt_meta = optimizer_tensors(optimizer)
    rng_t, rng_meta = rng_state()
    tensors = {f"{key}{k}": v for k, v in model.state_dict().items()} | opt_t | rng_t
    save_checkpoint(
        prefix, tensors, meta | {"optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_meta}
    )


def load_training_state(prefix: str | Path, model: torch.nn.Module, key: str, optimizer, scheduler) -> dict:
    """Restore what ``save_training_state`` wrote; returns the checkpoint's metadata."""
    tensors, meta = load_checkpoint(prefix)
    load_model_state(model, tensors, key, prefix)
    load_optimizer(optimizer, tensors, meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    set_rng_state(tensors, meta["rng"])
    return meta


def save_hf_dir(model, path: str | Path) -> Path:
    """``model.save_pretrained`` into a temporary directory beside ``path``, then swap it
    in: a reader sees the old directory or the new one, never a half-written one."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path
