"""Tuning alpha / beta on cached emissions, the decode-params file, and how transcribe / evaluate pick the
decoding settings (options over the file, the file beside the model found by itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FSDD_ASSETS
from test_beam import ARPA, VOCAB, bunny_emissions

from asrkit.checkpoint import save_checkpoint
from asrkit.config import build_config
from asrkit.data.audio import audio_info
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import CharTokenizer
from asrkit.decoding import LMDecodeOptions
from asrkit.errors import AsrkitError
from asrkit.models import build_model
from asrkit.transcribe import decode_options, evaluate, read_decode_params, transcribe_nbest
from asrkit.tune import search_space, tune, tune_weights, write_decode_params

pytest.importorskip("kenlm")

DIGIT_ARPA = """\\data\\
ngram 1=6
ngram 2=1

\\1-grams:
-99\t<s>\t-0.3
-1.0\t</s>
-2.0\t<unk>
-0.5\tzero\t-0.3
-0.5\tone\t-0.3
-0.5\ttwo\t-0.3

\\2-grams:
-0.2\tone two

\\end\\
"""


@pytest.fixture()
def arpa(tmp_path: Path) -> Path:
    path = tmp_path / "bunny.arpa"
    path.write_text(ARPA.lstrip(), encoding="utf-8")
    return path


def test_search_space_grid_and_random() -> None:
    grid = search_space("grid", (0.0, 1.0), (-1.0, 1.0), steps=3)
    assert grid == [(a, b) for a in (0.0, 0.5, 1.0) for b in (-1.0, 0.0, 1.0)]
    rand = search_space("random", (0.0, 2.0), (0.0, 3.0), trials=20, seed=1)
    assert len(rand) == 20 and all(0 <= a <= 2 and 0 <= b <= 3 for a, b in rand)
    assert rand == search_space("random", (0.0, 2.0), (0.0, 3.0), trials=20, seed=1)
    assert search_space("grid", (0.5, 0.5), (1.0, 1.0)) == [(0.5, 1.0)]
    with pytest.raises(AsrkitError, match="unknown search method 'bayes'; valid: grid, random"):
        search_space("bayes", (0, 1), (0, 1))
    with pytest.raises(AsrkitError, match="alpha range -1,1"):
        search_space("grid", (-1, 1), (0, 1))


def test_tuning_finds_that_the_lm_helps(arpa: Path) -> None:
    lp = bunny_emissions()
    opts = LMDecodeOptions(lm=str(arpa))
    trials = tune_weights([lp, lp], ["bugs bunny", "bugs bunny"], VOCAB, opts, [(0.0, 0.0), (0.5, 0.0)],
                          workers=2)
    assert [(t.alpha, t.wer) for t in trials] == [(0.0, 0.5), (0.5, 0.0)]


def test_decode_params_file_round_trip(tmp_path: Path, arpa: Path) -> None:
    opts = LMDecodeOptions(lm=str(arpa), alpha=0.7, beta=1.5, beam_size=24, hotwords=("bugs",))
    path = write_decode_params(tmp_path / "tune.json", opts)
    body = json.loads(path.read_text())
    assert body["decode"]["lm"] == "bunny.arpa"  # relative to the file's folder
    assert read_decode_params(path) == opts
    (tmp_path / "bad.json").write_text('{"decode": {"alpha": 1, "gamma": 2}}')
    with pytest.raises(AsrkitError, match=r"bad\.json: unknown decode setting\(s\) gamma; valid: alpha"):
        read_decode_params(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text('{"decode": {"beam_size": 0}}')
    with pytest.raises(AsrkitError, match="beam size 0 must be at least 1"):
        read_decode_params(tmp_path / "bad2.json")
    with pytest.raises(AsrkitError, match=r"nope\.json not found; write them with `asrkit tune"):
        read_decode_params(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------- with a checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny DeepSpeech2 over the letters of "zero one two" (the wiring is tested, not accuracy)."""
    exp = tmp_path_factory.mktemp("exp")
    cfg = build_config({"model": {"conv_layers": 1, "conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 16},
                        "features": {"n_mels": 40}})
    tok = CharTokenizer.train(["zero one two"])
    feat = Featurizer(cfg.features)
    feat.fit_stats([0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(0))])
    torch.manual_seed(0)
    net = build_model(cfg, 40, len(tok.vocab)).eval()
    save_checkpoint(exp / "best.pt", config=cfg, tokenizer=tok, featurizer=feat, model=net)
    return exp


@pytest.fixture()
def dev(tmp_path: Path) -> tuple[Path, list[Path]]:
    wavs = [FSDD_ASSETS / f"{d}_jackson_{i}.wav" for d in (0, 1, 2) for i in (0, 1)]
    words = ["zero", "one", "two"]
    lines = [json.dumps({"audio_filepath": str(w), "duration": audio_info(w)[0], "text": words[int(w.name[0])]})
             for w in wavs]
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    (tmp_path / "digits.arpa").write_text(DIGIT_ARPA)
    return manifest, wavs


def test_tune_writes_the_best_setting_beside_the_model(model_dir: Path, dev: tuple[Path, list[Path]],
                                                       tmp_path: Path) -> None:
    manifest, wavs = dev
    out = tmp_path / "exp_copy" / "tune.json"
    result = tune(model_dir, manifest, tmp_path / "digits.arpa", out=out, alpha_range=(0.0, 1.0),
                  beta_range=(0.0, 1.0), steps=2, workers=1, progress=False, device="cpu")
    assert len(result.trials) == 4 and result.path == out
    assert (result.best.alpha, result.best.beta) in [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    assert result.best.wer == min(t.wer for t in result.trials)
    body = json.loads(out.read_text())
    assert body["decode"]["alpha"] == result.best.alpha and body["dev"]["greedy_wer"] == result.greedy_wer
    assert body["utterances"] == 6 and len(body["trials"]) == 4
    assert "best alpha" in result.summary() and "greedy WER" in result.summary()


def test_transcribe_reads_the_tuned_settings_and_options_override_them(model_dir: Path, dev: tuple[Path, list[Path]],
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    manifest, wavs = dev
    lm = tmp_path / "digits.arpa"
    assert decode_options(model_dir) is None  # nothing tuned, nothing asked: greedy
    write_decode_params(model_dir / "tune.json", LMDecodeOptions(lm=str(lm), alpha=0.3, beta=0.2, beam_size=6))
    try:
        auto = decode_options(model_dir)
        assert auto is not None and (auto.alpha, auto.beam_size, Path(auto.lm)) == (0.3, 6, lm)
        assert "tune.json" in capsys.readouterr().err
        mixed = decode_options(model_dir, beam_size=3, hotwords=["two"], nbest=2)
        assert mixed is not None and (mixed.alpha, mixed.beam_size, mixed.hotwords, mixed.nbest) == \
            (0.3, 3, ("two",), 2)
        assert decode_options(model_dir, greedy=True) is None
        with pytest.raises(AsrkitError, match="--greedy cannot be combined"):
            decode_options(model_dir, greedy=True, lm=lm)
        results, failures = transcribe_nbest(model_dir, [*wavs[:2], tmp_path / "missing.wav"], device="cpu",
                                             decode=mixed, workers=1)
        assert len(results) == 2 and len(failures) == 1
        for path, hyps in results:
            assert 1 <= len(hyps) <= 2
            duration = audio_info(path)[0]
            assert all(0 <= w.start < w.end <= duration + 0.05 for w in hyps[0].words)
        report = tmp_path / "report.json"
        result = evaluate(model_dir, manifest, report=report, device="cpu", decode=auto, workers=2)
        assert len(result.utterances) == 6
        assert json.loads(report.read_text())["decoding"]["alpha"] == 0.3
    finally:
        (model_dir / "tune.json").unlink()


def test_alpha_without_an_lm_is_refused(model_dir: Path) -> None:
    with pytest.raises(AsrkitError, match="--alpha and --beta weight a language model: pass --lm"):
        decode_options(model_dir, alpha=0.5)
    beam_only = decode_options(model_dir, beam_size=4)
    assert beam_only is not None and beam_only.lm == "" and beam_only.beam_size == 4
