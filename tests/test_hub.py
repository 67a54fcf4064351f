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


def _supernet(models, **kw):
    from speechdistill.students.supernet import SupernetStudent

    cfg = StudentConfig(kind="supernet", num_layers=4, d_model=32, num_heads=4, ff_dim=64, conv_dim=8, **kw)
    torch.manual_seed(5)
    student = build_student(cfg, load_teacher(models["teacher"]))
    assert isinstance(student, SupernetStudent)
    return student.eval()


def test_an_extracted_subnet_gives_the_supernets_outputs(models, tmp_path):
    from speechdistill.compare import upstream_params
    from speechdistill.students.supernet import Subnet, extract

    sup = _supernet(models)
    wavs, lens = _padded(_waves(16000, 9000, seed=2))
    for s in (Subnet(16, (2, 2), (32, 32)), Subnet(24, (3, 1, 2), (48, 16, 64)), sup.largest):
        sup.subnet = s
        small = extract(sup, s)
        with torch.no_grad():
            want, want_lens = sup(wavs, lens)
            got, got_lens = small(wavs, lens)
            want_p, got_p = sup.predict(wavs, lens)[0], small.predict(wavs, lens)[0]
        assert len(got) == s.num_layers + 1 and got[-1].shape[-1] == s.d_model
        assert got_lens.tolist() == want_lens.tolist()
        for a, b in zip(got + got_p, want + want_p, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        if len(set(s.heads)) == 1:  # a uniform subnet is the whole of its extracted model
            assert upstream_params(small) == sup.subnet_params(s)
        save_student(small, tmp_path / "small")  # and saves, loads and exports like any student
        with torch.no_grad():
            again = load_upstream(tmp_path / "small")(wavs, lens)[0]
        assert all(torch.equal(a, b) for a, b in zip(again, got, strict=True))
    assert upstream_params(sup) == sup.subnet_params(sup.largest)


def test_the_sandwich_rule_trains_the_smallest_a_drawn_and_the_largest_subnet(models):
    from types import SimpleNamespace

    from speechdistill.distill.ssl_distill import DistillConfig, DistillCriterion, DistillTask
    from speechdistill.students.supernet import Subnet

    sup = _supernet(models, sandwich=True).train()
    torch.manual_seed(0)
    subnets = sup.step_subnets()
    assert len(subnets) == 3 and subnets[0] == sup.smallest == Subnet(16, (2, 2), (32, 32))
    assert subnets[2] == sup.largest and subnets[1].num_layers in (2, 3, 4)
    teacher = load_teacher(models["teacher"])
    wavs, lens = _padded(_waves(16000, 9000, seed=2))
    with torch.no_grad():
        states, t_lens = teacher(wavs, lens)
    states = dict(enumerate(states))
    cfg = DistillConfig(student=sup.cfg)
    task = DistillTask.__new__(DistillTask)  # the step alone, without a corpus or an engine
    task.cfg, task.model, task.criterion = cfg, sup, DistillCriterion(cfg, sup, teacher.num_layers)
    task.engine = SimpleNamespace(fabric=SimpleNamespace(device=torch.device("cpu")))
    task.teacher_states = lambda ids, w, n: (states, t_lens, None)
    torch.manual_seed(0)  # the same draw as above
    loss, terms = task.step(sup, (["a", "b"], wavs, lens))
    each = [task.criterion(sup, sup.predict(wavs, lens, subnet=s), states, t_lens, None)[0] for s in subnets]
    assert len({round(float(x), 4) for x in each}) == 3
    assert float(loss) == pytest.approx(float(sum(each)) / 3, rel=1e-6) == terms["loss"]
    # without it, one subnet drawn once per step (the RNG moves as for one draw)
    drawn = _supernet(models).train()
    task.model, task.criterion = drawn, DistillCriterion(cfg, drawn, teacher.num_layers)
    torch.manual_seed(1)
    one, after = drawn.sample_subnet(), torch.rand(1)
    torch.manual_seed(1)
    loss, _ = task.step(drawn, (["a", "b"], wavs, lens))
    assert torch.equal(torch.rand(1), after)
    assert float(loss) == float(task.criterion(drawn, drawn.predict(wavs, lens, subnet=one), states, t_lens, None)[0])
    # one drawn subnet leaves layers unused: DDP must look for them (tests/ssl_ddp.py runs both)
    assert DistillConfig(student=StudentConfig(kind="supernet")).leaves_parameters_unused()
    assert not DistillConfig(student=StudentConfig(kind="supernet", sandwich=True)).leaves_parameters_unused()
    with pytest.raises(ValueError, match="set student.sample=true"):
        StudentConfig(kind="supernet", sandwich=True, sample=False)


def test_supernet_samples_subnets_in_training_and_picks_one_for_a_budget(models):
    from speechdistill.students.supernet import subnet_for_budget

    sup = _supernet(models)
    assert sup.choices() == {
        "d_model": [16, 24, 32],
        "heads": [2, 3, 4],
        "ff_dim": [32, 48, 64],
        "num_layers": [2, 3, 4],
    }
    sup.train()
    torch.manual_seed(0)
    drawn = [sup.step_subnet() for _ in range(30)]
    assert len(set(drawn)) > 20 and all(s.num_layers in (2, 3, 4) for s in drawn)
    assert all(len(s.heads) == len(s.ff_dims) == s.num_layers for s in drawn)
    sup.eval()
    assert sup.step_subnet() == sup.largest
    full = sup.subnet_params(sup.largest)
    for fraction in (0.3, 0.6, 1.0):
        s = subnet_for_budget(sup, fraction)
        assert sup.subnet_params(s) <= fraction * full
        bigger = [u for u in sup.uniform_subnets() if sup.subnet_params(s) < sup.subnet_params(u) <= fraction * full]
        assert bigger == []
    assert subnet_for_budget(sup, 1.0) == sup.largest
    with pytest.raises(DataError, match="no subnet has at most 1% .* the smallest has"):
        subnet_for_budget(sup, 0.01)


def test_ssl_subnet_command_cuts_a_student_for_a_budget(models, tmp_path, capsys):
    from speechdistill.compare import upstream_params
    from speechdistill.students.ssl import load_student

    sup = _supernet(models)
    save_student(sup, tmp_path / "sup")
    main(["ssl", "subnet", str(tmp_path / "sup"), "--params", "0.5", "--out", str(tmp_path / "half")])
    half = load_student(tmp_path / "half")
    assert upstream_params(half) <= 0.5 * upstream_params(sup)
    said = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert f"{upstream_params(half) / upstream_params(sup):.1%} of the supernet's" in said
    with pytest.raises(SystemExit, match=r"a subnet is \{'d_model': int, 'heads': \[int per layer\]"):
        main(["ssl", "subnet", str(tmp_path / "sup"), "--subnet", '{"d_model": 16}', "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="larger than the supernet"):
        main(
            [
                "ssl",
                "subnet",
                str(tmp_path / "sup"),
                "--subnet",
                '{"d_model": 64, "heads": [2], "ff_dims": [8]}',
                "--out",
                str(tmp_path / "x"),
            ]
        )
    with pytest.raises(SystemExit, match="is a 'fithubert' student, not a supernet"):
        main(["ssl", "subnet", str(models["fithubert"]), "--params", "0.5", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x.json").exists()


def test_pareto_front_by_hand():
    from speechdistill.search import pareto_front

    points = [(1.0, 5.0), (2.0, 4.0), (2.5, 4.5), (3.0, 1.0), (0.5, 9.0), (3.0, 1.0), (4.0, 1.0)]
    assert pareto_front(points) == [4, 0, 1, 3]  # (2.5, 4.5) is beaten by (2, 4); the later ties are not better


def test_ssl_search_measures_candidates_within_budget(models, tiny_units, tmp_path):
    from speechdistill.search import search

    sup = _supernet(models, width_choices=[0.5, 1.0], depth_choices=[0.5, 1.0])
    save_student(sup, tmp_path / "sup", {"teacher": str(models["teacher"])})
    rows = search(tmp_path / "sup", tiny_units.parent, samples=4, time_budget=0.9, dev_hours=0.005, repeats=1)
    assert len(rows) >= 16 and len({json.dumps(r["subnet"]) for r in rows}) == len(rows)
    full = [r for r in rows if r["params_ratio"] == 1.0]
    assert len(full) == 1 and not full[0]["within_budget"]  # the full supernet is over a 0.9 time budget
    front = [r for r in rows if r.get("front")]
    assert front and all(r["within_budget"] for r in front)
    for r in front:  # nothing within the budget is both faster and better
        assert not any(
            o["within_budget"]
            and o["cpu_seconds_per_second"] < r["cpu_seconds_per_second"]
            and o["dev_loss"] < r["dev_loss"]
            for o in rows
        )
    assert all(r["dev_loss"] > 0 for r in rows)
    assert (tmp_path / "search.png").exists() and "| yes |" in (tmp_path / "search.md").read_text()


def test_an_extracted_subnet_exports_to_hf_and_onnx(models, tmp_path):
    from speechdistill.students.supernet import Subnet, extract

    sup = _supernet(models)
    save_student(extract(sup, Subnet(16, (2, 2), (32, 32))), tmp_path / "sub")
    written = export_upstream(tmp_path / "sub", tmp_path / "export")
    assert float(written["onnx_max_abs_diff"]) < 1e-3
    model = AutoModel.from_pretrained(tmp_path / "export" / "hf", local_files_only=True).eval()
    wavs, lens = _padded(_waves(16000, seed=9))
    with torch.no_grad():
        got = model(wavs).hidden_states
        want, _ = load_upstream(tmp_path / "sub")(wavs, lens)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
