"""SSL teachers and students in the ecosystem: s3prl's upstream contract (against s3prl's
own Featurizer), Hugging Face directories and ONNX, each round-tripped to the same outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from s3prl.upstream.interfaces import Featurizer
from torch import nn
from transformers import AutoModel

from speechdistill.cli import main
from speechdistill.export import export_checked_onnx
from speechdistill.hub import S3PRLUpstream, SSLStudentModel, export_upstream, s3prl_upstream
from speechdistill.students.ssl import StudentConfig, build_student, save_student
from speechdistill.teachers.ssl import FbankUpstream
from speechdistill.teachers.upstream import load_teacher, load_upstream
from speechdistill.utils import DataError
from test_ssl import save_tiny

FIT = dict(num_layers=3, d_model=16, ff_dim=32, conv_dim=8, num_heads=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random HuBERT teacher and both kinds of student built from it, saved."""
    root = tmp_path_factory.mktemp("hub")
    teacher = save_tiny("hubert", root / "teacher")
    torch.manual_seed(3)
    paths = {"teacher": teacher}
    for kind, extra in (("distilhubert", {"num_heads": 2}), ("fithubert", FIT)):
        save_student(build_student(StudentConfig(kind=kind, **extra), load_teacher(teacher)), root / kind)
        paths[kind] = root / kind
    return paths


def _waves(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(n, generator=g) for n in lengths]


def _padded(waves):
    lens = torch.tensor([len(w) for w in waves])
    return nn.utils.rnn.pad_sequence(waves, batch_first=True), lens


@pytest.mark.parametrize(
    "name, layers, rate", [("teacher", 5, 320), ("distilhubert", 3, 320), ("fithubert", 4, 640), ("fbank", 1, 160)]
)
def test_every_upstream_meets_s3prls_featurizer(models, name, layers, rate):
    up = s3prl_upstream(models.get(name, "fbank")).eval()
    assert up.get_downsample_rates("hidden_states") == rate
    waves = _waves(16000, 11000)
    with torch.no_grad():
        out = up(waves)
    assert len(out["hidden_states"]) == layers
    assert out["last_hidden_state"] is out["hidden_states"][-1] and out[f"hidden_state_{layers - 1}"] is not None
    assert all(h.shape[:2] == out["hidden_states"][0].shape[:2] for h in out["hidden_states"])
    # s3prl's own weighted sum, on our upstream: one weight per hidden state, one (T_i, C) per wave
    featurizer = Featurizer(up, upstream_device="cpu")
    assert featurizer.layer_num == layers if layers > 1 else not hasattr(featurizer, "weights")
    assert featurizer.downsample_rate == rate
    with torch.no_grad():
        feats = featurizer(waves, out)
    assert [f.shape[0] for f in feats] == [
        min(round(n / rate), out["hidden_states"][0].shape[1]) for n in (16000, 11000)
    ]
    if layers > 1:  # the weights start equal: the mean of the layers
        torch.testing.assert_close(feats[0], torch.stack(out["hidden_states"]).mean(0)[0, : feats[0].shape[0]])


def test_s3prl_upstream_pads_like_the_batched_upstream(models):
    up = s3prl_upstream(models["fithubert"]).eval()
    waves = _waves(16000, 9000, seed=4)
    with torch.no_grad():
        out = up(waves)["hidden_states"]
        states, lens = load_upstream(models["fithubert"]).eval()(*_padded(waves))
    for a, b in zip(out, states, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="list of 1-D waveforms"):
        up([torch.zeros(2, 16000)])


@pytest.mark.parametrize("name", ["teacher", "distilhubert", "fithubert"])
def test_hf_directory_round_trips_to_identical_outputs(models, name, tmp_path):
    written = export_upstream(models[name], tmp_path, onnx=False)
    assert written == {"hf": tmp_path / "hf"} and not (tmp_path / "model.onnx").exists()
    card = json.loads((tmp_path / "upstream.json").read_text())
    model = AutoModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert isinstance(model, SSLStudentModel) == (name != "teacher")
    up = load_upstream(models[name]).eval()
    wavs, lens = _padded(_waves(16000, 12000, seed=1))
    mask = (torch.arange(wavs.shape[1])[None] < lens[:, None]).long()
    with torch.no_grad():
        got = model(wavs, attention_mask=mask, output_hidden_states=True).hidden_states
        want, _ = up(wavs, lens)
    assert len(got) == len(want) == card["num_layers"] + 1
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["teacher", "fithubert"])
def test_onnx_matches_pytorch_on_unseen_shapes(models, name, tmp_path):
    written = export_upstream(models[name], tmp_path, hf=False)
    assert float(written["onnx_max_abs_diff"]) < 1e-3
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    wavs, lens = _padded(_waves(20000, 7000, 15000, 3000, seed=7))  # batch and lengths it was not traced on
    states, out_lens = session.run(None, {"wavs": wavs.numpy(), "wav_lens": lens.numpy()})
    with torch.no_grad():
        want, want_lens = load_upstream(models[name]).eval()(wavs, lens)
    assert out_lens.tolist() == want_lens.tolist()
    for i, t in enumerate(want_lens.tolist()):
        assert np.abs(states[:, i, :t] - torch.stack(want)[:, i, :t].numpy()).max() < 1e-3


class _BranchOnLength(nn.Module):
    """Traced, the branch on a length is frozen: ONNX then differs on the other branch."""

    def forward(self, x, lens):
        y = x * 2 if int(lens.max()) > 5 else x * 3
        return y, lens


def test_an_onnx_file_that_disagrees_with_pytorch_is_not_written(tmp_path):
    examples = [(torch.ones(1, 8, 2), torch.tensor([8])), (torch.ones(1, 4, 2), torch.tensor([4]))]
    with pytest.raises(RuntimeError, match="differ from PyTorch by 1.00e\\+00"):
        export_checked_onnx(
            _BranchOnLength(),
            examples,
            tmp_path / "m.onnx",
            input_names=["x", "lens"],
            output_names=["y", "lens_out"],
            frames={"y": (0, 1)},
            dynamic_axes={"x": {0: "N", 1: "T"}, "lens": {0: "N"}},
        )
    assert list(tmp_path.iterdir()) == []


def test_ssl_export_command_and_what_it_refuses(models, tmp_path, capsys):
    main(["ssl", "export", str(models["distilhubert"]), "--out", str(tmp_path / "x"), "--no-onnx"])
    assert "hf:" in capsys.readouterr().out and (tmp_path / "x" / "hf" / "config.json").exists()
    assert json.loads((tmp_path / "x" / "hf" / "config.json").read_text())["model_type"] == "speechdistill-ssl-student"
    with pytest.raises(DataError, match="FbankUpstream has no Hugging Face form"):
        export_upstream("fbank", tmp_path / "y", onnx=False)
    assert isinstance(S3PRLUpstream(FbankUpstream()).upstream, FbankUpstream)
