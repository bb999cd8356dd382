"""SearchOptions, the [decode] section: every setting checked with an error that names the value and the fix; the
beam a model runs when none is given; settings a model does not read refused; how a search is named; the
[decode] config section and `--set decode.KEY=VALUE`; old [las] / [transducer] search keys pointed to [decode]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from asrkit.config import build_config, decode_sets, load_config
from asrkit.errors import AsrkitError
from asrkit.search import SETTINGS, SearchOptions, describe, is_greedy, resolve


@pytest.mark.parametrize(("settings", "message"), [
    ({"beam_size": -1}, "beam size -1 must be at least 1, or 0 for the model's default (try --beam-size 32)"),
    ({"nbest": 0}, "nbest 0 must be at least 1"),
    ({"beam_size": 2, "nbest": 5}, "nbest 5 is larger than the beam size 2; raise --beam-size to at least 5"),
    ({"beam_prune_logp": 1.0}, "beam_prune_logp 1.0 and token_min_logp -5.0 are log-probabilities and must be "
                               "negative"),
    ({"token_min_logp": 0.0}, "must be negative"),
    ({"alpha": float("nan")}, "alpha nan must be a finite number"),
    ({"lm_weight": float("inf")}, "lm_weight inf must be a finite number"),
    ({"backend": "fast"}, "unknown decoding backend 'fast'; valid: flashlight, asrkit, pyctcdecode"),
    ({"alpha": -0.5}, "alpha -0.5 must be >= 0 (0 turns the LM off)"),
    ({"token_top_k": -1}, "token_top_k -1 must be >= 0 (0: no limit)"),
    ({"lm_weight": -0.1}, "lm_weight -0.1 must be >= 0 (0 turns shallow fusion off)"),
    ({"max_len_ratio": 0.0}, "max_len_ratio 0.0 must be positive"),
    ({"ctc_weight": 1.0}, "ctc_weight 1.0 must be in [0, 1) (0: attention scores alone)"),
    ({"max_symbols": 0}, "max_symbols 0 must be at least 1"),
])
def test_bad_settings_are_errors_that_name_them(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(AsrkitError) as info:
        SearchOptions(**settings)
    assert message in str(info.value)


def test_from_json_names_the_file_and_the_unknown_keys() -> None:
    with pytest.raises(AsrkitError, match=r"x\.json: unknown decode setting\(s\) gamma; valid: alpha, backend"):
        SearchOptions.from_json({"gamma": 1}, "x.json")
    with pytest.raises(AsrkitError, match=r"x\.json: nbest 0 must be at least 1"):
        SearchOptions.from_json({"nbest": 0}, "x.json")
    options = SearchOptions(lm="a.bin", hotwords=("bugs bunny",), length_penalty=0.5)
    assert SearchOptions.from_json(options.to_json(), "x.json") == options


@pytest.mark.parametrize(("objective", "settings", "beam"), [
    ("ctc", {}, 1), ("ctc", {"lm": "x.bin"}, 32), ("ctc", {"hotwords": ("a",)}, 32), ("ctc", {"nbest": 2}, 32),
    ("ctc", {"beam_size": 8}, 8), ("attention", {}, 4), ("attention", {"nbest": 6}, 6), ("transducer", {}, 1),
    ("transducer", {"nbest": 3}, 3), ("transducer", {"beam_size": 5, "nbest": 2}, 5),
])
def test_beam_size_0_is_the_models_default(objective: str, settings: dict[str, Any], beam: int) -> None:
    assert resolve(SearchOptions(**settings), objective, ctc_head=True).beam_size == beam


def test_a_setting_the_model_does_not_read_is_refused() -> None:
    with pytest.raises(AsrkitError) as info:
        resolve(SearchOptions(alpha=0.3, length_penalty=0.5), "transducer")
    assert str(info.value).startswith("decode setting(s) alpha, length_penalty set, but a model with the transducer "
                                      "objective does not read them (they apply to attention and ctc models)")
    for objective, names in SETTINGS.items():  # what an objective reads, it accepts
        assert set(names) <= {f for f in SearchOptions.__dataclass_fields__}, objective


def test_how_a_search_is_named() -> None:
    assert describe(resolve(SearchOptions(), "ctc"), "ctc") == "greedy"
    assert describe(resolve(SearchOptions(lm="x.bin", alpha=0.8, beta=2), "ctc"), "ctc") == \
        "beam 32, LM alpha 0.8 beta 2"
    assert describe(resolve(SearchOptions(beam_size=8), "ctc"), "ctc") == "beam 8"
    fused = resolve(SearchOptions(lm="units.arpa", lm_weight=0.3, ctc_weight=0.2), "attention", ctc_head=True)
    assert describe(fused, "attention") == "beam 4 + CTC 0.2 + LM 0.3" and not is_greedy(fused)
    assert describe(resolve(SearchOptions(beam_size=1), "transducer"), "transducer") == "greedy"


def test_the_decode_section_holds_every_search_setting(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[model]\nfamily = "las"\n[las]\nctc_weight = 0.3\n[decode]\nbeam_size = 8\nbatch_size = 4\n'
                    'ctc_weight = 0.2\nlength_penalty = 0.5\nhotwords = []\n')
    cfg = load_config(conf)
    assert cfg.decode.batch_size == 4
    assert cfg.decode.search_options() == SearchOptions(beam_size=8, ctc_weight=0.2, length_penalty=0.5)
    assert build_config({"decode": {"hotwords": ["bugs bunny", "carrot"]}}).decode.hotwords == ("bugs bunny",
                                                                                               "carrot")
    for decode, message in [({"beam_size": -2}, "config [decode]: beam size -2 must be at least 1"),
                            ({"hotwords": "bugs"}, "config decode.hotwords: expected a list of strings"),
                            ({"beams": 4}, "unknown config key decode.beams; valid keys in [decode]: alpha")]:
        with pytest.raises(AsrkitError) as info:
            build_config({"decode": decode})
        assert message in str(info.value)


@pytest.mark.parametrize(("section", "key", "new"), [
    ("las", "beam_size", "decode.beam_size"), ("las", "lm_path", "decode.lm"),
    ("las", "ctc_decode_weight", "decode.ctc_weight"),
    ("transducer", "decoding", "decode.beam_size instead (greedy: 1)"),
    ("transducer", "max_symbols", "decode.max_symbols"),
])
def test_search_keys_of_a_family_section_point_to_decode(section: str, key: str, new: str) -> None:
    with pytest.raises(AsrkitError) as info:
        build_config({section: {key: 1}})
    assert f"config {section}.{key}: the search settings of every model are in [decode] now; set {new}" \
        in str(info.value)


def test_set_decode_keys_are_typed_like_the_toml() -> None:
    assert decode_sets(["decode.beam_size=8", "decode.lm=x.bin", "decode.hotwords=[\"a\", \"b\"]",
                        "decode.lm_lookahead=false"]) == {"beam_size": 8, "lm": "x.bin", "hotwords": ("a", "b"),
                                                          "lm_lookahead": False}
    with pytest.raises(AsrkitError, match="unknown decode setting decode.batch; valid: alpha"):
        decode_sets(["decode.batch=3"])
    with pytest.raises(AsrkitError, match="config decode.beam_size: expected int"):
        decode_sets(["decode.beam_size=wide"])
