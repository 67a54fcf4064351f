"""Encoders and the model: per-block outputs, lengths, padding invariance, taps."""

from __future__ import annotations

import pytest
import torch

from speechdistill.config import ConfigError, from_dict
from speechdistill.students.encoders import EncoderConfig, build_encoder
from speechdistill.students.model import AcousticModel, ModelConfig, TapConfig

KINDS = ("conformer", "transformer", "blstm")


def tiny_encoder(kind: str, subsampling: int = 4) -> EncoderConfig:
    return EncoderConfig(
        kind=kind,
        preset=None,
        num_blocks=3,
        d_model=32,
        num_heads=4,
        ff_dim=64,
        conv_kernel=5,
        dropout=0.1,
        subsampling=subsampling,
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("subsampling", [1, 2, 4, 8])
def test_every_block_output_with_lengths(kind, subsampling):
    torch.manual_seed(0)
    enc = build_encoder(tiny_encoder(kind, subsampling), input_dim=80).eval()
    lens = torch.tensor([100, 73, 41])
    layers, out_lens = enc.extract_features(torch.randn(3, 100, 80), lens)
    assert len(layers) == 3
    expected = lens.clone()
    for _ in range(int(subsampling).bit_length() - 1):
        expected = (expected - 1) // 2
    assert out_lens.tolist() == expected.tolist()
    for y in layers:
        assert y.shape == (3, int(expected.max()), 32)
        assert (y[1, int(expected[1]) :] == 0).all(), "padded frames are zero"


@pytest.mark.parametrize("kind", KINDS)
def test_padded_batch_equals_one_by_one(kind):
    torch.manual_seed(0)
    enc = build_encoder(tiny_encoder(kind), input_dim=80).eval()
    x = torch.randn(3, 120, 80)
    lens = torch.tensor([120, 90, 47])
    with torch.no_grad():
        layers, out_lens = enc.extract_features(x, lens)
        for i in range(3):
            single, single_lens = enc.extract_features(x[i : i + 1, : lens[i]], lens[i : i + 1])
            t = int(single_lens[0])
            assert t == int(out_lens[i])
            for a, b in zip(layers, single, strict=True):
                torch.testing.assert_close(a[i, :t], b[0, :t], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_first_k_blocks_equal_the_full_run(kind):
    torch.manual_seed(0)
    enc = build_encoder(tiny_encoder(kind), input_dim=80).eval()
    x, lens = torch.randn(2, 60, 80), torch.tensor([60, 33])
    with torch.no_grad():
        full, _ = enc.extract_features(x, lens)
        part, _ = enc.extract_features(x, lens, num_blocks=2)
        last, _ = enc(x, lens)
    assert len(part) == 2
    for a, b in zip(part, full[:2], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(last, full[-1])


def test_taps_validated_and_dropped_for_inference():
    enc = tiny_encoder("conformer")
    with pytest.raises(ValueError, match="layer 4 is outside the encoder's blocks 1..3"):
        ModelConfig(encoder=enc, taps=[TapConfig(layer=4)])
    with pytest.raises(ValueError, match="layer 0 is outside"):
        ModelConfig(encoder=enc, taps=[TapConfig(layer=0)])
    with pytest.raises(ValueError, match="CTC tap over senones"):
        TapConfig(layer=1, unit="senone", kind="ctc")
    with pytest.raises(ConfigError, match=r"taps\[0\]: expected a mapping|unknown config key taps\[0\]\.depth"):
        from_dict(ModelConfig, {"taps": [{"depth": 2}]})
    cfg = ModelConfig(
        encoder=enc, taps=[TapConfig(layer=1, unit="senone"), TapConfig(layer=2, unit="phone", kind="ctc")]
    )
    vocab = {"subword": 50, "phone": 40, "senone": 120}
    model = AcousticModel(cfg, vocab).eval()
    out = model(torch.randn(2, 64, 80), torch.tensor([64, 50]))
    assert out.main.shape == (2, 15, 51)
    assert out.taps["senone@1"].shape == (2, 15, 120)
    assert out.taps["phone-ctc@2"].shape == (2, 15, 40)
    inference = model.without_taps()
    assert not any("taps" in k for k in inference.state_dict())
    log_probs, lens = inference(torch.randn(2, 64, 80), torch.tensor([64, 50]))
    assert log_probs.shape == (2, 15, 51) and lens.tolist() == [15, 11]
    assert model.num_params(with_taps=False) == sum(p.numel() for p in inference.parameters())


def test_self_conditioned_tap_feeds_the_blocks_above_and_is_decoded():
    enc = tiny_encoder("conformer")
    with pytest.raises(ValueError, match="condition=true needs kind=ctc"):
        TapConfig(layer=1, unit="senone", condition=True)
    with pytest.raises(ValueError, match="on the last block conditions nothing"):
        ModelConfig(encoder=enc, taps=[TapConfig(layer=3, unit="phone", kind="ctc", condition=True)])
    with pytest.raises(ValueError, match=r"at most one conditioned tap per block; blocks \[2, 2\]"):
        ModelConfig(
            encoder=enc,
            taps=[
                TapConfig(layer=2, unit="phone", kind="ctc", condition=True),
                TapConfig(layer=2, unit="subword", kind="ctc", condition=True),
            ],
        )
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=enc,
        taps=[TapConfig(layer=2, unit="phone", kind="ctc", condition=True), TapConfig(layer=1, unit="senone")],
    )
    model = AcousticModel(cfg, {"subword": 50, "phone": 40, "senone": 120}).eval()
    x, lens = torch.randn(2, 64, 80), torch.tensor([64, 50])
    with torch.no_grad():
        out = model(x, lens)
        layers, _ = model.encoder.extract_features((x - model.feat_mean) / model.feat_std, lens)
        head = model.encoder.condition["2"].head
        # the tap's CTC log-probs come from its head on block 2's own output ...
        torch.testing.assert_close(out.taps["phone-ctc@2"], head(layers[1]).log_softmax(-1))
        # ... and block 3 reads that output plus the projected posteriors (zero on padding)
        pad = torch.arange(15)[None] >= torch.tensor([15, 11])[:, None]
        fed = (layers[1] + model.encoder.condition["2"].proj(head(layers[1]).softmax(-1))).masked_fill(
            pad[..., None], 0.0
        )
        torch.testing.assert_close(layers[2], model.encoder.blocks[2](fed, pad))
        # the decodable model keeps the conditioning: same output, its head counted as inference
        inference = model.without_taps()
        log_probs, _ = inference(x, lens)
        torch.testing.assert_close(log_probs, out.main)
        assert any(k.startswith("encoder.condition.2.head") for k in inference.state_dict())
        assert model.num_params(with_taps=False) == sum(p.numel() for p in inference.parameters())
        # without the feedback (projection zeroed) the output changes, block 2 does not
        model.encoder.condition["2"].proj.weight.zero_()
        model.encoder.condition["2"].proj.bias.zero_()
        plain = model(x, lens)
        torch.testing.assert_close(plain.taps["phone-ctc@2"], out.taps["phone-ctc@2"])
        assert not torch.allclose(plain.main, out.main)


def test_config_errors_name_the_key():
    from speechdistill.train import TrainConfig

    with pytest.raises(ConfigError, match="unknown config key optim.learning_rate; valid keys of optim: lr, "):
        from_dict(TrainConfig, {"optim": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="model.encoder.num_blocks: expected an integer, got 'six'"):
        from_dict(TrainConfig, {"model": {"encoder": {"preset": None, "num_blocks": "six"}}})
    with pytest.raises(ConfigError, match="num_blocks must be positive, got -2"):
        from_dict(TrainConfig, {"model": {"encoder": {"preset": None, "num_blocks": -2}}})
    with pytest.raises(ConfigError, match="valid presets: xs, s, m, l"):
        from_dict(TrainConfig, {"model": {"encoder": {"preset": "huge"}}})


def test_every_shipped_config_loads():
    from pathlib import Path

    import yaml

    from speechdistill.ablate import load_ablation, run_config
    from speechdistill.config import load_config, to_dict
    from speechdistill.distill.ssl_distill import DistillConfig
    from speechdistill.teachers.pretrain import PretrainConfig
    from speechdistill.train import TrainConfig

    root = Path(__file__).parent.parent / "configs"
    configs = sorted((root / "asr").glob("*.yaml"))
    ablations = [p for p in configs if "variants" in yaml.safe_load(p.read_text())]
    assert {p.name for p in ablations} == {
        "ablation.yaml",
        "augment_ablation.yaml",
        "demo.yaml",
        "demo_budget.yaml",
        "demo_controls.yaml",
        "learned_weights.yaml",
        "lm_placement.yaml",
        "long_small_kd.yaml",
        "oracle.yaml",
        "recipe_sweep.yaml",
        "recipe_sweep3.yaml",
        "recipe_sweep4.yaml",
        "recipe_sweep5.yaml",
        "recipe_sweep6.yaml",
        "recipe_sweep7.yaml",
    }
    assert len(configs) - len(ablations) >= 6
    for path in configs:
        if path in ablations:
            abl = load_ablation(path)
            for variant in abl.variants:
                run_config(abl, variant, 0)
        else:
            assert load_config(TrainConfig, path).name == path.stem
    # a recipe is its base plus what it says: aux.yaml differs from baseline.yaml in name, out_dir and taps only
    base, aux = (to_dict(load_config(TrainConfig, root / "asr" / f"{n}.yaml")) for n in ("baseline", "aux"))
    assert {k for k in base if base[k] != aux[k]} == {"name", "out_dir", "model"}
    # the baseline's five taps, kept; the LM's soft labels added on the block-4 subword one only
    kd = {"kd": {"unit": "subword", "top_k": 8, "temperature": 3.0, "alignment": ""}}
    assert len(base["model"]["taps"]) == len(aux["model"]["taps"]) == 5
    assert [aux["model"]["taps"][i] for i in (0, 1, 2, 4)] == [base["model"]["taps"][i] for i in (0, 1, 2, 4)]
    assert aux["model"]["taps"][3] == base["model"]["taps"][3] | kd
    assert base["model"]["taps"][3:] == [
        {
            "layer": layer,
            "unit": "subword",
            "kind": "frame",
            "weight": 0.3,
            "ce_weight": 1.0,
            "kd": None,
            "condition": False,
        }
        for layer in (4, 5)
    ]
    # the KD question at the long recipe: hier and aux differ from their baseline in the
    # taps' LMs only (hier on the blocks 2, 3 and 4 frame taps, aux on block 4's alone)
    abl = load_ablation(root / "asr" / "long_small_kd.yaml")
    b = to_dict(run_config(abl, "baseline", 0))
    for variant, taught in (("hier", [False, True, True, True, False]), ("aux", [False, False, False, True, False])):
        v = to_dict(run_config(abl, variant, 0))
        assert {k for k in b if b[k] != v[k]} == {"name", "out_dir", "model"}
        assert {k for k in b["model"] if b["model"][k] != v["model"][k]} == {"taps"}
        assert [t["kd"] is not None for t in v["model"]["taps"]] == taught
        assert [t | {"kd": None} for t in v["model"]["taps"]] == b["model"]["taps"]
    # and interp in its label interpolation only
    i = to_dict(run_config(abl, "interp", 0))
    assert {k for k in b if b[k] != i[k]} == {"name", "out_dir", "interp"}
    assert i["interp"]["enabled"] and not b["interp"]["enabled"]
    assert (b["optim"]["max_epochs"], b["model"]["encoder"]["dropout"], b["augment"]["speed"]["enabled"]) == (
        20,
        0.1,
        True,
    )
    assert load_config(PretrainConfig, root / "ssl" / "pretrain.yaml").num_layers == 12
    # the demo's teacher: pretrain.yaml's, with PBERT's targets and the MFCC codebook beside
    # them, the unmasked frames' loss, no dropout, all of the corpus's audio for 3 epochs
    mfcc, pbert = (
        to_dict(load_config(PretrainConfig, root / "ssl" / f"{n}.yaml")) for n in ("pretrain", "pretrain-pbert")
    )
    assert {k: pbert[k] for k in pbert if pbert[k] != mfcc[k]} == {
        "out_dir": "exp/ssl/teacher-pbert",
        "labels_alignment": "own",
        "clusters": 40,
        "mfcc_clusters": 100,
        "mfcc_weight": 0.3,
        "nomask_weight": 1.0,
        "dropout": 0.0,
        "data": mfcc["data"] | {"max_hours": 0.0},
        "optim": mfcc["optim"] | {"lr": 0.001, "max_epochs": 3},
    }
    # the GPU teacher: the demo's recipe, wider, on bigger batches for longer, on a GPU
    gpu = to_dict(load_config(PretrainConfig, root / "ssl" / "pretrain-gpu.yaml"))
    assert {k: gpu[k] for k in gpu if gpu[k] != pbert[k]} == {
        "out_dir": "exp/ssl/teacher-gpu",
        "accelerator": "gpu",
        "hidden_size": 384,
        "num_heads": 6,
        "ff_dim": 1536,
        "conv_dim": 128,
        "data": pbert["data"] | {"max_duration": 200.0},
        "optim": pbert["optim"] | {"lr": 0.0005, "warmup_steps": 200, "max_epochs": 20},
    }
    for kind in ("distilhubert", "fithubert"):
        assert load_config(DistillConfig, root / "ssl" / f"{kind}.yaml").student.kind == kind
    # the cut front end: DistilHuBERT's recipe, a narrower first CNN layer and positional kernel
    dh, cut = (
        to_dict(load_config(DistillConfig, root / "ssl" / f"{n}.yaml")) for n in ("distilhubert", "distilhubert-cut")
    )
    assert {k for k in dh if dh[k] != cut[k]} == {"out_dir", "student"}
    assert {k for k in dh["student"] if dh["student"][k] != cut["student"][k]} == {"cnn_channels", "pos_kernel"}
    assert (cut["student"]["cnn_channels"][:2], cut["student"]["pos_kernel"]) == ([16, 32], 32)
