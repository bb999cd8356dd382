"""The Conformer encoder (asrkit.models.encoders) under every objective: shapes, masks (padding never changes a
real frame's output), gradients reaching every parameter, decoding, and the [encoder] config."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import losses_of_steps

from asrkit.config import build_config, load_config
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AsrkitError
from asrkit.models import build_model
from asrkit.models.encoders import ConformerEncoder
from asrkit.records import Batch
from asrkit.search import SearchOptions

SMALL = {"kind": "conformer", "d_model": 32, "layers": 2, "heads": 2, "ff_mult": 2, "conv_kernel": 5,
         "subsampling_channels": 8, "dropout": 0.0}
FAMILIES = ["deepspeech2", "transducer", "las"]
VOCAB = 12


def model_of(family: str, encoder: dict[str, Any] | None = None) -> torch.nn.Module:
    sections: dict[str, Any] = {"model": {"family": family}, "encoder": encoder or SMALL,
                                "features": {"n_mels": 20}}
    if family == "las":
        sections["las"] = {"ctc_weight": 0.3, "speller_hidden": 32, "embedding_dim": 16, "attention_dim": 16,
                           "speller_layers": 1, "dropout": 0.0, "sampling_rate": 0.0}
    if family == "transducer":
        sections["transducer"] = {"predictor_hidden": 32, "predictor_embed": 16, "joint_dim": 32, "dropout": 0.0}
    torch.manual_seed(0)
    return build_model(build_config(sections), 20, VOCAB)


def batch_of(lengths: list[int], u: int = 4) -> Batch:
    torch.manual_seed(1)
    b = len(lengths)
    feats = torch.randn(b, max(lengths), 20)
    for i, n in enumerate(lengths):
        feats[i, n:] = 0.0
    targets = torch.randint(1, VOCAB, (b, u))
    return Batch([str(i) for i in range(b)], feats, torch.tensor(lengths), targets, torch.full((b,), u),
                 [""] * b, [])


@pytest.mark.parametrize("factor", [4, 6, 8])
def test_subsampling_lengths_and_zero_padding(factor: int) -> None:
    enc = ConformerEncoder(20, d_model=32, layers=1, heads=2, ff_mult=2, conv_kernel=5, subsampling=factor,
                           subsampling_channels=8).eval()
    feats = torch.randn(2, 97, 20)
    out, lens = enc(feats, torch.tensor([97, 50]))
    assert out.shape == (2, int(lens.max()), 32) and enc.time_reduction == factor
    assert abs(int(lens[0]) - 97 / factor) <= 2  # about T / factor frames
    assert torch.all(out[1, int(lens[1]):] == 0)


def test_padding_never_changes_a_real_frame() -> None:
    """The short utterance alone and padded in a batch with a long one give the same encoder frames."""
    enc = ConformerEncoder(20, **{k: v for k, v in SMALL.items() if k != "kind"}).eval()
    torch.manual_seed(2)
    short = torch.randn(1, 41, 20)
    alone, n = enc(short, torch.tensor([41]))
    padded = torch.cat([short, torch.zeros(1, 80, 20)], dim=1)
    batch = torch.cat([padded, torch.randn(1, 121, 20)])
    together, lens = enc(batch, torch.tensor([41, 121]))
    assert int(lens[0]) == int(n[0])
    torch.testing.assert_close(together[0, : int(n[0])], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_conformer_drives_every_objective(family: str) -> None:
    """Loss finite, gradients reach every parameter, a few steps lower the loss, decode returns hypotheses."""
    model = model_of(family)
    model.train()
    batch = batch_of([60, 47, 33])
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing
    losses = losses_of_steps(model, batch, 8, lr=3e-3)
    assert losses[-1] < losses[0]
    model.eval()
    tok = CharTokenizer([" ", *(chr(ord("a") + i) for i in range(VOCAB - 2))])
    nbests = model.decode(batch.feats, batch.feat_lens, SearchOptions(), tokenizer=tok)
    assert len(nbests) == 3 and all(isinstance(h.text, str) for hyps in nbests for h in hyps)


def test_conformer_transducer_refuses_to_stream() -> None:
    model = model_of("transducer")
    assert not model.streaming
    with pytest.raises(ValueError, match="cannot stream"):
        model.start_stream(SearchOptions())


def test_presets_and_sizes() -> None:
    cfg = build_config({"encoder": {"preset": "s"}})
    assert cfg.encoder.kind == "conformer" and cfg.encoder.layers == 16 and cfg.encoder.conv_kernel == 31
    cfg = build_config({"encoder": {"preset": "cpu", "layers": 4}})
    assert cfg.encoder.layers == 4 and cfg.encoder.d_model == 144
    m = build_model(build_config({"encoder": {"preset": "m"}}), 80, 30)
    assert 25e6 < sum(p.numel() for p in m.parameters()) < 35e6  # the paper's M: 30 M (with its decoder)


@pytest.mark.parametrize(("sections", "message"), [
    ({"encoder": {"kind": "conformr"}}, "unknown encoder.kind 'conformr'; valid: '', conformer, conv_rnn"),
    ({"encoder": {"preset": "xl"}}, "unknown encoder.preset 'xl'; valid presets: cpu, s, m"),
    ({"encoder": {"kind": "conformer", "subsampling": 5}}, "unknown encoder.subsampling 5; valid: 4, 6, 8"),
    ({"model": {"family": "lass"}}, "unknown model.family 'lass'; valid: deepspeech2, las, transducer"),
    ({"model": {"rnn_type": "gruu"}}, "unknown model.rnn_type 'gruu'; valid: gru, lstm"),
    ({"train": {"schedule": "linear"}}, "unknown train.schedule 'linear'; valid: anneal, noam, cosine"),
])
def test_bad_choices_are_errors_with_the_valid_values(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(AsrkitError) as err:
        build_config(sections)
    assert message in str(err.value)


@pytest.mark.parametrize(("toml", "section"), [
    ('[model]\nfamily = "deepspeech2"\n[las]\nlistener_layers = 2\n', "[las]"),
    ('[model]\nfamily = "las"\n[transducer]\njoint_dim = 8\n', "[transducer]"),
    ('[encoder]\nd_model = 256\n', "[encoder]"),
    ('[model]\nfamily = "transducer"\nrnn_hidden = 512\n', "[model]"),
    ('[model]\nrnn_layers = 2\n[encoder]\nkind = "conformer"\n', "[model]"),
])
def test_a_key_in_a_section_the_model_does_not_use_is_an_error(tmp_path: Any, toml: str, section: str) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(toml)
    with pytest.raises(AsrkitError) as err:
        load_config(conf)
    assert str(conf) in str(err.value) and f"does not use {section}" in str(err.value)


def test_sections_the_model_uses_load() -> None:
    cfg = load_config(None, ["encoder.preset=cpu", "encoder.layers=2", "model.family=transducer",
                             "transducer.joint_dim=64"])
    assert cfg.encoder.kind == "conformer" and cfg.transducer.joint_dim == 64


def test_throughput_bench_applies_set_to_every_combination() -> None:
    """bench/train_throughput.py --matrix --set encoder.subsampling=8 measures the /8 Conformer, not the recipe's /4."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.combo_config("conformer-ctc").encoder.subsampling == 4
    cfg = bench.combo_config("conformer-transducer", ["encoder.subsampling=8", "train.lr=0.002"])
    assert (cfg.encoder.subsampling, cfg.train.lr, cfg.encoder.kind) == (8, 0.002, "conformer")
    with pytest.raises(AsrkitError, match="unknown config key encoder.subsampeling"):  # not dropped like stale keys
        bench.combo_config("conformer-ctc", ["encoder.subsampeling=8"])
