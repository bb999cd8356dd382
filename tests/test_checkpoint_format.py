"""Checkpoint formats: a checkpoint written before [decode] held the search settings (format 1: [las] and
[transducer] held them) loads through a migration into [decode] and decodes as it did; newer, unknown and
unmigratable ones are refused, saying which format wrote them and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from asrkit.checkpoint import VERSION, load_checkpoint, save_checkpoint
from asrkit.config import build_config
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AsrkitError
from asrkit.models import build_model
from asrkit.search import SearchOptions

N_MELS = 20
TOK = CharTokenizer.train(["abcdef "])
SIZES: dict[str, dict[str, Any]] = {
    "deepspeech2": {"model": {"conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 8}},
    "las": {"las": {"listener_layers": 1, "pyramid_layers": 1, "listener_hidden": 8, "attention_dim": 8,
                    "embedding_dim": 4, "speller_layers": 1, "speller_hidden": 8, "location_channels": 2,
                    "location_kernel": 3, "dropout": 0.0, "ctc_weight": 0.5}},
    "transducer": {"transducer": {"encoder_layers": 1, "encoder_hidden": 8, "predictor_embed": 4,
                                  "predictor_hidden": 8, "joint_dim": 8, "dropout": 0.0}},
}
# What format 1 saved in every checkpoint (all keys of every section, at these defaults unless set).
OLD_LAS = {"beam_size": 4, "nbest": 1, "length_penalty": 0.0, "coverage_penalty": 0.0, "max_len_ratio": 2.0,
           "lm_path": "", "lm_weight": 0.0, "ctc_decode_weight": 0.0}
OLD_TRANSDUCER = {"decoding": "greedy", "beam_size": 4, "nbest": 1, "max_symbols": 8}


def save_current(path: Path, family: str, decode: dict[str, Any]) -> None:
    cfg = build_config({"model": {"family": family}, "features": {"n_mels": N_MELS}, **SIZES[family],
                        "decode": {**decode, "batch_size": 3}})
    feat = Featurizer(cfg.features)
    feat.fit_stats([0.1 * torch.randn(4000, generator=torch.Generator().manual_seed(0))])
    torch.manual_seed(0)
    save_checkpoint(path, config=cfg, tokenizer=TOK, featurizer=feat, model=build_model(cfg, N_MELS, len(TOK.vocab)))


def as_format_1(path: Path, las: dict[str, Any] | None = None, transducer: dict[str, Any] | None = None) -> Path:
    """The checkpoint at `path` rewritten as format 1 wrote it, by hand: version 1, [decode] holding only
    batch_size, the search keys back in [las] and [transducer] (`las`, `transducer` over their old defaults), and
    no [encoder] section (added later; it loads with its defaults)."""
    data = torch.load(path, weights_only=True)
    config = {name: dict(values) for name, values in data["config"].items()}
    config["decode"] = {"batch_size": config["decode"]["batch_size"]}
    config["las"].update({**OLD_LAS, **(las or {})})
    config["transducer"].update({**OLD_TRANSDUCER, **(transducer or {})})
    del config["encoder"]
    old = path.with_name(f"old-{path.name}")
    torch.save({**data, "version": 1, "config": config}, old)
    return old


def decoded(path: Path, search: SearchOptions | None = None) -> list[list[tuple[tuple[int, ...], float]]]:
    loaded = load_checkpoint(path)
    feats = torch.randn(2, 37, N_MELS, generator=torch.Generator().manual_seed(1))
    nbests = loaded.model.decode(feats, torch.tensor([37, 25]), search or loaded.config.decode.search_options(),
                                 tokenizer=loaded.tokenizer)
    return [[(h.tokens, round(h.score, 4)) for h in hyps] for hyps in nbests]


@pytest.mark.parametrize(("family", "las", "transducer", "decode"), [
    ("las", {"beam_size": 3, "nbest": 2, "length_penalty": 0.5, "coverage_penalty": 0.1, "max_len_ratio": 1.5,
             "ctc_decode_weight": 0.3, "lm_weight": 0.2},  # a weight without lm_path fused nothing: dropped
     {"decoding": "beam", "beam_size": 9},  # another family's section: dropped
     {"beam_size": 3, "nbest": 2, "length_penalty": 0.5, "coverage_penalty": 0.1, "max_len_ratio": 1.5,
      "ctc_weight": 0.3}),
    ("las", {"lm_path": "units.arpa", "lm_weight": 0.2}, None, {"beam_size": 4, "lm": "units.arpa", "lm_weight": 0.2}),
    ("transducer", None, {"decoding": "greedy", "beam_size": 4, "nbest": 2, "max_symbols": 5},
     {"beam_size": 1, "nbest": 1, "max_symbols": 5}),
    ("transducer", {"beam_size": 7}, {"decoding": "beam", "beam_size": 6, "nbest": 3, "max_symbols": 5},
     {"beam_size": 6, "nbest": 3, "max_symbols": 5}),
    ("deepspeech2", {"beam_size": 7}, {"decoding": "beam"}, {}),
])
def test_format_1_migrates_into_decode(tmp_path: Path, family: str, las: dict | None, transducer: dict | None,
                                       decode: dict[str, Any]) -> None:
    new = tmp_path / "new.pt"
    save_current(new, family, decode)
    old = as_format_1(new, las, transducer)
    loaded = load_checkpoint(old)
    assert loaded.config.decode.search_options() == SearchOptions(**decode)
    assert loaded.config.decode.batch_size == 3
    assert loaded.config.encoder == build_config({}).encoder  # no [encoder] in the file: its defaults
    assert loaded.config == load_checkpoint(new).config
    if not decode.get("lm"):  # the same search, the same hypotheses
        assert decoded(old) == decoded(new)
    else:  # the LM is opened by whoever decodes, not by loading the checkpoint
        assert decoded(old, SearchOptions(beam_size=2, nbest=2)) == decoded(new, SearchOptions(beam_size=2, nbest=2))


@pytest.mark.parametrize(("version", "fragment"), [
    (VERSION + 1, f"checkpoint format {VERSION + 1} was written by a newer asrkit (this one reads formats 1 to "
                  f"{VERSION}); upgrade asrkit"),
    (0, "unknown checkpoint format 0 (asrkit writes 1 to"),
    ("2", "unknown checkpoint format '2'"),
])
def test_unknown_and_newer_formats_are_refused(tmp_path: Path, version: object, fragment: str) -> None:
    path = tmp_path / "model.pt"
    save_current(path, "deepspeech2", {})
    data = torch.load(path, weights_only=True)
    torch.save({**data, "version": version}, path)
    with pytest.raises(AsrkitError) as info:
        load_checkpoint(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(("break_it", "reason"), [
    (lambda c: c["transducer"].update(decoding="viterbi"), "unknown transducer.decoding 'viterbi'"),
    (lambda c: c.pop("model"), "'model'"),
])
def test_a_format_1_checkpoint_that_cannot_be_migrated_is_refused(tmp_path: Path, break_it: Any,
                                                                  reason: str) -> None:
    new = tmp_path / "new.pt"
    save_current(new, "transducer", {})
    old = as_format_1(new)
    data = torch.load(old, weights_only=True)
    break_it(data["config"])
    torch.save(data, old)
    with pytest.raises(AsrkitError) as info:
        load_checkpoint(old)
    message = str(info.value)
    assert f"checkpoint format 1 (written by an asrkit older than this one) could not be migrated to format {VERSION}" \
        in message and reason in message and "load it with the asrkit version that wrote it, or retrain" in message
