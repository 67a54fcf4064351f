"""SSL teachers from local tiny random checkpoints, the student losses, frame alignment,
and saving/reloading students."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from speechdistill.distill.ssl_losses import align_frames, attention_map_loss, distilhubert_loss, hint_loss
from speechdistill.students.ssl import StudentConfig, build_student, load_student, save_student
from speechdistill.teachers.pretrain import ssl_optim
from speechdistill.teachers.ssl import HFUpstream
from speechdistill.teachers.upstream import load_teacher, load_upstream
from speechdistill.utils import DataError

TINY = dict(
    conv_dim=(16,) * 7,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=4,
)


def save_tiny(family: str, path, **kw):
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model, WavLMConfig, WavLMModel

    cfg_cls, model_cls = {
        "hubert": (HubertConfig, HubertModel),
        "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
        "wavlm": (WavLMConfig, WavLMModel),
    }[family]
    torch.manual_seed(0)
    model_cls(cfg_cls(**(TINY | kw))).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory):
    return save_tiny("hubert", tmp_path_factory.mktemp("hubert") / "teacher")


def _wavs():
    torch.manual_seed(1)
    wavs = torch.randn(2, 16000) * 0.1
    lens = torch.tensor([16000, 11000])
    wavs[1, 11000:] = 0
    return wavs, lens


@pytest.mark.parametrize("family", ["hubert", "wav2vec2", "wavlm"])
def test_each_hf_family_loads_from_a_local_directory(family, tmp_path):
    up = load_upstream(save_tiny(family, tmp_path / family))
    assert isinstance(up, HFUpstream) and up.model.config.model_type == family
    states, lens = up.eval()(*_wavs())
    assert len(states) == 4 + 1  # index 0 + one per transformer layer
    assert lens.tolist() == [49, 34]  # 20 ms frames of the CNN: (16000 - 400) // 320 + 1 = 49
    assert all(s.shape == (2, 49, 32) for s in states)


def test_hidden_state_zero_is_the_input_of_the_first_transformer_layer(hubert_dir):
    up = load_upstream(hubert_dir).eval()
    m = up.model
    wav = _wavs()[0][:1]
    states, _ = up(wav, torch.tensor([16000]))
    with torch.no_grad():
        h = m.feature_projection(m.feature_extractor(wav).transpose(1, 2))
        h0 = m.encoder.layer_norm(h + m.encoder.pos_conv_embed(h))
        h1 = m.encoder.layers[0](h0)
        h1 = h1[0] if isinstance(h1, tuple) else h1
    torch.testing.assert_close(states[0], h0)
    torch.testing.assert_close(states[1], h1)


def test_teacher_is_frozen_and_stays_in_eval_mode(hubert_dir):
    teacher = load_teacher(hubert_dir)
    teacher.train()
    assert not teacher.upstream.training and not any(p.requires_grad for p in teacher.parameters())
    states, _ = teacher(*_wavs())
    assert not states[-1].requires_grad


def test_a_non_speech_hf_directory_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type 'bert' is not a speech SSL model"):
        load_upstream(tmp_path / "bert")


def test_distilhubert_loss_by_hand():
    h = torch.tensor([[[1.0, 0.0], [2.0, 2.0], [5.0, 5.0]]])  # third frame is padding
    t = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    loss, terms = distilhubert_loss([h], [t], mask, cos_weight=1.0)
    # frame 1: L1 mean (1 + 1) / 2 = 1, cos 0 -> -log sigmoid(0) = log 2
    # frame 2: L1 mean 1, cos 1 -> -log sigmoid(1) = log(1 + e^-1)
    want_l1, want_cos = 1.0, (math.log(2) + math.log(1 + math.exp(-1))) / 2
    assert terms["l1.0"] == pytest.approx(want_l1) and terms["cos.0"] == pytest.approx(want_cos)
    assert float(loss) == pytest.approx(want_l1 + want_cos)
    loss2, _ = distilhubert_loss([h, h], [t, t], mask, cos_weight=0.5)  # summed over layers
    assert float(loss2) == pytest.approx(2 * (want_l1 + 0.5 * want_cos))


def test_hint_and_attention_losses_by_hand():
    mask = torch.tensor([[True, True]])
    a, b = torch.zeros(1, 2, 2), torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    loss, terms = hint_loss([a, a], [b, b], mask, [0.1, 1.0])
    # squared error per frame (1 + 1) / 2 = 1 and (4 + 0) / 2 = 2 -> mean 1.5; weights 0.1 + 1.0
    assert terms["hint.0"] == pytest.approx(1.5) and float(loss) == pytest.approx(1.1 * 1.5)
    s = torch.tensor([[[[0.75, 0.25], [0.25, 0.75]]]])  # (N=1, H=1, T=2, T=2)
    t = torch.full((1, 2, 2, 2), 0.5)  # two teacher heads, averaged
    # each row: KL = 0.5 log(0.5 / 0.75) + 0.5 log(0.5 / 0.25)
    want = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    assert float(attention_map_loss(s, t, mask)) == pytest.approx(want)
    assert float(attention_map_loss(s, t, torch.tensor([[True, False]]))) == pytest.approx(want)


def test_align_40ms_student_frames_to_20ms_teacher_with_odd_lengths():
    # 1.0 s and 0.7 s: teacher 49 and 34 frames (20 ms); student 24 and 17 (40 ms)
    x = torch.arange(2 * 24, dtype=torch.float32).reshape(2, 24, 1)
    y, mask = align_frames(x, torch.tensor([24, 17]), 49, torch.tensor([49, 34]))
    assert y.shape == (2, 49, 1) and mask.sum(1).tolist() == [49, 34]
    assert y[0, :48, 0].tolist() == [float(i // 2) for i in range(48)]
    assert y[0, 48, 0] == 23  # the 49th teacher frame repeats the student's last
    assert y[1, :34, 0].tolist() == [24 + float(i // 2) for i in range(34)]  # 17 * 2 = 34 exactly
    # equal rates: unchanged on real frames, cut to the teacher's length
    z, mask = align_frames(x, torch.tensor([24, 17]), 20, torch.tensor([20, 17]))
    assert torch.equal(z[0], x[0, :20]) and torch.equal(z[1, :17], x[1, :17]) and mask.sum().item() == 37


def test_distilhubert_student_copies_the_teacher_and_round_trips(hubert_dir, tmp_path):
    from transformers import AutoModel

    teacher = load_teacher(hubert_dir)
    student = build_student(StudentConfig(kind="distilhubert", num_layers=2), teacher)
    assert student.targets == [1, 3, 4]  # 4/8/12 of 12, scaled to 4 layers
    t = teacher.upstream.model.state_dict()
    s = student.model.state_dict()
    for k in ("feature_extractor.conv_layers.0.conv.weight", "encoder.layers.1.attention.q_proj.weight"):
        assert torch.equal(s[k], t[k])
    n_teacher = sum(p.numel() for p in teacher.parameters())
    assert sum(p.numel() for p in student.model.parameters()) < n_teacher
    wavs, lens = _wavs()
    preds, flens, _, _ = student.eval().predict(wavs, lens)
    assert [p.shape for p in preds] == [(2, 49, 32)] * 3 and flens.tolist() == [49, 34]
    save_student(student, tmp_path / "distil")
    again = load_student(tmp_path / "distil")
    torch.testing.assert_close(again.predict(wavs, lens)[0][0], preds[0])
    hf = AutoModel.from_pretrained(tmp_path / "distil.hf", local_files_only=True).eval()
    torch.testing.assert_close(hf(wavs[:1]).last_hidden_state, student.model(wavs[:1]).last_hidden_state)


def test_a_distilhubert_front_end_narrower_than_the_teachers_is_cut_from_it(hubert_dir, tmp_path):
    from transformers import AutoModel

    teacher = load_teacher(hubert_dir)  # CNN 16 channels, positional kernel 8
    cfg = StudentConfig(kind="distilhubert", num_layers=2, cnn_channels=[8], pos_kernel=4)
    student = build_student(cfg, teacher)
    hf = student.model.config
    assert list(hf.conv_dim) == [8] * 7 and hf.num_conv_pos_embeddings == 4
    t, s = teacher.upstream.model.state_dict(), student.model.state_dict()
    # by hand: layer 0 keeps the 8 filters of largest L1 norm, layer 1 those of its
    # filters over the kept inputs, and the projection reads the last layer's kept channels
    w0, w1 = t["feature_extractor.conv_layers.0.conv.weight"], t["feature_extractor.conv_layers.1.conv.weight"]
    k0 = sorted(w0.abs().sum(dim=(1, 2)).argsort(descending=True)[:8].tolist())
    assert torch.equal(s["feature_extractor.conv_layers.0.conv.weight"], w0[k0])
    assert torch.equal(
        s["feature_extractor.conv_layers.0.layer_norm.weight"],
        t["feature_extractor.conv_layers.0.layer_norm.weight"][k0],
    )
    k1 = sorted(w1[:, k0].abs().sum(dim=(1, 2)).argsort(descending=True)[:8].tolist())
    assert torch.equal(s["feature_extractor.conv_layers.1.conv.weight"], w1[k1][:, k0])
    assert s["feature_projection.projection.weight"].shape == (32, 8)
    # the positional kernel is the teacher's centre: taps 2..5 of 8, the weight norm included
    pos_t, pos_s = teacher.upstream.model.encoder.pos_conv_embed.conv, student.model.encoder.pos_conv_embed.conv
    torch.testing.assert_close(pos_s.weight, pos_t.weight[:, :, 2:6])
    assert "encoder.layers.1.attention.q_proj.weight" in student.init_from(teacher.upstream.model)
    wavs, lens = _wavs()
    preds, flens, _, _ = student.eval().predict(wavs, lens)
    assert [p.shape for p in preds] == [(2, 49, 32)] * 3 and flens.tolist() == [49, 34]  # same rate
    save_student(student, tmp_path / "narrow")
    torch.testing.assert_close(load_student(tmp_path / "narrow").predict(wavs, lens)[0][2], preds[2])
    again = AutoModel.from_pretrained(tmp_path / "narrow.hf", local_files_only=True).eval()
    torch.testing.assert_close(again(wavs[:1]).last_hidden_state, student.model(wavs[:1]).last_hidden_state)
    # one value per layer: only the first narrower, the rest the teacher's but for their inputs
    first = build_student(dataclasses.replace(cfg, cnn_channels=[8, *[16] * 6], pos_kernel=0), teacher)
    f = first.model.state_dict()
    assert list(first.model.config.conv_dim) == [8, *[16] * 6]
    assert torch.equal(f["feature_extractor.conv_layers.1.conv.weight"], w1[:, k0])  # all 16 filters, 8 inputs
    assert torch.equal(
        f["feature_extractor.conv_layers.2.conv.weight"], t["feature_extractor.conv_layers.2.conv.weight"]
    )
    # a narrower middle layer: the layers below it whole, the one above it cut on its inputs
    mid = build_student(dataclasses.replace(cfg, cnn_channels=[16, 8, *[16] * 5], pos_kernel=0), teacher)
    m = mid.model.state_dict()
    w2 = t["feature_extractor.conv_layers.2.conv.weight"]
    k1 = sorted(w1.abs().sum(dim=(1, 2)).argsort(descending=True)[:8].tolist())
    assert torch.equal(m["feature_extractor.conv_layers.0.conv.weight"], w0)
    assert torch.equal(m["feature_extractor.conv_layers.1.conv.weight"], w1[k1])
    assert torch.equal(m["feature_extractor.conv_layers.2.conv.weight"], w2[:, k1])
    with pytest.raises(ValueError, match="cnn_channels must be >= 1"):
        StudentConfig(kind="distilhubert", cnn_channels=[0])
    with pytest.raises(DataError, match=r"cnn_channels \[8, 8\]: give one value or one per CNN layer \(7\)"):
        build_student(dataclasses.replace(cfg, cnn_channels=[8, 8]), teacher)


def test_fithubert_student_is_thin_deep_and_upsamples(hubert_dir, tmp_path):
    teacher = load_teacher(hubert_dir)
    student = build_student(
        StudentConfig(kind="fithubert", num_layers=4, d_model=16, ff_dim=32, num_heads=2, conv_dim=8), teacher
    ).eval()
    assert student.targets == [1, 2, 3, 4] and student.frame_shift == pytest.approx(0.04)
    wavs, lens = _wavs()
    states, slens = student(wavs, lens)
    assert len(states) == 5 and slens.tolist() == [24, 17] and states[0].shape == (2, 24, 16)
    preds, plens, _, _ = student.predict(wavs, lens)
    assert preds[0].shape == (2, 48, 32) and plens.tolist() == [48, 34]
    save_student(student, tmp_path / "fit")
    torch.testing.assert_close(load_student(tmp_path / "fit").predict(wavs, lens)[0][-1], preds[-1])
    with pytest.raises(ValueError, match="outside the teacher's 1..4"):
        build_student(StudentConfig(kind="fithubert", num_layers=1, teacher_layers=[7]), teacher)


def test_a_thin_students_cnn_can_start_from_the_teachers(hubert_dir):
    teacher = load_teacher(hubert_dir)  # a CNN of 16 channels per layer
    t_cnn = teacher.upstream.model.feature_extractor
    shape = dict(num_layers=2, d_model=16, ff_dim=32, num_heads=2)
    same = build_student(StudentConfig(kind="fithubert", conv_dim=16, cnn_from_teacher=True, **shape), teacher)
    fresh = build_student(StudentConfig(kind="fithubert", conv_dim=16, **shape), teacher)
    wavs, _ = _wavs()
    with torch.no_grad():
        torch.testing.assert_close(same.cnn(wavs), t_cnn(wavs), rtol=0, atol=0)
        assert not torch.allclose(fresh.cnn(wavs), t_cnn(wavs))
    # narrower: each layer keeps the filters of largest L1 norm over the inputs kept below it
    thin = build_student(StudentConfig(kind="supernet", conv_dim=8, cnn_from_teacher=True, **shape), teacher)
    kept = []
    for mine, theirs in zip(thin.cnn.conv_layers, t_cnn.conv_layers, strict=True):
        w = theirs.conv.weight[:, kept[-1]] if kept else theirs.conv.weight
        kept.append(w.abs().sum(dim=(1, 2)).topk(8).indices.sort().values)
        assert torch.equal(mine.conv.weight, w[kept[-1]])
    first = (thin.cnn.conv_layers[0].layer_norm, t_cnn.conv_layers[0].layer_norm)  # the group norm's channels too
    assert torch.equal(first[0].weight, first[1].weight[kept[0]]) and torch.equal(first[0].bias, first[1].bias[kept[0]])
    with pytest.raises(DataError, match="conv_dim=32 is wider than the teacher's CNN"):
        build_student(StudentConfig(kind="supernet", conv_dim=32, cnn_from_teacher=True, **shape), teacher)


def _optim(lr: float = 5e-4, **kw):
    """The SSL tasks' optimisation with a tiny schedule."""
    return dataclasses.replace(ssl_optim(lr), **kw)


TINY_TEACHER = dict(clusters=20, hidden_size=32, num_layers=4, num_heads=2, ff_dim=64, conv_dim=16, final_dim=16)


@pytest.fixture(scope="module")
def ssl_run(tiny_units, tmp_path_factory):
    """Pre-train a tiny teacher on the tiny corpus (2 epochs), distil both students."""
    from speechdistill.data.batching import WaveData
    from speechdistill.distill.ssl_distill import DistillConfig, distill
    from speechdistill.teachers.pretrain import PretrainConfig, pretrain

    corpus, out = tiny_units.parent, tmp_path_factory.mktemp("ssl")
    data = WaveData(corpus=str(corpus), max_duration=30.0)
    tiny = TINY_TEACHER
    pre = pretrain(
        PretrainConfig(
            out_dir=str(out / "teacher"), data=data, optim=_optim(max_epochs=1, warmup_steps=2), progress=False, **tiny
        )
    )
    resumed = pretrain(
        PretrainConfig(
            out_dir=str(out / "teacher"), data=data, optim=_optim(max_epochs=2, warmup_steps=2), progress=False, **tiny
        )
    )
    students = {}
    for kind, extra in (("distilhubert", {}), ("fithubert", dict(num_layers=4, d_model=16, ff_dim=32, conv_dim=8))):
        students[kind] = distill(
            DistillConfig(
                teacher=str(out / "teacher" / "hf"),
                out_dir=str(out / kind),
                data=data,
                optim=_optim(lr=1e-3, max_epochs=2, warmup_steps=2),
                progress=False,
                student=StudentConfig(kind=kind, num_heads=2, **extra),
            )
        )
    return out, pre, resumed, students


def test_pretraining_resumes_and_writes_a_hf_teacher(ssl_run):
    from transformers import AutoModel

    out, pre, resumed, _ = ssl_run
    assert pre["epoch"] == 1 and resumed["epoch"] == 2
    assert resumed["history"][0] == pre["history"][0]  # epoch 0 was not run again
    assert resumed["step"] == 2 * pre["step"]
    assert type(AutoModel.from_pretrained(out / "teacher" / "hf", local_files_only=True)).__name__ == "HubertModel"


def test_pretraining_repeats_exactly_and_resumes_as_if_never_stopped(tiny_units, tmp_path, monkeypatch):
    """HuBERT's masks come from numpy's global RNG (HF's _compute_mask_indices), dropout
    from torch's: two runs must still give the same weights, and so must a run stopped
    after epoch 1 (its checkpoint written) and resumed."""
    from safetensors.torch import load_file

    from speechdistill.data.batching import WaveData
    from speechdistill.teachers import pretrain as ssl_train

    def cfg(out, **optim):
        return ssl_train.PretrainConfig(
            out_dir=str(out),
            data=WaveData(corpus=str(tiny_units.parent), max_duration=30.0),
            optim=_optim(max_epochs=2, warmup_steps=2, **optim),
            progress=False,
            **TINY_TEACHER,
        )

    ssl_train.pretrain(cfg(tmp_path / "a"))
    real_save, saves = ssl_train.save_hf_dir, []

    def killed_after_first_epoch(model, path):
        saves.append(path)
        if len(saves) == 1:
            raise RuntimeError("killed")
        real_save(model, path)

    monkeypatch.setattr(ssl_train, "save_hf_dir", killed_after_first_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        ssl_train.pretrain(cfg(tmp_path / "b"))
    assert not (tmp_path / "b" / "summary.json").exists()
    resumed = ssl_train.pretrain(cfg(tmp_path / "b"))
    assert resumed["seconds_this_run"] > 0 and [h["epoch"] for h in resumed["history"]] == [0, 1]
    # stopped by max_steps inside epoch 0, then given the whole budget: the epoch goes on
    # under the checkpoint's RNG states, not reseeded as a new epoch would be (the constant
    # schedule, which max_steps does not shape, against a run of the same schedule)
    ssl_train.pretrain(cfg(tmp_path / "d", schedule="constant"))
    short = ssl_train.pretrain(cfg(tmp_path / "c", schedule="constant", max_steps=3))
    assert (short["step"], short["epoch"], short["batch_in_epoch"]) == (3, 0, 3)
    ssl_train.pretrain(cfg(tmp_path / "c", schedule="constant"))
    a, b, c, d = (load_file(tmp_path / x / "hf" / "model.safetensors") for x in "abcd")
    assert a.keys() == b.keys() == c.keys() == d.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(c[k], d[k], rtol=0, atol=0, msg=k)


def test_students_learn_and_stay_small(ssl_run):
    _, pre, _, students = ssl_run
    for kind, s in students.items():
        first, last = s["history"][0]["loss"], s["history"][-1]["loss"]
        assert last < first, f"{kind} loss should fall: {first} -> {last}"
        assert s["student_params"] < s["teacher_params"] and s["teacher_cached"]


def test_ssl_demo_steps_wait_for_what_they_read_and_skip_what_is_kept(tmp_path, monkeypatch):
    """make demo-ssl's plan: the teacher first, each student after it, each probe after its
    upstream (the filterbank's after nothing); once the teacher has run alone, nothing waits
    on it; a kept result drops its step and every wait on it; a kept run of other settings
    is refused."""
    from speechdistill.config import save_config
    from speechdistill.data.layout import CorpusDir
    from speechdistill.demo import SSL_STUDENTS, after_first, ssl_demo_steps
    from speechdistill.distill.ssl_distill import distill
    from speechdistill.probe import probe_kept, probe_result_path
    from speechdistill.teachers.pretrain import pretrain
    from speechdistill.utils import UsageError

    monkeypatch.chdir(Path(__file__).parent.parent)  # the configs/ the demo names
    assert SSL_STUDENTS == {"distilhubert-cut": ("data.max_hours=0",), "fithubert": ("student.cnn_from_teacher=true",)}
    corpus, out = CorpusDir(tmp_path / "corpus"), tmp_path / "ssl"
    teacher, fbank = out / "teacher" / "hf", out / "fbank"
    students = [out / k / "student" for k in SSL_STUDENTS]
    calls, after, upstreams = ssl_demo_steps(corpus, out, 20, 1.0, show_progress=False)
    assert upstreams == [teacher, *students, fbank]
    assert len(calls) == len(after) == 1 + 2 + 4 * 2
    fn, cfg = calls[0]
    assert fn is pretrain and after[0] == ()
    assert (cfg.labels_alignment, cfg.mfcc_clusters, cfg.out_dir, cfg.data.corpus, cfg.progress) == (
        "own",
        100,
        str(out / "teacher"),
        str(corpus),
        False,
    )
    for i, kind in enumerate(SSL_STUDENTS, 1):
        fn, cfg = calls[i]
        assert fn is distill and after[i] == (0,)
        assert (cfg.teacher, cfg.out_dir, cfg.student.kind) == (str(teacher), str(out / kind), kind.split("-")[0])
        assert cfg.data.max_hours == (0.0 if kind == "distilhubert-cut" else 1.0)  # the cut one: all of train
        assert cfg.student.cnn_from_teacher == (kind == "fithubert")
    probes = {(c[1], c[2].task): (a, c[2].max_hours) for c, a in zip(calls[3:], after[3:], strict=True)}
    assert {c[0] for c in calls[3:]} == {probe_kept} and all(c[3:] == (False, False) for c in calls[3:])
    assert probes[(teacher, "pr")] == ((0,), 1.0) and probes[(teacher, "sid")] == ((0,), 0.0)  # SID: all of train
    assert [probes[(s, "pr")][0] for s in students] == [(1,), (2,)]
    assert probes[(fbank, "pr")][0] == probes[(fbank, "sid")][0] == ()
    rest = after_first(after)  # the teacher pre-trained alone: nothing waits on it any more
    shifted = {(c[1], c[2].task): a for c, a in zip(calls[3:], rest[2:], strict=True)}
    assert rest[:2] == [(), ()]
    assert [shifted[(s, t)] for s in students for t in ("pr", "sid")] == [(0,), (0,), (1,), (1,)]
    assert shifted[(teacher, "pr")] == shifted[(teacher, "sid")] == shifted[(fbank, "sid")] == ()

    teacher_cfg = calls[0][1]
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "summary.json").write_text("{}")
    save_config(teacher_cfg, out / "teacher" / "config.yaml")  # as the run saved it
    probe_result_path(teacher, "pr").write_text("{}")
    (out / "fithubert").mkdir()
    (out / "fithubert" / "summary.json").write_text("{}")
    calls, after, _ = ssl_demo_steps(corpus, out, 20, 1.0)  # its progress bars differ: still the same run
    assert len(calls) == 11 - 3
    assert [c[1].out_dir for c in calls[:1]] == [str(out / "distilhubert-cut")]
    assert after[:1] == [()] and calls[0][1].progress
    probes = {(c[1], c[2].task): a for c, a in zip(calls[1:], after[1:], strict=True)}
    assert (teacher, "pr") not in probes and probes[(teacher, "sid")] == ()
    assert probes[(students[0], "sid")] == probes[(students[0], "pr")] == (0,)
    assert probes[(students[1], "pr")] == probes[(students[1], "sid")] == ()

    # an older demo's teacher (MFCC targets) is not compared as if this demo had made it
    save_config(dataclasses.replace(teacher_cfg, labels_alignment="", mfcc_clusters=0), out / "teacher" / "config.yaml")
    with pytest.raises(
        UsageError, match=r"teacher holds a finished run of other settings .*labels_alignment: '' -> 'own'"
    ):
        ssl_demo_steps(corpus, out, 20, 1.0)


def test_probe_and_compare_report(ssl_run, tiny_units, monkeypatch):
    import json

    from speechdistill.compare import compare, markdown
    from speechdistill.probe import ProbeConfig, probe_kept, probe_result_path

    out = ssl_run[0]
    ups = [out / "teacher" / "hf", out / "distilhubert" / "student", out / "fithubert" / "student", out / "fbank"]
    cfg = ProbeConfig("pr", str(tiny_units.parent), epochs=1)
    for up in ups:
        r, path = probe_kept(up, cfg)
        assert r["metric"] == "per" and r["test"] > 0 and len(r["layer_weights"]) in (1, 3, 5)
        assert path == probe_result_path(up, "pr") and json.loads(path.read_text())["test"] == r["test"]
    assert (out / "fbank.probe-pr.json").exists()  # beside the virtual path, like any upstream
    assert (out / "teacher" / "hf.probe-pr.png").exists()  # the layer weights, plotted
    kept = (out / "distilhubert" / "student.probe-pr.json").read_text()

    def fail(*args, **kwargs):
        raise RuntimeError("probed again")

    monkeypatch.setattr("speechdistill.probe.probe", fail)
    assert probe_kept(ups[1], cfg)[0]["test"] == json.loads(kept)["test"]  # kept: read back, not probed
    with pytest.raises(RuntimeError, match="probed again"):
        probe_kept(ups[1], cfg, again=True)  # `speechdistill probe` always probes
    assert (out / "distilhubert" / "student.probe-pr.json").read_text() == kept  # a failed probe loses nothing
    monkeypatch.undo()
    from speechdistill.probe import plot_layer_weights

    assert not plot_layer_weights(r, out / "fbank.probe-pr.png")  # one state: nothing to plot
    assert not (out / "fbank.probe-pr.png").exists()
    rows = compare(ups[0], ups[1:], tasks=("pr",), repeats=2)
    assert all(r["threads"] == 1 for r in rows) and rows[0]["time_ratio"] == 1.0
    assert rows[0]["params_ratio"] == 1.0 and all(r["params_ratio"] < 1 for r in rows[1:])
    assert rows[2]["frame_shift_ms"] == 40 and rows[0]["frame_shift_ms"] == 20
    assert all(r["macs_per_second"] > 0 and r["pr"] is not None for r in rows[:3])
    fbank = rows[3]
    assert fbank["upstream"].endswith("fbank (filterbank reference)") and fbank["params"] == 0
    assert fbank["frame_shift_ms"] == 10 and fbank["pr"] is not None
    assert "| params ratio |" in markdown(rows)


def test_time_upstreams_counts_cpu_time_on_the_threads_asked_and_restores_them():
    import time

    from speechdistill.compare import time_upstreams

    before, seen = torch.get_num_threads(), []

    def sleeper(wav, lens):  # 50 ms of wall time, next to no CPU time
        seen.append(torch.get_num_threads())
        time.sleep(0.05)

    def busy(wav, lens):  # 50 ms of CPU time
        seen.append(torch.get_num_threads())
        t0 = time.process_time()
        while time.process_time() - t0 < 0.05:
            pass

    secs = time_upstreams({"sleep": sleeper, "busy": busy}, seconds=1.0, repeats=3, threads=1)
    assert secs["sleep"] < 0.01 and 0.05 <= secs["busy"] < 0.5
    assert seen == [1] * 8 and torch.get_num_threads() == before  # 2 warm-ups + 3 x 2 timed


def test_fbank_reference_upstream_is_the_normalised_filterbank(tmp_path):
    from speechdistill.data.features import FbankExtractor
    from speechdistill.teachers.ssl import FbankUpstream, is_fbank

    wavs, lens = _wavs()
    up = load_teacher(tmp_path / "fbank")
    assert isinstance(up.upstream, FbankUpstream) and up.num_layers == 0 and up.dim == 80
    states, flens = up(wavs, lens)
    ext = FbankExtractor()
    assert len(states) == 1 and flens.tolist() == [ext.num_frames(int(n)) for n in lens]
    for i, n in enumerate(lens):
        f = torch.from_numpy(ext(wavs[i, : int(n)].numpy()))
        want = (f - f.mean(0)) / (f.std(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(states[0][i, : int(flens[i])], want)
        assert (states[0][i, int(flens[i]) :] == 0).all()
    # a real checkpoint or directory called fbank is never shadowed by the reference
    (tmp_path / "fbank").mkdir()
    assert not is_fbank(tmp_path / "fbank")
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        load_upstream(tmp_path / "fbank")
    with pytest.raises(FileNotFoundError, match="fbank` names the filterbank reference"):
        load_upstream(tmp_path / "fbnak")


def test_teacher_cache_is_fp16_and_refused_when_the_layers_change(hubert_dir, tiny_units, tmp_path):
    from speechdistill.data.batching import WaveData, WaveDataset, load_wave_cuts
    from speechdistill.distill.ssl_distill import cache_teacher

    teacher = load_teacher(hubert_dir)
    cuts = load_wave_cuts(WaveData(str(tiny_units.parent), max_hours=0.005))
    cache = cache_teacher(teacher, hubert_dir, cuts, [1, 2], tmp_path / "cache", 30.0, show_progress=False)
    cut = next(iter(cuts))
    ids, wavs, lens = WaveDataset()[cuts.subset(cut_ids=[cut.id])]
    states, flens = teacher(wavs, lens)
    got = cache[f"{cut.id}/2"]
    assert got.dtype == torch.float16 and got.shape == (int(flens[0]), 32)
    torch.testing.assert_close(got.float(), states[2][0], atol=1e-2, rtol=1e-2)
    from speechdistill.distill.soft_labels import StaleCacheError

    with pytest.raises(StaleCacheError, match="another teacher, layer set or data; delete .*cache.safetensors"):
        cache_teacher(teacher, hubert_dir, cuts, [1, 3], tmp_path / "cache", 30.0, show_progress=False)
    for ext in ("json", "safetensors"):
        (tmp_path / f"cache.{ext}").unlink()
    again = cache_teacher(teacher, hubert_dir, cuts, [1, 3], tmp_path / "cache", 30.0, show_progress=False)
    assert f"{cut.id}/3" in again and f"{cut.id}/2" not in again


@pytest.mark.parametrize("student", ["fithubert", "supernet", "sandwich"])
def test_ssl_distillation_under_ddp_keeps_ranks_equal(ssl_run, tiny_units, tmp_path, student):
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    teacher = ssl_run[0] / "teacher" / "hf"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29541",
            Path(__file__).parent / "ssl_ddp.py",
            teacher,
            tiny_units.parent,
            tmp_path,
            student,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] > 0 and summary["teacher_cached"]


def test_weighted_sum_is_learnable_and_sums_to_one(tmp_path):
    from speechdistill.probe import WeightedSum, plot_layer_weights

    ws = WeightedSum(3)
    with torch.no_grad():
        ws.weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
    states = [torch.randn(2, 5, 4) for _ in range(3)]
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert float(ws.weights.detach().softmax(0).sum()) == pytest.approx(1.0)
    want = sum(w[i] * torch.nn.functional.layer_norm(s, (4,)) for i, s in enumerate(states))
    out = ws(states)
    torch.testing.assert_close(out, want)
    out.pow(2).sum().backward()
    assert ws.weights.grad is not None and ws.weights.grad.abs().sum() > 0
    plot_layer_weights(
        {"layer_weights": w.tolist(), "task": "pr", "upstream": "x/teacher", "metric": "per", "test": 12.3},
        tmp_path / "w.png",
    )
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"


def _distil_one_epoch(ssl_run, tiny_units, out_dir: Path, student: StudentConfig, **kw) -> dict:
    """One epoch of 0.01 h from the tiny teacher; ``kw``: more DistillConfig fields."""
    from speechdistill.data.batching import WaveData
    from speechdistill.distill.ssl_distill import DistillConfig, distill

    return distill(
        DistillConfig(
            teacher=str(ssl_run[0] / "teacher" / "hf"),
            out_dir=str(out_dir),
            data=WaveData(corpus=str(tiny_units.parent), max_hours=0.01, max_duration=30.0),
            optim=_optim(lr=1e-3, max_epochs=1, warmup_steps=1),
            progress=False,
            student=student,
            **kw,
        )
    )


def test_tinybert_terms_run_and_are_logged(ssl_run, tiny_units, tmp_path):
    student = StudentConfig(kind="distilhubert", num_layers=2)
    s = _distil_one_epoch(ssl_run, tiny_units, tmp_path / "tb", student, hidden_weight=0.5, attention_weight=1.0)
    terms = s["history"][0]
    assert {"hidden.0", "hidden.1", "attention.0", "attention.1"} <= set(terms)
    assert terms["attention.0"] > 0 and terms["hidden.0"] > 0 and not s["teacher_cached"]
    assert load_student(tmp_path / "tb" / "student").targets == [1, 3, 4]  # hidden projections not saved


def test_learned_ssl_loss_weights_start_at_the_hand_weights_and_stay_out_of_the_student(ssl_run, tiny_units, tmp_path):
    """``loss_weighting: uncertainty`` for the SSL multi-target losses: DistilHuBERT's weighted
    sum by hand; FitHuBERT's hint weights start at 0.1 / 1.0, stay positive and their logged
    shares sum to 1; the saved student carries no trace of them; unknown modes are refused."""
    from speechdistill.checkpoint import load_checkpoint
    from speechdistill.distill.ssl_distill import DistillConfig

    torch.manual_seed(0)
    preds, targets = [torch.randn(2, 5, 4) for _ in range(2)], [torch.randn(2, 5, 4) for _ in range(2)]
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2])
    plain, terms = distilhubert_loss(preds, targets, mask, 0.5)
    weighted, _ = distilhubert_loss(preds, targets, mask, 0.5, torch.tensor([2.0, 0.25]))
    per_layer = [terms[f"l1.{i}"] + 0.5 * terms[f"cos.{i}"] for i in range(2)]
    assert float(plain) == pytest.approx(sum(per_layer), rel=1e-5)
    assert float(weighted) == pytest.approx(2.0 * per_layer[0] + 0.25 * per_layer[1], rel=1e-5)

    student = StudentConfig(kind="fithubert", num_layers=2, d_model=16, ff_dim=32, num_heads=2, conv_dim=8)
    s = _distil_one_epoch(ssl_run, tiny_units, tmp_path / "lw", student, loss_weighting="uncertainty")
    terms = s["history"][0]
    assert terms["w.0"] == pytest.approx(0.1, rel=0.05) and terms["w.1"] == pytest.approx(1.0, rel=0.05)
    assert min(terms["w.0"], terms["w.1"]) > 0 and terms["share.0"] + terms["share.1"] == pytest.approx(1.0)
    tensors, _ = load_checkpoint(tmp_path / "lw" / "student")
    assert not [k for k in tensors if "loss_log_vars" in k] and load_student(tmp_path / "lw" / "student")
    with pytest.raises(ValueError, match="loss_weighting='learned'; valid: fixed, uncertainty"):
        DistillConfig(loss_weighting="learned")


def test_a_partly_given_optim_section_keeps_the_ssl_defaults():
    """`optim: {lr: ..., max_epochs: ...}` in an SSL config replaces those keys only: the
    schedule, weight decay and clipping stay the SSL recipe's (linear, 0.01, 10), not
    OptimConfig's own (noam, 0.001, 5), as the loop before the engine trained them."""
    from speechdistill.config import from_dict
    from speechdistill.teachers.pretrain import PretrainConfig

    o = from_dict(PretrainConfig, {"optim": {"lr": 1e-3, "max_epochs": 4}}).optim
    assert (o.lr, o.max_epochs, o.schedule, o.weight_decay, o.grad_clip, o.warmup_steps) == (
        1e-3,
        4,
        "linear",
        0.01,
        10.0,
        200,
    )


def test_masked_prediction_sums_the_layers_by_hand():
    from speechdistill.teachers.pretrain import MaskedPrediction

    last = torch.tensor([[0.5, -0.5, 0.0], [0.1, 0.2, 0.3]])
    mid = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]])
    target = torch.tensor([0, 2])

    def ce(z, t):  # -log softmax(z / 0.5)[t], written out
        return -(float(z[t]) / 0.5 - math.log(sum(math.exp(v / 0.5) for v in z.tolist())))

    want = sum(ce(z[i], int(target[i])) for z in (last, mid) for i in range(2)) / 2
    loss, acc = MaskedPrediction(0.5)([last, mid], target)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert acc == 1.0  # the last layer's argmax: 0 and 2; the intermediate layer's are not counted
    assert float(MaskedPrediction(0.5)([last], target)[0]) == pytest.approx(
        (ce(last[0], 0) + ce(last[1], 2)) / 2, rel=1e-6
    )


def test_ils_logits_come_from_the_intermediate_layer():
    import numpy as np

    from speechdistill.teachers.pretrain import HuBERTPretrainModel, PretrainConfig

    cfg = PretrainConfig(clusters=5, hidden_size=32, num_layers=3, num_heads=2, ff_dim=64, conv_dim=16, ils_layers=[1])
    torch.manual_seed(0)
    model = HuBERTPretrainModel(cfg).eval()
    assert len(model.ils_proj) == 1
    wavs, lens = _wavs()
    np.random.seed(0)
    with torch.no_grad():
        logits, mask = model(wavs, lens)
        assert len(logits) == 2 and all(z.shape == (int(mask.sum()), 5) for z in logits)
        att = (torch.arange(wavs.shape[1])[None] < lens[:, None]).long()
        out = model.hubert(wavs, attention_mask=att, mask_time_indices=mask, output_hidden_states=True)
        torch.testing.assert_close(logits[1], model.logits(out.hidden_states[1][mask], model.ils_proj[0]))
        torch.testing.assert_close(logits[0], model.logits(out.last_hidden_state[mask], model.proj))
    with pytest.raises(ValueError, match=r"ils_layers \[3\] must be intermediate layers, 1..2"):
        dataclasses.replace(cfg, ils_layers=[3])


def test_a_second_mfcc_codebook_has_its_own_head_and_adds_its_loss():
    import numpy as np

    from speechdistill.teachers.pretrain import HuBERTPretrainModel, MaskedPrediction, PretrainConfig, _Pretraining

    cfg = PretrainConfig(
        **TINY_TEACHER | {"clusters": 40, "ils_layers": [1]}, labels_alignment="synth", mfcc_clusters=7, mfcc_weight=0.5
    )
    torch.manual_seed(0)
    model = HuBERTPretrainModel(cfg).eval()
    assert model.mfcc_embeddings.shape == (7, cfg.final_dim)
    wavs, lens = _wavs()
    with torch.no_grad():
        np.random.seed(0)
        logits, mask = model(wavs, lens)
        assert [z.shape[1] for z in logits] == [40, 40, 7]  # last, ILS layer 1, the MFCC codebook
        att = (torch.arange(wavs.shape[1])[None] < lens[:, None]).long()
        out = model.hubert(wavs, attention_mask=att, mask_time_indices=mask)
        want = model.logits(out.last_hidden_state[mask], model.mfcc_proj, model.mfcc_embeddings)
        torch.testing.assert_close(logits[2], want)
        g = torch.Generator().manual_seed(1)
        labels = torch.randint(40, mask.shape, generator=g)
        mfcc = torch.randint(7, mask.shape, generator=g)
        np.random.seed(0)
        loss, acc = _Pretraining(model, MaskedPrediction(0.1))(wavs, lens, labels, mfcc)
    crit = MaskedPrediction(0.1)
    main, main_acc = crit(logits[:2], labels[mask])
    assert float(loss) == pytest.approx(float(main + 0.5 * crit(logits[2:], mfcc[mask])[0]), rel=1e-6)
    assert acc == main_acc  # the accuracy stays the main labels'
    with pytest.raises(ValueError, match="mfcc_clusters adds MFCC targets beside labels_alignment or labels_from"):
        PretrainConfig(mfcc_clusters=50)
    with pytest.raises(ValueError, match="mfcc_weight > 0"):
        dataclasses.replace(cfg, mfcc_weight=0.0)


def test_the_unmasked_frames_loss_is_added_at_its_weight():
    """``nomask_weight`` (HuBERT's pred_nomask_weight): the last layer's logits of the real
    frames left unmasked (none of the padding) against the main labels, added at its weight
    beside the masked frames' and the MFCC codebook's; the accuracy stays the masked frames'."""
    import numpy as np

    from speechdistill.teachers.pretrain import HuBERTPretrainModel, MaskedPrediction, PretrainConfig, _Pretraining

    cfg = PretrainConfig(
        **TINY_TEACHER | {"clusters": 40},
        labels_alignment="synth",
        mfcc_clusters=7,
        mfcc_weight=0.5,
        nomask_weight=0.25,
    )
    torch.manual_seed(0)
    model = HuBERTPretrainModel(cfg).eval()
    wavs, lens = _wavs()
    with torch.no_grad():
        np.random.seed(0)
        logits, mask = model(wavs, lens)
        frames = torch.arange(mask.shape[1])[None] < model.hubert._get_feat_extract_output_lengths(lens)[:, None]
        seen = frames & ~mask
        assert [z.shape for z in logits] == [(int(mask.sum()), 40), (int(mask.sum()), 7), (int(seen.sum()), 40)]
        assert 0 < int(seen.sum()) < int((~mask).sum())  # the second utterance's padding is not scored
        att = (torch.arange(wavs.shape[1])[None] < lens[:, None]).long()
        out = model.hubert(wavs, attention_mask=att, mask_time_indices=mask)
        torch.testing.assert_close(logits[2], model.logits(out.last_hidden_state[seen], model.proj))
        g = torch.Generator().manual_seed(1)
        labels, mfcc = torch.randint(40, mask.shape, generator=g), torch.randint(7, mask.shape, generator=g)
        np.random.seed(0)
        loss, acc = _Pretraining(model, MaskedPrediction(0.1))(wavs, lens, labels, mfcc)
    crit = MaskedPrediction(0.1)
    main, main_acc = crit(logits[:1], labels[mask])
    want = main + 0.5 * crit(logits[1:2], mfcc[mask])[0] + 0.25 * crit(logits[2:], labels[seen])[0]
    assert float(loss) == pytest.approx(float(want), rel=1e-6) and acc == main_acc
    with pytest.raises(ValueError, match="nomask_weight must be >= 0, got -1"):
        PretrainConfig(nomask_weight=-1)


def test_teacher_dropout_and_pre_norm_reach_the_model():
    """``dropout`` is the Transformer's hidden and attention dropout (0: two training-mode
    passes with the same masks agree; at 0.1 they do not); ``pre_norm`` picks HF's pre-LN
    encoder."""
    import numpy as np

    from speechdistill.teachers.pretrain import HuBERTPretrainModel, PretrainConfig

    wavs, lens = _wavs()
    for dropout, same in ((0.0, True), (0.1, False)):
        torch.manual_seed(0)
        model = HuBERTPretrainModel(PretrainConfig(**TINY_TEACHER, dropout=dropout)).train()
        assert model.hubert.config.hidden_dropout == model.hubert.config.attention_dropout == dropout
        assert type(model.hubert.encoder).__name__ == "HubertEncoder"  # HuBERT Base's post-LN
        runs = []
        for _ in range(2):
            np.random.seed(0)
            runs.append(model(wavs, lens)[0][0])
        assert torch.equal(runs[0], runs[1]) is same
    pre = HuBERTPretrainModel(PretrainConfig(**TINY_TEACHER, pre_norm=True))
    assert type(pre.hubert.encoder).__name__ == "HubertEncoderStableLayerNorm"
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        PretrainConfig(dropout=1.0)


def test_second_iteration_labels_cluster_a_models_layer(hubert_dir, tiny_units, tmp_path):
    from speechdistill.data.audio import load_cut_audio
    from speechdistill.data.batching import WaveData, load_wave_cuts
    from speechdistill.teachers.pretrain import PretrainConfig, kmeans_labels, label_features

    cuts = load_wave_cuts(WaveData(corpus=str(tiny_units.parent), max_hours=0.005))
    cfg = PretrainConfig(clusters=4, labels_from=str(hubert_dir), labels_layer=2, kmeans_frames=500)
    feats = label_features(cuts, cfg, show_progress=False)
    up = load_upstream(hubert_dir).eval()
    for c in cuts:
        wav = torch.from_numpy(load_cut_audio(c))[None]
        with torch.no_grad():
            states, n = up(wav, torch.tensor([wav.shape[1]]))
        assert feats[c.id].shape == (int(n[0]), 32)
        torch.testing.assert_close(torch.from_numpy(feats[c.id]), states[2][0])
    labels = kmeans_labels(cuts, cfg, show_progress=False)
    assert {k: len(v) for k, v in labels.items()} == {k: len(v) for k, v in feats.items()}
    assert {i for v in labels.values() for i in v.tolist()} <= set(range(4))
    with pytest.raises(DataError, match="labels_layer=9: .* has hidden states 0..4"):
        label_features(cuts, dataclasses.replace(cfg, labels_layer=9), show_progress=False)


def test_sequence_compression_by_hand_with_odd_lengths():
    from speechdistill.students.ssl import compress, expand, segments

    x = torch.arange(14, dtype=torch.float32).reshape(2, 7, 1)  # utterance 0: 0..6; utterance 1: 7..10 + padding
    y, n, ids = compress(x, torch.tensor([7, 4]), 2.0)
    assert n.tolist() == [4, 2] == [math.ceil(7 / 2), math.ceil(4 / 2)]
    assert ids.tolist() == [[0, 0, 1, 1, 2, 2, 3], [0, 0, 1, 1, -1, -1, -1]]
    assert y[0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.0]  # the odd length's last segment is one frame
    assert y[1, :2, 0].tolist() == [7.5, 9.5] and y[1, 2:].abs().sum() == 0
    assert expand(y, ids)[0, :, 0].tolist() == [0.5, 0.5, 2.5, 2.5, 4.5, 4.5, 6.0]
    for length, rate in ((5, 1.5), (10, 3.0), (9, 2.5), (1, 4.0), (13, 1.0)):
        ids, n = segments(torch.tensor([length]), length, rate)
        assert int(n) == math.ceil(length / rate)
        counts = torch.bincount(ids[0])  # every segment has floor(rate) or ceil(rate) frames, none empty
        assert len(counts) == int(n) and counts.min() >= 1 and counts.max() <= math.ceil(rate)
    x = torch.randn(1, 5, 3)
    assert torch.equal(compress(x, torch.tensor([5]), 1.0)[0], x)


def test_seqcomp_student_runs_at_any_rate_and_round_trips(hubert_dir, tmp_path):
    teacher = load_teacher(hubert_dir)
    cfg = StudentConfig(kind="seqcomp", num_layers=2, d_model=16, ff_dim=32, conv_dim=8, num_heads=2)
    torch.manual_seed(0)
    student = build_student(cfg, teacher).eval()
    wavs, lens = _wavs()  # 49 and 34 frames of 20 ms
    for rate in (1.0, 2.0, 2.5, 4.0):
        student.rate = rate
        states, slens = student(wavs, lens)
        assert slens.tolist() == [math.ceil(49 / rate), math.ceil(34 / rate)]
        assert states[-1].shape == (2, math.ceil(49 / rate), 16) and student.frame_shift == pytest.approx(0.02 * rate)
        preds, plens, _, _ = student.predict(wavs, lens)
        assert plens.tolist() == [49, 34] and all(p.shape == (2, 49, 32) for p in preds)
    student.train()
    torch.manual_seed(1)
    drawn = {student.step_rate() for _ in range(20)}
    assert len(drawn) == 20 and all(1.0 <= r <= 4.0 for r in drawn)
    save_student(student.eval(), tmp_path / "s")
    loaded = load_student(tmp_path / "s")
    loaded.rate = student.rate = 3.0
    with torch.no_grad():
        for a, b in zip(loaded(wavs, lens)[0], student(wavs, lens)[0], strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="1 <= rate_min <= rate_max"):
        StudentConfig(kind="seqcomp", rate_min=3.0, rate_max=2.0)


def test_hedge_step_by_hand():
    from speechdistill.probe import hedge, most_probable

    # errors 0.5 and 0.4 at rates 1 and 2, a cost of 0.2 per whole frame budget: objectives 0.7, 0.5
    logits = hedge(torch.zeros(2, dtype=torch.float64), [0.5, 0.4], [1.0, 2.0], cost=0.2, step=2.0)
    assert logits.tolist() == pytest.approx([-1.4, -1.0])
    assert logits.softmax(0)[1] == pytest.approx(1 / (1 + math.exp(-0.4)))  # the cheaper, better rate gains
    tie = hedge(torch.zeros(3, dtype=torch.float64), [0.1 + 0.2, 0.3, 0.4], [1.0, 2.0, 4.0], 0.0, 10.0)
    assert most_probable(tie.softmax(0), [1.0, 2.0, 4.0]) == 2.0  # equal errors: the cheaper rate
    assert most_probable(torch.tensor([0.5, 0.3, 0.2]), [1.0, 2.0, 4.0]) == 1.0


def test_a_learnt_rate_is_probed_as_if_given(ssl_run, tiny_units, tmp_path):
    """The search draws each step's rate from p, moves p by each rate's dev error, keeps the
    most probable rate and probes it exactly as ``rate`` would; a high frame cost picks the
    slowest rate; an upstream of one rate, or a tuned one, is refused."""
    from speechdistill.probe import ProbeConfig, probe, probe_kept, probe_result_path

    torch.manual_seed(0)
    teacher = load_teacher(ssl_run[0] / "teacher" / "hf")
    cfg = StudentConfig(kind="seqcomp", num_layers=2, d_model=16, ff_dim=32, conv_dim=8, num_heads=2)
    save_student(build_student(cfg, teacher).eval(), tmp_path / "student")
    up, corpus, rates = tmp_path / "student", str(tiny_units.parent), [1.0, 2.0, 4.0]
    learn = ProbeConfig("pr", corpus, epochs=2, learn_rates=rates, rate_epochs=2, rate_step=50.0)
    r, path = probe_kept(up, learn)
    assert path == probe_result_path(up, "pr", "@rlearnt") == tmp_path / "student.probe-pr@rlearnt.json"
    search = r["rate_search"]
    assert search["epochs"][0]["p"] == pytest.approx([1 / 3] * 3, abs=1e-4)
    steps = sum(search["epochs"][-1]["drawn"])
    assert steps == 2 * sum(search["epochs"][0]["drawn"]) > 0  # every step drew one rate
    objective = torch.tensor([e["dev_error"] for e in search["epochs"]], dtype=torch.float64).sum(0)
    assert search["p"] == pytest.approx((-50.0 * objective).softmax(0).tolist(), abs=1e-4)
    assert r["rate"] == search["rate"] == rates[int(objective.argmin())]
    given = probe(up, ProbeConfig("pr", corpus, epochs=2, rate=r["rate"]), show_progress=False)
    assert (given["dev"], given["test"], given["history"]) == (r["dev"], r["test"], r["history"])
    costly = dataclasses.replace(learn, rate_cost=100.0, rate_epochs=1)
    assert probe_kept(up, costly)[0]["rate"] == 4.0  # frames cost more than any error
    assert (tmp_path / "student.probe-pr@rlearnt-c100.json").exists() and path.exists()  # kept apart
    with pytest.raises(DataError, match="runs at one frame rate; learn_rates is for seqcomp"):
        probe(ssl_run[0] / "teacher" / "hf", learn, show_progress=False)
    for bad in (dict(learn_rates=[2.0]), dict(learn_rates=[1.0, 0.5]), dict(rate=2.0), dict(tune="all")):
        with pytest.raises(ValueError, match="learn_rates"):
            dataclasses.replace(learn, **bad)


def test_shapes_are_refused_unless_their_sizes_match(hubert_dir, tmp_path):
    from speechdistill.compare import upstream_params
    from speechdistill.config import ConfigError
    from speechdistill.shapes import check_balance, run_shapes, shape_params

    cfg = StudentConfig(kind="fithubert", num_layers=3, d_model=16, ff_dim=48, conv_dim=8, num_heads=2)
    built = build_student(cfg, load_teacher(hubert_dir))
    assert shape_params(cfg, 32, 4) == upstream_params(built) < sum(p.numel() for p in built.parameters())
    check_balance({"a": 1000, "b": 1090, "c": 950}, 0.1)
    with pytest.raises(ConfigError, match=r"within 10% of a's 1k\); off: c: 2k"):
        check_balance({"a": 1000, "b": 1090, "c": 1500}, 0.1)
    (tmp_path / "d.yaml").write_text(Path("configs/ssl/fithubert.yaml").read_text())
    (tmp_path / "s.yaml").write_text(
        f"distill: d.yaml\nteacher: {hubert_dir}\nout_dir: {tmp_path / 'out'}\n"
        "shapes:\n  deep: {num_layers: 4, d_model: 16, ff_dim: 48, num_heads: 2, conv_dim: 8}\n"
        "  wide: {num_layers: 1, d_model: 64, ff_dim: 192, num_heads: 2, conv_dim: 8}\n"
    )
    with pytest.raises(ConfigError, match="off: wide"):
        run_shapes(tmp_path / "s.yaml")
    assert not (tmp_path / "out").exists()  # refused before anything trained


def test_the_ofa_check_sets_each_subnet_against_its_shape_alone(ssl_run, tiny_units, tmp_path, monkeypatch):
    """``ssl ofa``: stage 1, stage 2 from it, each size cut out, the same shape distilled
    alone for both stages' epochs, all probed; the relative loss from the kept probes; a
    second run trains nothing; a stage 2 that draws no subnets is refused."""
    from speechdistill.config import read_yaml
    from speechdistill.ofa import markdown, run_ofa
    from speechdistill.utils import DataError, UsageError

    corpus, teacher = tiny_units.parent, ssl_run[0] / "teacher" / "hf"
    (tmp_path / "s1.yaml").write_text(
        f"data: {{corpus: {corpus}, max_duration: 30.0}}\nprogress: false\n"
        "optim: {lr: 0.001, warmup_steps: 2, max_epochs: 1}\n"
        "student: {kind: supernet, num_layers: 2, d_model: 16, num_heads: 2, ff_dim: 32, conv_dim: 8, sample: false,"
        " width_choices: [0.5, 1.0], depth_choices: [0.5, 1.0]}\n"
    )
    (tmp_path / "s2.yaml").write_text("base: s1.yaml\nstudent: {sample: true, sandwich: true}\n")
    plan = f"stage1: s1.yaml\nstage2: s2.yaml\nteacher: {teacher}\nout_dir: {tmp_path / 'ofa'}\nprobe_epochs: 1\n"
    (tmp_path / "ofa.yaml").write_text(plan + "params: [0.5, 1.0]\n")
    rows = run_ofa(tmp_path / "ofa.yaml", jobs=1)
    assert [r["params"] for r in rows] == [0.5, 1.0] and rows[0]["num_params"] < rows[1]["num_params"]
    assert rows[1]["subnet"] == {"d_model": 16, "heads": [2, 2], "ff_dims": [32, 32]}
    alone = read_yaml(tmp_path / "ofa" / "alone0.5" / "config.yaml")
    assert alone["optim"]["max_epochs"] == 2 and alone["student"]["width_choices"] == [1.0]
    assert alone["student"]["d_model"] == rows[0]["subnet"]["d_model"] and not alone.get("init")
    sub = json.loads((tmp_path / "ofa" / "subnet0.5" / "student.probe-pr.json").read_text())
    by_itself = json.loads((tmp_path / "ofa" / "alone0.5" / "student.probe-pr.json").read_text())
    assert rows[0]["pr"]["test"]["relative"] == pytest.approx(sub["test"] / by_itself["test"] - 1)
    assert (tmp_path / "ofa" / "ofa.md").read_text() == markdown(rows, ["pr"])

    def fail(*args, **kwargs):
        raise RuntimeError("trained again")

    monkeypatch.setattr("speechdistill.ofa.distill", fail)
    monkeypatch.setattr("speechdistill.ofa.probe_kept", fail)
    assert run_ofa(tmp_path / "ofa.yaml", jobs=1) == rows  # everything kept
    with pytest.raises(UsageError, match=r"stage1 holds a finished run of other settings .*seed: 0 -> 1"):
        run_ofa(tmp_path / "ofa.yaml", ["seed=1"], jobs=1)  # not another seed's rows under this one's name
    with pytest.raises(RuntimeError, match="trained again"):  # a new out_dir is a new check
        run_ofa(tmp_path / "ofa.yaml", ["seed=1", f"out_dir={tmp_path / 'ofa-s1'}"], jobs=1)
    (tmp_path / "s2.yaml").write_text("base: s1.yaml\n")
    with pytest.raises(DataError, match="must train a supernet's subnets"):
        run_ofa(tmp_path / "ofa.yaml", jobs=1)


def test_utterance_mixing_adds_a_scaled_crop_of_another_utterance():
    from speechdistill.teachers.pretrain import mix_utterances

    g = torch.Generator().manual_seed(0)
    wavs = torch.randn(3, 1000, generator=g)
    lens = torch.tensor([1000, 600, 800])
    wavs[1, 600:] = 0
    wavs[2, 800:] = 0
    same, none = mix_utterances(wavs, lens, 0.0)
    assert torch.equal(same, wavs) and none == []
    torch.manual_seed(3)
    mixed, mixes = mix_utterances(wavs, lens, 1.0)
    torch.manual_seed(3)
    again, _ = mix_utterances(wavs, lens, 1.0)
    assert torch.equal(mixed, again) and len(mixes) == 3
    for m in mixes:
        i, a, n = m["utterance"], m["start"], m["length"]
        assert m["other"] != i and 1 <= n <= lens[i] // 2 and a + n <= lens[i] and -5 <= m["ratio_db"] <= 20
        changed = (mixed[i] != wavs[i]).nonzero().flatten()
        assert changed.min() >= a and changed.max() < a + n  # only the chosen region, never the padding
        added = mixed[i, a : a + n] - wavs[i, a : a + n]
        e_primary = wavs[i, : lens[i]].pow(2).mean()
        assert 10 * math.log10(float(e_primary / added.pow(2).mean())) == pytest.approx(m["ratio_db"], abs=1e-3)


def test_accent_and_rate_probes_and_their_controls(ssl_run, tiny_units):
    """Accent ID among the training split's eSpeak accents, scored on unseen voices; the
    rate in phones per second by regression; each with the score of ignoring the audio."""
    import numpy as np

    from speechdistill.data.corpus import load_split
    from speechdistill.probe import ProbeConfig, phone_rate, probe, probe_splits
    from speechdistill.units.inventory import Units

    corpus = str(tiny_units.parent)
    parts, n, target = probe_splits(ProbeConfig("accent", corpus))
    accents = sorted({c.supervisions[0].custom["accent"] for c in load_split(corpus, "train")})
    assert n == len(accents) >= 2 and target(next(iter(parts["dev"]))) in range(n)
    test_targets = [target(c) for c in parts["test"]]
    train_counts = np.bincount([target(c) for c in parts["train"]], minlength=n)
    majority = 100 * test_targets.count(int(train_counts.argmax())) / len(test_targets)
    r = probe(ssl_run[0] / "teacher" / "hf", ProbeConfig("accent", corpus, epochs=1), show_progress=False)
    assert r["metric"] == "accuracy" and 0 <= r["test"] <= 100 and r["control"] == pytest.approx(majority)

    phones = Units(tiny_units)["phone"]
    cut = next(iter(load_split(corpus, "dev")))
    assert phone_rate(cut, phones) == pytest.approx(len(phones.ctc_targets(cut.supervisions[0])) / cut.duration)
    r = probe("fbank", ProbeConfig("rate", corpus, epochs=2), show_progress=False)
    train = [phone_rate(c, phones) for c in load_split(corpus, "train")]
    test = [phone_rate(c, phones) for c in load_split(corpus, "test")]
    mean_error = np.mean(np.abs(np.array(test) - np.mean(train)))
    assert r["metric"] == "mae" and r["control"] == pytest.approx(mean_error) and 0 < r["test"] < 10


def test_a_pool_conv_head_sees_the_order_of_frames_and_not_the_padding(tiny_units, tmp_path, monkeypatch):
    """SUPERB's mean-pool gives the same answer for any order of the same frames, so it
    cannot count changes (a speaking rate); the 5-frame conv before the pool can. Padding
    never reaches the answer; results are named ``-conv{N}``; other tasks refuse it."""
    from speechdistill.probe import ProbeConfig, ProbeHead, probe_kept

    torch.manual_seed(0)
    a, b = torch.randn(4), torch.randn(4)
    slow = torch.stack([a, a, a, b, b, b])[None]  # one change
    fast = torch.stack([a, b, a, b, a, b])[None]  # five
    lens = torch.tensor([6])
    for conv, differs in ((0, False), (3, True)):
        head = ProbeHead("rate", 1, 4, 1, pool_conv=conv)
        y_slow, y_fast = head([slow], lens), head([fast], lens)
        assert torch.allclose(y_slow, y_fast, atol=1e-6) != differs
        padded = torch.cat([fast, torch.full((1, 3, 4), 7.0)], 1)  # 3 frames of padding, not zeros
        both = head([torch.cat([padded, torch.randn(1, 9, 4)])], torch.tensor([6, 9]))
        torch.testing.assert_close(both[:1], y_fast)

    corpus = str(tiny_units.parent)
    monkeypatch.chdir(tmp_path)  # the filterbank's results are kept in the working directory
    r, path = probe_kept("fbank", ProbeConfig("rate", corpus, epochs=1, pool_conv=8), show_progress=False)
    assert path.name == "fbank.probe-rate-conv8.json" and r["config"]["pool_conv"] == 8 and r["test"] > 0
    for bad in (dict(task="pr", pool_conv=8), dict(task="sid", pool_conv=-1)):
        with pytest.raises(ValueError, match="pool_conv is for the utterance tasks"):
            ProbeConfig(**bad)


def test_a_probe_seed_is_named_in_its_result_and_changes_it(tiny_units, tmp_path, monkeypatch):
    """``probe --seed N``: another head init and data order, kept as ``-seed{N}`` beside the
    seed-0 result instead of over it."""
    from speechdistill.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["probe", "--upstream", "fbank", "--task", "rate", "--corpus", str(tiny_units.parent), "--epochs", "1"]
    main(args)
    main([*args, "--seed", "1"])
    zero, one = (json.loads((tmp_path / f"fbank.probe-rate{s}.json").read_text()) for s in ("", "-seed1"))
    assert (zero["config"]["seed"], one["config"]["seed"]) == (0, 1)
    assert zero["dev"] != one["dev"] and zero["control"] == one["control"]


def test_a_recipes_probe_cap_leaves_sid_all_of_train(tiny_units):
    """``make demo-ssl`` and ``ssl shapes`` cap their probes' audio; SID, which splits the
    training voices' own utterances, is given the whole train split instead."""
    from speechdistill.data.corpus import load_split
    from speechdistill.probe import ProbeConfig, probe_splits, probe_train_hours

    corpus = str(tiny_units.parent)
    n_train = len(load_split(corpus, "train"))
    cap = 0.25 * sum(c.duration for c in load_split(corpus, "train")) / 3600
    sid, _, _ = probe_splits(ProbeConfig("sid", corpus, max_hours=probe_train_hours("sid", cap)))
    pr, _, _ = probe_splits(ProbeConfig("pr", corpus, max_hours=probe_train_hours("pr", cap)))
    assert probe_train_hours("sid", cap) == 0.0 and probe_train_hours("pr", cap) == cap
    assert sum(len(part) for part in sid.values()) == n_train
    assert 0 < len(pr["train"]) < n_train / 2


def test_tuning_trains_only_the_layers_it_names(ssl_run, tiny_units):
    """``top``: the top K transformer layers and the head move, everything else (the CNN,
    lower layers) keeps its bytes; the counts say so; ``all`` trains every parameter."""
    import torch

    from speechdistill.probe import ProbeConfig, ProbeHead, TunedProbe, probe
    from speechdistill.teachers.upstream import load_upstream
    from speechdistill.tune import layer_index, set_trainable

    assert layer_index("model.encoder.layers.3.attention.q_proj.weight") == 3
    assert layer_index("model.feature_extractor.conv_layers.0.conv.weight") is None
    assert layer_index("encoder.blocks.11.ff.w1.weight") == 11
    hf = ssl_run[0] / "teacher" / "hf"
    up = load_upstream(hf)
    counts = set_trainable(up, "top", layers=1)
    top = [n for n, _ in up.named_parameters() if ".layers.3." in n]  # TINY_TEACHER has 4 layers
    assert counts["trainable"] == sum(p.numel() for n, p in up.named_parameters() if n in top) > 0
    assert counts["total"] == sum(p.numel() for p in up.parameters())
    before = {n: p.detach().clone() for n, p in up.named_parameters()}
    model = TunedProbe(up, ProbeHead("sid", up.num_layers + 1, up.dim, 3))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y, _ = model(torch.randn(2, 16000), torch.tensor([16000, 12000]))
    torch.nn.functional.cross_entropy(y, torch.tensor([0, 2])).backward()
    opt.step()
    moved = {n for n, p in up.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= set(top)
    assert set_trainable(up, "all")["trainable"] == counts["total"]
    with pytest.raises(ValueError, match="tune_layers=9: the upstream has 4 layers"):
        set_trainable(up, "top", layers=9)
    with pytest.raises(ValueError, match="no parameters to tune"):
        probe("fbank", ProbeConfig("sid", str(tiny_units.parent), tune="all"), show_progress=False)
    r = probe(hf, ProbeConfig("sid", str(tiny_units.parent), epochs=1, tune="top", tune_layers=1), show_progress=False)
    assert r["tune"] == "top1" and r["upstream_params_trained"] == counts["trainable"] and 0 <= r["test"] <= 100


def test_snr_ball_by_hand():
    """||x|| = 5 over the real samples: at 20 dB the radius is 0.5; a longer perturbation
    is shrunk onto it, a shorter one kept, padding zeroed."""
    import torch

    from speechdistill.robust import project, radius, snr

    x = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    lens = torch.tensor([2, 3])
    assert radius(x, lens, 20.0).tolist() == pytest.approx([0.5, 0.1])
    d = project(torch.tensor([[1.0, 0.0, 9.0], [0.0, 0.05, 0.0]]), x, lens, 20.0)
    assert d.tolist() == [[0.5, 0.0, 0.0], [0.0, pytest.approx(0.05), 0.0]]
    assert snr(x, d, lens).tolist() == pytest.approx([20.0, 20 * math.log10(1 / 0.05)])


def test_attacks_stay_inside_the_snr_bound_and_hurt_more_than_chance(ssl_run, tiny_units):
    """Limited knowledge (the teacher's own gradients) and zero knowledge (made on a
    student, transferred): every perturbation within the SNR bound; the attacked hidden
    states move further than under random noise of the same norm; the filterbank offers
    no gradient."""
    import torch
    from lhotse import CutSet

    from speechdistill.data.batching import WaveDataset
    from speechdistill.data.corpus import load_split
    from speechdistill.probe import ProbeConfig
    from speechdistill.robust import AttackConfig, attack, distortion, perturb, project
    from speechdistill.teachers.upstream import load_upstream

    out, corpus = ssl_run[0], str(tiny_units.parent)
    teacher = load_upstream(out / "teacher" / "hf").eval().requires_grad_(False)
    cuts = sorted(load_split(corpus, "dev"), key=lambda c: c.id)[:3]
    _, wavs, lens = WaveDataset()[CutSet.from_cuts(cuts)]
    cfg = AttackConfig(ProbeConfig("sid", corpus), "pgd", snr_db=20.0, steps=3)
    delta = perturb(teacher, wavs, lens, cfg)
    with torch.no_grad():
        clean = teacher(wavs, lens)[0]
        noise = project(torch.randn(wavs.shape) * 1e6, wavs, lens, 20.0)
        assert distortion(teacher, wavs + delta, lens, clean) > distortion(teacher, wavs + noise, lens, clean)
    pc = ProbeConfig("sid", corpus, epochs=1)
    for method, surrogate in (("fgsm", ""), ("pgd", str(out / "distilhubert" / "student"))):
        r = attack(out / "teacher" / "hf", AttackConfig(pc, method, 25.0, steps=2, surrogate=surrogate), False)
        assert 25.0 - 1e-3 <= r["lowest_snr_db"] <= 25.5 and 0 <= r["attacked"] <= 100  # the whole budget used
        assert r["setting"] == ("zero-knowledge" if surrogate else "limited-knowledge")
    with pytest.raises(ValueError, match="computed outside autograd"):
        attack("fbank", AttackConfig(pc, "fgsm"), False)
    r = attack("fbank", AttackConfig(pc, "noise", 25.0), False)  # the control needs no gradient
    assert r["setting"] == "control" and 25.0 - 1e-3 <= r["lowest_snr_db"] <= 25.5
    assert torch.equal(
        perturb(teacher, wavs, lens, AttackConfig(pc, "noise", 20.0)),
        perturb(None, wavs, lens, AttackConfig(pc, "noise", 20.0)),
    )
    with pytest.raises(ValueError, match="attack task 'asr'; valid: pr, sid, accent, rate"):
        AttackConfig(ProbeConfig("asr", corpus))


def test_black_box_distillation_keeps_its_query_budget(ssl_run, tiny_units, tmp_path):
    """queries.budget: only that share of the clips is chosen (random, or k-center on MFCC
    statistics), each asked once; the teacher refuses more, and hides its weights."""
    import numpy as np
    import torch

    from speechdistill.data.batching import WaveData, load_wave_cuts
    from speechdistill.distill.queries import BlackBoxTeacher, QueryConfig, k_center, select_clips
    from speechdistill.distill.ssl_distill import DistillConfig, distill

    assert k_center(np.array([[0.0], [1.0], [2.0], [10.0]]), 3, first=0) == [0, 3, 2]
    out, corpus = ssl_run[0], str(tiny_units.parent)
    data = WaveData(corpus=corpus, max_duration=30.0)
    cuts = load_wave_cuts(data)
    for how in ("random", "diverse"):
        chosen = select_clips(cuts, QueryConfig(0.25, how))
        assert len(chosen) == round(0.25 * len(cuts)) and set(chosen.ids) <= set(cuts.ids)
        assert list(select_clips(cuts, QueryConfig(0.25, how)).ids) == list(chosen.ids)  # seeded
    fit = StudentConfig(kind="fithubert", num_layers=4, d_model=16, ff_dim=32, conv_dim=8, num_heads=2)
    cfg = DistillConfig(
        teacher=str(out / "teacher" / "hf"),
        out_dir=str(tmp_path / "bb"),
        data=data,
        optim=_optim(lr=1e-3, max_epochs=2, warmup_steps=2),
        progress=False,
        student=fit,
        queries=QueryConfig(budget=0.25, select="diverse"),
    )
    s = distill(cfg)
    n = round(0.25 * len(cuts))
    assert s["utterances"] == n and s["queries"] == {
        "budget": 0.25,
        "select": "diverse",
        "clips": n,
        "asked_this_run": n,
    }
    assert s["teacher_params"] is None and s["epoch"] == 2  # two epochs, one question per clip
    with pytest.raises(ValueError, match="black box"):
        distill(dataclasses.replace(cfg, out_dir=str(tmp_path / "dh"), student=StudentConfig(kind="distilhubert")))
    with pytest.raises(ValueError, match="black box"):  # nor can its CNN be copied
        distill(
            dataclasses.replace(
                cfg, out_dir=str(tmp_path / "fc"), student=dataclasses.replace(fit, cnn_from_teacher=True)
            )
        )
    box = BlackBoxTeacher(load_teacher(out / "teacher" / "hf"), budget=2)
    box(torch.zeros(2, 4000), torch.tensor([4000, 3000]))
    with pytest.raises(ValueError, match="query budget exhausted: 2 of 2 clips asked, 1 more wanted"):
        box(torch.zeros(1, 4000), torch.tensor([4000]))


def test_pbert_and_ctc_clustering_targets(tiny_units, tmp_path):
    """PBERT: the aligned phone at each 20 ms frame's centre, as many frames as the MFCC
    labels; CTC-clustering: k-means on a 40 ms acoustic model's layer, each of its frames
    serving two 20 ms frames; pre-training runs on both (PBERT with a second, MFCC codebook)."""
    import shutil

    import numpy as np

    from speechdistill.align.store import save_alignments
    from speechdistill.data.audio import load_cut_audio
    from speechdistill.data.batching import WaveData, load_wave_cuts
    from speechdistill.data.corpus import load_split
    from speechdistill.data.features import mfcc_with_deltas
    from speechdistill.teachers.pretrain import (
        ALIGNED_PHONES,
        PretrainConfig,
        alignment_labels,
        kmeans_labels,
        label_frames,
        pretrain,
    )

    sys.path.insert(0, str(Path(__file__).parent))
    from speechdistill.train import train
    from test_train import tiny_config

    corpus = tiny_units.parent
    cuts = load_wave_cuts(WaveData(corpus=str(corpus), max_hours=0.005))
    labels = alignment_labels(cuts, corpus, "synth")
    for c in cuts:
        audio = load_cut_audio(c)
        assert len(labels[c.id]) == label_frames(len(audio)) == len(mfcc_with_deltas(audio)[::2])
        for a in c.supervisions[0].alignment["phone"]:
            k = int(a.start / 0.02 + 0.5)  # the first frame whose centre is inside the phone
            if (k + 0.5) * 0.02 < a.start + a.duration and k < len(labels[c.id]):
                assert ALIGNED_PHONES[labels[c.id][k]] == a.symbol
    with pytest.raises(ValueError, match="clusters must hold the 40 phones"):
        PretrainConfig(labels_alignment="own", clusters=20)
    # a named alignment of the whole split, read for a subset of it (pre-training's max_hours)
    copy = tmp_path / "c"
    shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns("features", "lm", "soft_labels"))
    full = {c.id: c.supervisions[0].alignment for c in load_split(copy, "train")}
    save_alignments(copy, "copy", "train", full, {})
    assert {u: v.tolist() for u, v in alignment_labels(cuts, copy, "copy").items()} == {
        u: v.tolist() for u, v in labels.items()
    }

    train(tiny_config(corpus, tmp_path / "ctc", max_steps=2))  # a small CTC model (40 ms frames)
    ctc = PretrainConfig(clusters=4, labels_from=str(tmp_path / "ctc" / "best"), labels_layer=2, kmeans_frames=500)
    km = kmeans_labels(cuts, ctc, show_progress=False)
    assert {u: len(v) for u, v in km.items()} == {u: len(v) for u, v in labels.items()}
    data = WaveData(corpus=str(corpus), max_hours=0.005, max_duration=30.0)
    pbert = {"labels_alignment": "synth", "clusters": 40, "mfcc_clusters": 3, "kmeans_frames": 500}
    for name, extra in (("pbert", pbert), ("ctc", {"clusters": 4})):
        extra |= {"labels_from": ctc.labels_from, "labels_layer": 2, "kmeans_frames": 500} if name == "ctc" else {}
        s = pretrain(
            PretrainConfig(
                out_dir=str(tmp_path / f"pre-{name}"),
                data=data,
                optim=_optim(max_epochs=1, warmup_steps=1),
                progress=False,
                **(TINY_TEACHER | extra),
            )
        )
        assert s["epoch"] == 1 and (tmp_path / f"pre-{name}" / "hf" / "config.json").exists()
    assert (tmp_path / "pre-pbert" / "labels-alignment-synth.npz").exists()
    mfcc = np.load(tmp_path / "pre-pbert" / "labels-mfcc3.npz")  # the second codebook, one id per 20 ms frame
    assert {u: len(mfcc[u]) for u in labels} == {u: len(v) for u, v in labels.items()}
    assert {int(v) for u in labels for v in mfcc[u]} == {0, 1, 2}


def test_chapter_adapters_start_as_identity_and_train_alone(ssl_run, tiny_units):
    """Adapters after every transformer layer and (chapter) every CNN layer: the adapted
    upstream's states equal the original's at the start; after a step only adapters moved;
    the hidden states the probe reads are the adapted ones; they train under 5% of the
    parameters here and chapter adds the CNN's."""
    from speechdistill.probe import ProbeConfig, ProbeHead, TunedProbe, probe
    from speechdistill.teachers.upstream import load_upstream
    from speechdistill.tune import add_adapters

    hf = ssl_run[0] / "teacher" / "hf"
    wavs, lens = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 11000])
    with torch.no_grad():
        before, _ = load_upstream(hf).eval()(wavs, lens)
    shares = {}
    for cnn in (False, True):
        up = load_upstream(hf).eval()
        total = sum(p.numel() for p in up.parameters())
        adapters = add_adapters(up, cnn=cnn)
        assert len(adapters["layers"]) == up.num_layers and len(adapters["cnn"]) == (7 if cnn else 0)
        with torch.no_grad():
            same, _ = up(wavs, lens)
        for a, b in zip(before, same, strict=True):
            torch.testing.assert_close(a, b)
        frozen = {n: p.detach().clone() for n, p in up.named_parameters() if not n.startswith("adapters.")}
        model = TunedProbe(up, ProbeHead("sid", up.num_layers + 1, up.dim, 3))
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        y, _ = model(wavs, lens)
        torch.nn.functional.cross_entropy(y, torch.tensor([0, 2])).backward()
        opt.step()
        assert all(torch.equal(p, frozen[n]) for n, p in up.named_parameters() if n in frozen)
        with torch.no_grad():
            after, _ = up(wavs, lens)
        assert not torch.allclose(after[-1], before[-1])  # the hidden states carry the adapters
        shares[cnn] = sum(p.numel() for p in adapters.parameters()) / total
    assert shares[True] > shares[False] and shares[True] < 0.05 * 4  # tiny teacher: 4 narrow layers
    r = probe(hf, ProbeConfig("sid", str(tiny_units.parent), epochs=1, tune="chapter"), show_progress=False)
    assert r["tune"] == "chapter" and 0 < r["upstream_params_trained"] < r["upstream_params"]
    with pytest.raises(ValueError, match="no transformer layers"):
        probe("fbank", ProbeConfig("sid", str(tiny_units.parent), tune="adapters"), show_progress=False)
