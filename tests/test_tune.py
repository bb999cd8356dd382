"""Tuning alpha / beta on cached emissions, the decode-params file, and how transcribe / evaluate pick the
decoding settings (options over the file, the file beside the model found by itself)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import FSDD_ASSETS, needs_kenlm
from test_beam import ARPA, VOCAB, bunny_emissions

from asrkit.checkpoint import load_checkpoint, save_checkpoint
from asrkit.config import build_config
from asrkit.data.audio import audio_info
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AsrkitError
from asrkit.evaluate import evaluate
from asrkit.inference import DecodeRequest, choose_search, prepare_search
from asrkit.models import build_model
from asrkit.search import SearchOptions, describe, read_decode_params
from asrkit.transcribe import transcribe_nbest
from asrkit.tune import search_space, tune, tune_weights, write_decode_params

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
    opts = SearchOptions(lm=str(arpa))
    trials = tune_weights([lp, lp], ["bugs bunny", "bugs bunny"], VOCAB, opts, [(0.0, 0.0), (0.5, 0.0)],
                          workers=2)
    assert [(t.alpha, t.wer) for t in trials] == [(0.0, 0.5), (0.5, 0.0)]


def test_summary_says_when_the_best_lies_on_the_edge_of_the_range(tmp_path: Path) -> None:
    from asrkit.tune import Trial, TuneResult

    trials = [Trial(a, b, 0.5 - 0.1 * b, 0.1) for a in (0.0, 1.0) for b in (0.0, 1.0, 2.0)]
    best = min(trials, key=lambda t: t.wer)
    result = TuneResult(best, 0.6, 0.2, trials, SearchOptions(), tmp_path / "tune.json")
    assert best.beta == 2.0 and result.at_edge() == [
        "the best beta 2 is at the edge of the range searched (0,2); widen --beta-range to look beyond it"]
    assert "note: the best beta 2" in result.summary()


def test_decode_params_file_round_trip(tmp_path: Path, arpa: Path) -> None:
    opts = SearchOptions(lm=str(arpa), alpha=0.7, beta=1.5, beam_size=24, hotwords=("bugs",))
    path = write_decode_params(tmp_path / "tune.json", opts)
    body = json.loads(path.read_text())
    assert body["decode"]["lm"] == "bunny.arpa"  # relative to the file's folder
    assert read_decode_params(path) == opts
    (tmp_path / "bad.json").write_text('{"decode": {"alpha": 1, "gamma": 2}}')
    with pytest.raises(AsrkitError, match=r"bad\.json: unknown decode setting\(s\) gamma; valid: alpha"):
        read_decode_params(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text('{"decode": {"beam_size": -1}}')
    with pytest.raises(AsrkitError, match=r"bad2\.json: beam size -1 must be at least 1, or 0 for the model's default"):
        read_decode_params(tmp_path / "bad2.json")
    (tmp_path / "old.json").write_text('{"decode": {"alpha": 0.7, "beam_size": 32}}')  # the CTC settings alone
    assert read_decode_params(tmp_path / "old.json") == SearchOptions(alpha=0.7, beam_size=32)
    with pytest.raises(AsrkitError, match=r"nope\.json not found; write them with `asrkit tune"):
        read_decode_params(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------- with a checkpoint


def tiny_checkpoint(exp: Path, sections: dict) -> Path:
    """An untrained tiny model of `sections` over the letters of "zero one two" (the wiring is tested, not accuracy),
    saved to exp/best.pt."""
    exp.mkdir(parents=True, exist_ok=True)
    cfg = build_config({"features": {"n_mels": 40}, **sections})
    tok = CharTokenizer.train(["zero one two"])
    feat = Featurizer(cfg.features)
    feat.fit_stats([0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(0))])
    torch.manual_seed(0)
    net = build_model(cfg, 40, len(tok.vocab)).eval()
    save_checkpoint(exp / "best.pt", config=cfg, tokenizer=tok, featurizer=feat, model=net)
    return exp


def tiny_ds2(exp: Path, decode: dict | None = None) -> Path:
    """An untrained tiny DeepSpeech2, its [decode] set to `decode`."""
    return tiny_checkpoint(exp, {"model": {"conv_layers": 1, "conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 16},
                                 "decode": decode or {}})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_ds2(tmp_path_factory.mktemp("exp"))


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


@needs_kenlm
def test_transcribe_reads_the_tuned_settings_and_options_override_them(model_dir: Path, dev: tuple[Path, list[Path]],
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    manifest, wavs = dev
    lm = tmp_path / "digits.arpa"
    loaded = load_checkpoint(model_dir)
    plain = choose_search(loaded, DecodeRequest())  # nothing tuned, nothing asked: the checkpoint's [decode]
    assert plain == loaded.config.decode.search_options() and describe(prepare_search(loaded, plain)[0],
                                                                       "ctc") == "greedy"
    write_decode_params(model_dir / "tune.json", SearchOptions(lm=str(lm), alpha=0.3, beta=0.2, beam_size=6))
    try:
        auto = choose_search(loaded, DecodeRequest())
        assert (auto.alpha, auto.beam_size, Path(auto.lm)) == (0.3, 6, lm)
        assert "tune.json" in capsys.readouterr().err
        mixed = choose_search(loaded, DecodeRequest(settings={"beam_size": 3, "hotwords": ("two",), "nbest": 2}))
        assert (mixed.alpha, mixed.beam_size, mixed.hotwords, mixed.nbest) == (0.3, 3, ("two",), 2)
        greedy = choose_search(loaded, DecodeRequest(greedy=True))
        assert describe(prepare_search(loaded, greedy)[0], "ctc") == "greedy" and not greedy.lm
        with pytest.raises(AsrkitError, match="--greedy cannot be combined"):
            choose_search(loaded, DecodeRequest(greedy=True, settings={"lm": str(lm)}))
        results, failures = transcribe_nbest(model_dir, [*wavs[:2], tmp_path / "missing.wav"], device="cpu",
                                             decode=mixed, workers=1)
        assert len(results) == 2 and len(failures) == 1
        for path, hyps in results:
            assert 1 <= len(hyps) <= 2
            duration = audio_info(path)[0]
            assert all(0 <= w.start < w.end <= duration + 0.05 for w in hyps[0].words)
        report = tmp_path / "report.json"
        result = evaluate(model_dir, manifest, report=report, device="cpu", decode=DecodeRequest(), workers=2)
        assert len(result.utterances) == 6
        assert json.loads(report.read_text())["decoding"]["alpha"] == 0.3
    finally:
        (model_dir / "tune.json").unlink()


def test_alpha_without_an_lm_is_refused(model_dir: Path) -> None:
    loaded = load_checkpoint(model_dir)
    with pytest.raises(AsrkitError, match="--alpha and --beta weight a language model: pass --lm"):
        choose_search(loaded, DecodeRequest(settings={"alpha": 0.5}))
    beam_only = choose_search(loaded, DecodeRequest(settings={"beam_size": 4}))
    assert beam_only.lm == "" and beam_only.beam_size == 4
    assert describe(prepare_search(loaded, beam_only)[0], "ctc") == "beam 4"  # CTC beam search without an LM


def test_search_precedence_checkpoint_then_decode_params_then_options(tmp_path: Path) -> None:
    """The checkpoint's [decode] < tune.json beside it (or --decode-params) < the command line (named options over
    --set); what a level does not hold comes from the one below."""
    exp = tiny_ds2(tmp_path / "exp", {"beam_size": 5, "alpha": 0.1, "beta": 0.7, "hotword_weight": 3.0})
    loaded = load_checkpoint(exp)
    assert loaded.config.decode.search_options() == SearchOptions(beam_size=5, alpha=0.1, beta=0.7,
                                                                  hotword_weight=3.0)
    (exp / "tune.json").write_text(json.dumps({"decode": {"lm": "x.arpa", "alpha": 0.3, "beam_size": 6}}))
    tuned = choose_search(loaded, DecodeRequest())
    assert (tuned.beam_size, tuned.alpha, tuned.beta, tuned.hotword_weight, tuned.lm) == \
        (6, 0.3, 0.7, 3.0, str(exp / "x.arpa"))
    given = choose_search(loaded, DecodeRequest(settings={"beam_size": 3}))
    assert (given.beam_size, given.alpha, given.beta, given.hotword_weight) == (3, 0.3, 0.7, 3.0)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"decode": {"beta": 2.0}}))
    explicit = choose_search(loaded, DecodeRequest(params=other, settings={"nbest": 2}))  # not tune.json then
    assert (explicit.beam_size, explicit.alpha, explicit.beta, explicit.nbest, explicit.lm) == (5, 0.1, 2.0, 2, "")
    with_lm = choose_search(loaded, DecodeRequest(settings={"lm": "y.bin"}))  # --lm: tune.json is not read
    assert (with_lm.lm, with_lm.alpha, with_lm.beam_size) == ("y.bin", 0.1, 5)


def test_cli_options_override_the_checkpoint_and_tune_json(tmp_path: Path) -> None:
    """`transcribe / evaluate --beam-size --set decode.KEY=VALUE` over tune.json over the checkpoint's [decode],
    seen in the settings evaluate reports (a CTC beam search without an LM: no kenlm needed)."""
    from typer.testing import CliRunner

    from asrkit.cli import app

    exp = tiny_ds2(tmp_path / "exp", {"beam_size": 5, "beta": 0.7, "hotword_weight": 3.0, "backend": "asrkit"})
    (exp / "tune.json").write_text(json.dumps({"decode": {"beam_size": 6, "token_top_k": 4}}))
    wav = FSDD_ASSETS / "0_jackson_0.wav"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(wav), "duration": audio_info(wav)[0], "text": "zero"}))
    report = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["evaluate", str(exp), str(manifest), "--beam-size", "3", "--set",
                                      "decode.token_min_logp=-4", "--set", "decode.beam_prune_logp=-6", "--device",
                                      "cpu", "--report", str(report), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "beam 3" in result.stdout
    decoding = json.loads(report.read_text())["decoding"]
    assert (decoding["beam_size"], decoding["token_top_k"], decoding["token_min_logp"], decoding["beta"],
            decoding["hotword_weight"], decoding["beam_prune_logp"], decoding["backend"]) == \
        (3, 4, -4.0, 0.7, 3.0, -6.0, "asrkit")
    result = CliRunner().invoke(app, ["evaluate", str(exp), str(manifest), "--set", "decode.length_penalty=1",
                                      "--device", "cpu", "--report", str(report)])
    assert result.exit_code == 2 and "length_penalty set, but a model with the ctc objective does not read" in \
        result.output
    result = CliRunner().invoke(app, ["evaluate", str(exp), str(manifest), "--set", "train.lr=1", "--device", "cpu"])
    assert result.exit_code == 2 and "--set train.lr: here --set takes the search settings of [decode]" in \
        result.output


# ------------------------------------------------------------------------------------- the command line


@needs_kenlm
def test_cli_tune_then_transcribe_and_evaluate_with_the_lm(model_dir: Path, dev: tuple[Path, list[Path]],
                                                           tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from asrkit.cli import app

    manifest, wavs = dev
    runner = CliRunner()
    out = tmp_path / "tuned.json"
    result = runner.invoke(app, ["tune", str(model_dir), str(manifest), "--lm", str(tmp_path / "digits.arpa"),
                                 "--out", str(out), "--steps", "2", "--workers", "1", "--no-progress",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "best alpha" in result.stdout and out.is_file()
    result = runner.invoke(app, ["transcribe", str(model_dir), str(wavs[0]), "--decode-params", str(out),
                                 "--nbest", "2", "--beam-size", "4", "--hotword", "two", "--format", "jsonl",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip().splitlines()[0])
    assert {"text", "score", "words"} <= set(line) and len(line.get("nbest", [1, 1])) <= 2
    result = runner.invoke(app, ["evaluate", str(model_dir), str(manifest), "--lm", str(tmp_path / "digits.arpa"),
                                 "--alpha", "0.5", "--beta", "1", "--report", str(tmp_path / "r.json"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "LM alpha 0.5 beta 1" in result.stdout


def test_cli_decoding_errors_are_one_line_with_exit_code_2(model_dir: Path, dev: tuple[Path, list[Path]],
                                                          tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from asrkit.cli import app

    _, wavs = dev
    runner = CliRunner()
    cases = [
        (["--beam-size", "0"], "beam size 0 must be at least 1"),
        (["--lm", str(tmp_path / "none.bin")], "none.bin not found; build one with `asrkit lm build"),
        (["--alpha", "0.3"], "pass --lm LM too"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["transcribe", str(model_dir), str(wavs[0]), "--device", "cpu", *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_cli_lm_build(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from asrkit import lm_build
    from asrkit.cli import app

    try:
        lm_build.find_tool("lmplz")
        lm_build.find_tool("build_binary")
    except AsrkitError:
        pytest.skip("KenLM's lmplz / build_binary not installed (make kenlm)")
    text = tmp_path / "t.txt"
    text.write_text("One two.\nTwo three!\n" * 10)
    result = CliRunner().invoke(app, ["lm", "build", str(text), "--out", str(tmp_path / "lm" / "d"), "--order", "3",
                                      "--prune", "0,0,1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lm" / "d.bin").is_file() and "--lm" in result.stdout
    result = CliRunner().invoke(app, ["lm", "build", str(text), "--out", str(tmp_path / "x"), "--prune", "a"])
    assert result.exit_code == 2 and "--prune 'a'" in result.output


@pytest.mark.parametrize("backend", [pytest.param("asrkit", marks=needs_kenlm), pytest.param(
    "flashlight", marks=pytest.mark.skipif(not __import__("asrkit.lm").lm.flashlight_available(),
                                           reason="flashlight-text not installed"))])
def test_tune_with_a_backend_and_a_gzipped_upper_case_arpa(model_dir: Path, dev: tuple[Path, list[Path]],
                                                           tmp_path: Path, backend: str) -> None:
    """LibriSpeech's LMs come as upper-case .arpa.gz: tune takes one (converted once beside it) and writes the
    backend it tuned for with the weights."""
    import gzip

    manifest, _ = dev
    gz = tmp_path / "digits.arpa.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(DIGIT_ARPA.upper().replace("<S>", "<s>").replace("</S>", "</s>").replace("<UNK>", "<unk>")
                .replace("\\DATA\\", "\\data\\").replace("NGRAM", "ngram").replace("-GRAMS", "-grams")
                .replace("\\END\\", "\\end\\"))
    out = tmp_path / "tune.json"
    result = tune(model_dir, manifest, gz, out=out, alpha_range=(0.0, 1.0), beta_range=(0.0, 1.0), steps=2,
                  base=SearchOptions(backend=backend), workers=2, progress=False, device="cpu")
    assert len(result.trials) == 4
    decode = json.loads(out.read_text())["decode"]
    assert decode["backend"] == backend and ".asrkit." in decode["lm"]
    assert read_decode_params(out).lm == result.options.lm



# ------------------------------------------------------------- transducer and attention models: fused word LM

FUSED_SIZES: dict[str, dict] = {
    "transducer": {"transducer": {"encoder_layers": 1, "encoder_hidden": 16, "predictor_embed": 4,
                                  "predictor_hidden": 16, "joint_dim": 16, "dropout": 0.0}},
    "las": {"las": {"listener_layers": 1, "pyramid_layers": 1, "listener_hidden": 8, "attention_dim": 8,
                    "embedding_dim": 4, "speller_layers": 1, "speller_hidden": 16, "location_channels": 2,
                    "location_kernel": 3, "dropout": 0.0, "ctc_weight": 0.3, "sampling_rate": 0.0}},
}


def tiny_fused(exp: Path, family: str) -> Path:
    """An untrained tiny transducer, or attention model (LAS) with a CTC head."""
    return tiny_checkpoint(exp, {"model": {"family": family}, **FUSED_SIZES[family]})


@pytest.fixture()
def dev3(tmp_path: Path) -> Path:
    """A manifest of three FSDD digits (zero, one, two) and the digit word ARPA beside it."""
    wavs = [FSDD_ASSETS / f"{d}_jackson_0.wav" for d in (0, 1, 2)]
    lines = [json.dumps({"audio_filepath": str(w), "duration": audio_info(w)[0], "text": word})
             for w, word in zip(wavs, ["zero", "one", "two"], strict=True)]
    manifest = tmp_path / "dev3.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    (tmp_path / "digits.arpa").write_text(DIGIT_ARPA)
    return manifest


def test_fusion_space_grid_random_and_bad_ranges() -> None:
    from asrkit.tune import fusion_space

    grid = fusion_space("grid", {"lm_weight": (0.0, 1.0), "lm_bonus": (0.0, 2.0)}, steps=3)
    # lm_weight 0: no LM, so no bonus either: one setting instead of three
    assert grid == [{"lm_weight": 0.0, "lm_bonus": 0.0}] + [{"lm_weight": w, "lm_bonus": b} for w in (0.5, 1.0)
                                                             for b in (0.0, 1.0, 2.0)]
    three = fusion_space("grid", {"lm_weight": (0.5, 0.5), "lm_bonus": (1.0, 1.0), "ctc_weight": (0.0, 0.4)},
                         steps=2)
    assert three == [{"lm_weight": 0.5, "lm_bonus": 1.0, "ctc_weight": c} for c in (0.0, 0.4)]
    rand = fusion_space("random", {"ctc_weight": (0.1, 0.6)}, trials=10, seed=3)
    assert 1 <= len(rand) <= 10 and all(0.1 <= p["ctc_weight"] <= 0.6 for p in rand)
    for ranges, message in [
        ({"lm_weight": (-1.0, 1.0)}, r"--weight-range -1,1: need 0 <= MIN <= MAX \(lm_weight 0 turns the LM off\)"),
        ({"lm_bonus": (3.0, 1.0)}, r"--bonus-range 3,1: need MIN <= MAX"),
        ({"ctc_weight": (0.0, 1.0)}, r"--ctc-weight-range 0,1: need 0 <= MIN <= MAX < 1"),
        ({"lm_bonus": (0.0, float("inf"))}, r"--bonus-range 0,inf: MIN and MAX must be finite"),
    ]:
        with pytest.raises(AsrkitError, match=message):
            fusion_space("grid", ranges)
    with pytest.raises(AsrkitError, match="--steps 0 must be at least 1"):
        fusion_space("grid", {"ctc_weight": (0.0, 0.5)}, steps=0)


@needs_kenlm
@pytest.mark.usefixtures("one_torch_thread")
def test_tune_a_transducer_then_evaluate_reads_it(tmp_path: Path, dev3: Path) -> None:
    """lm_weight x lm_bonus of the word LM fused into a transducer's beam search: tune.json beside the model holds
    the best (with lm_units "words" and beam 8), and evaluate decodes with it by default."""
    from typer.testing import CliRunner

    from asrkit.cli import app
    from asrkit.tune import FusionTrial

    exp = tiny_fused(tmp_path / "rnnt", "transducer")
    lm = tmp_path / "digits.arpa"
    result = tune(exp, dev3, lm, weight_range=(0.0, 1.0), bonus_range=(0.0, 2.0), steps=2, progress=False,
                  device="cpu", out=tmp_path / "first.json")
    assert [(t.lm_weight, t.lm_bonus) for t in result.trials] == [(0.0, 0.0), (1.0, 0.0), (1.0, 2.0)]
    assert isinstance(result.best, FusionTrial) and result.best.wer == min(t.wer for t in result.trials)
    assert result.summary().startswith(f"best lm_weight {result.best.lm_weight:g} lm_bonus "
                                       f"{result.best.lm_bonus:g}: dev WER") and "greedy WER" in result.summary()
    body = json.loads((tmp_path / "first.json").read_text())
    assert body["utterances"] == 3 and body["trials"][0] == {"lm_weight": 0.0, "lm_bonus": 0.0,
                                                            "wer": result.trials[0].wer, "cer": result.trials[0].cer}

    runner = CliRunner()
    out = runner.invoke(app, ["tune", str(exp), str(dev3), "--lm", str(lm), "--weight-range", "0.5,1",
                              "--bonus-range", "0,2", "--steps", "2", "--no-progress", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "best lm_weight" in out.stdout and str(exp / "tune.json") in out.stdout
    body = json.loads((exp / "tune.json").read_text())
    decode, best = body["decode"], min(body["trials"], key=lambda t: (t["wer"], t["cer"], t["lm_weight"],
                                                                         abs(t["lm_bonus"])))
    assert (decode["lm_weight"], decode["lm_bonus"]) == (best["lm_weight"], best["lm_bonus"])
    assert decode["lm_units"] == "words" and decode["beam_size"] == 8 and decode["lm"] == str(lm)
    assert len(body["trials"]) == 4 and body["dev"]["wer"] == best["wer"]
    chosen = read_decode_params(exp / "tune.json")
    assert chosen.lm_weight in (0.5, 1.0) and chosen.ctc_weight == 0.0

    report = tmp_path / "r.json"
    out = runner.invoke(app, ["evaluate", str(exp), str(dev3), "--device", "cpu", "--report", str(report)])
    assert out.exit_code == 0, out.output
    assert f"beam 8 + LM {chosen.lm_weight:g}" in out.stdout  # tune.json's settings, found beside the model
    assert json.loads(report.read_text())["decoding"] == f"beam 8 + LM {chosen.lm_weight:g}"


@needs_kenlm
@pytest.mark.usefixtures("one_torch_thread")
def test_tune_an_attention_model_with_a_ctc_head(tmp_path: Path, dev3: Path) -> None:
    """LAS with a CTC head: ctc_weight is tuned too, with the word LM or alone; evaluate --decode-params reads the
    chosen joint CTC / attention + LM setting back."""
    from typer.testing import CliRunner

    from asrkit.cli import app

    exp = tiny_fused(tmp_path / "las", "las")
    lm = tmp_path / "digits.arpa"
    out = tmp_path / "las_tune.json"
    runner = CliRunner()
    result = runner.invoke(app, ["tune", str(exp), str(dev3), "--lm", str(lm), "--weight-range", "0.5,0.5",
                                 "--bonus-range", "1,1", "--ctc-weight-range", "0.2,0.4", "--steps", "2",
                                 "--beam-size", "4", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert re.search(r"best lm_weight 0\.5 lm_bonus 1 ctc_weight 0\.[24]: dev WER", result.stdout), result.stdout
    body = json.loads(out.read_text())
    decode = body["decode"]
    assert [(t["ctc_weight"]) for t in body["trials"]] == [0.2, 0.4]
    assert (decode["lm_weight"], decode["lm_bonus"], decode["lm_units"], decode["beam_size"]) == (0.5, 1.0, "words", 4)
    assert decode["ctc_weight"] in (0.2, 0.4) and not (exp / "tune.json").exists()
    result = runner.invoke(app, ["evaluate", str(exp), str(dev3), "--decode-params", str(out), "--device", "cpu",
                                 "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert f"beam 4 + CTC {decode['ctc_weight']:g} + LM 0.5" in result.stdout

    alone = tune(exp, dev3, None, ctc_weight_range=(0.0, 0.3), steps=2, beam_size=2, progress=False, device="cpu")
    assert alone.names == ("ctc_weight",) and [t.ctc_weight for t in alone.trials] == [0.0, 0.3]
    decode = json.loads((exp / "tune.json").read_text())["decode"]
    assert decode["lm"] == "" and decode["lm_weight"] == 0.0 and decode["ctc_weight"] == alone.best.ctc_weight
    assert alone.summary().startswith(f"best ctc_weight {decode['ctc_weight']:g}: dev WER")


def test_tune_options_that_do_not_fit_the_model_are_clear_errors(tmp_path: Path, dev3: Path, model_dir: Path) -> None:
    """Each is one line, exit 2, before any decoding."""
    from typer.testing import CliRunner

    from asrkit.cli import app

    rnnt = tiny_fused(tmp_path / "rnnt", "transducer")
    lm = str(tmp_path / "digits.arpa")
    cases = [
        (rnnt, [], "nothing to tune: pass --lm LM"),
        (rnnt, ["--lm", lm, "--ctc-weight-range", "0,0.5"], "--ctc-weight-range tunes joint CTC / attention"),
        (rnnt, ["--lm", lm, "--alpha-range", "0,1"], "--alpha-range tune(s) CTC beam search"),
        (rnnt, ["--lm", lm, "--backend", "asrkit"], "--backend tune(s) CTC beam search"),
        (rnnt, ["--lm", lm, "--weight-range", "-1,1"], "--weight-range -1,1: need 0 <= MIN <= MAX"),
        (rnnt, ["--lm", lm, "--bonus-range", "2,1"], "--bonus-range 2,1: need MIN <= MAX"),
        (rnnt, ["--lm", lm, "--weight-range", "1"], "--weight-range '1': expected MIN,MAX"),
        (rnnt, ["--weight-range", "0,1"], "--weight-range and --bonus-range weight a word LM"),
        (model_dir, ["--lm", lm, "--weight-range", "0,1"], "--weight-range tune(s) the search of a transducer"),
        (model_dir, [], "pass --lm LM"),
    ]
    for exp, extra, message in cases:
        result = CliRunner().invoke(app, ["tune", str(exp), str(dev3), "--device", "cpu", "--no-progress", *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output, (extra, result.output)
    assert not (rnnt / "tune.json").exists()
