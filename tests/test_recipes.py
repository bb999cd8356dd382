"""Recipes: every run.sh parses and has a --help, every conf/*.toml loads, and the staged scripts run end to end
on tiny data (the embedded FSDD subset, generated AN4 and LibriSpeech miniatures) with a two-step training
budget, skipping their finished stages on a second run. The LM stages run for real on FSDD where KenLM's tools
are installed, and against a stub asrkit everywhere (its command lines, and a clean skip without lmplz)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ASSETS, ROOT, needs_kenlm_tools
from test_prepare_an4 import make_an4
from test_prepare_librispeech import make_librispeech

from asrkit import lm_build
from asrkit.config import FAMILIES, load_config
from asrkit.errors import AsrkitError
from asrkit.models import MODELS

RECIPES = ROOT / "recipes"
RUN_SCRIPTS = sorted(RECIPES.glob("*/run.sh"))
CONFS = sorted(RECIPES.glob("*/conf/*.toml"))
# Two optimiser steps of a tiny model: enough to exercise every stage, seconds of CPU.
TINY = ["train.max_steps=2", "train.epochs=1", "model.rnn_hidden=32", "model.rnn_layers=1", "train.num_workers=0",
        "model.conv_layers=1", "model.conv_channels=4", "features.n_mels=40", "train.batch_seconds=20"]
TINY_SETS = [arg for key in TINY for arg in ("--set", key)]


def _env(bin_dir: Path | None = None) -> dict[str, str]:
    """The test's environment with `bin_dir` or else the venv's bin/ (where `asrkit` lives) first on PATH, and
    one torch thread (the tiny models gain nothing from more)."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir or Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_recipe(script: Path, *args: str, bin_dir: Path | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`bash script args...`; on a non-zero exit, fail showing the script's stdout and stderr."""
    try:
        return subprocess.run(["bash", str(script), *args], check=True, capture_output=True, text=True,
                              env=_env(bin_dir), timeout=timeout)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"{script.relative_to(ROOT)} {' '.join(args)} exited {err.returncode}\n"
                    f"--- stdout\n{err.stdout}\n--- stderr\n{err.stderr}")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=lambda p: p.parent.name)
def test_run_sh_parses(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, capture_output=True, text=True)
    assert os.access(script, os.X_OK), f"{script} is not executable (chmod +x)"


def test_common_sh_parses() -> None:
    """recipes/common.sh, which every run.sh sources (bash -n on a run.sh does not read it)."""
    subprocess.run(["bash", "-n", str(RECIPES / "common.sh")], check=True, capture_output=True, text=True)


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=lambda p: p.parent.name)
def test_run_sh_help(script: Path) -> None:
    out = run_recipe(script, "--help").stdout
    assert "--stage" in out and "asrkit" in out, out
    bad = subprocess.run(["bash", str(script), "--no-such-option"], capture_output=True, text=True, env=_env())
    assert bad.returncode == 2 and "unknown option --no-such-option" in bad.stderr


# The model family a conf's name implies: run.sh's --model FAMILY (deepspeech2|las|transducer, the [model] family
# names) picks conf/<family>.toml (variants are conf/<family>_<variant>.toml), fsdd's demo.toml is the small
# DeepSpeech2 of `make demo`, and conformer_ctc is a Conformer encoder trained with CTC (the deepspeech2 family with
# [encoder] kind "conformer").
CONF_FAMILIES = {"deepspeech2": "deepspeech2", "demo": "deepspeech2", "conformer_ctc": "deepspeech2", "las": "las",
                 "transducer": "transducer", "conformer_attention": "las", "conformer_transducer": "transducer",
                 "an4_fsdd": "", "deepspeech2_sp": "deepspeech2", "transducer_sp": "transducer", "las_sp": "las"}


@pytest.mark.parametrize("conf", CONFS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_conf_loads(conf: Path) -> None:
    """Each conf loads and trains the family its name says (model.family, or its default), a registered one."""
    names = [n for n in CONF_FAMILIES if conf.stem == n or conf.stem.startswith(n + "_")]
    assert names, f"{conf.name}: name it after its model, conf/<model>[_<variant>].toml, one of {sorted(CONF_FAMILIES)}"
    name = max(names, key=len)
    config = load_config(conf)
    family = config.model.family
    if CONF_FAMILIES[name]:  # "" (e.g. the corpora-mix confs): any family
        implied = CONF_FAMILIES[name]
        assert family == implied, f"{conf}: model.family {family!r}, its name implies {implied!r}"
    assert family in MODELS, f"{conf}: model.family {family!r} is not one of {sorted(MODELS)}"
    if name.startswith("conformer"):
        assert config.encoder.kind == "conformer", f"{conf}: encoder.kind {config.encoder.kind!r}, not conformer"


def test_every_corpus_recipe_has_the_three_models_and_results() -> None:
    for corpus in ("librispeech", "commonvoice", "an4"):
        folder = RECIPES / corpus
        assert {p.name for p in (folder / "conf").glob("*.toml")} >= {f"{family}.toml" for family in FAMILIES}
        assert (folder / "run.sh").is_file() and (folder / "RESULTS.md").is_file()


FSDD_SCRIPT = RECIPES / "fsdd" / "run.sh"


@pytest.fixture(scope="module")
def fsdd_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Path, str]:
    """The FSDD recipe run once with its defaults (every stage, the LM ones where KenLM's tools are installed) on
    the embedded subset: (its arguments, data, exp, its standard output)."""
    tmp = tmp_path_factory.mktemp("fsdd")
    args = ["--fsdd", str(ASSETS / "fsdd"), "--data", str(tmp / "data"), "--exp", str(tmp / "exp"), *TINY_SETS]
    return args, tmp / "data", tmp / "exp", run_recipe(FSDD_SCRIPT, *args, timeout=300).stdout


@pytest.mark.slow
def test_fsdd_recipe_end_to_end(fsdd_run: tuple[list[str], Path, Path, str]) -> None:
    args, _, exp, _ = fsdd_run
    scores = (exp / "scores.txt").read_text(encoding="utf-8")
    assert re.search(r"^dev: WER \d+\.\d+%", scores, re.M) and re.search(r"^test: WER \d+\.\d+%", scores, re.M), scores
    again = run_recipe(FSDD_SCRIPT, *args, "--stop-stage", "1").stdout
    assert re.search(r"\[stage 0\] skip", again) and re.search(r"\[stage 1\] skip", again), again


@pytest.mark.slow
@needs_kenlm_tools
def test_fsdd_lm_stages(fsdd_run: tuple[list[str], Path, Path, str]) -> None:
    """Stage 4 builds a word 4-gram of the training transcripts, stage 5 tunes alpha / beta on dev into
    exp/decode/lm_tune.json (not beside the model, so stages 2-3 stay without the LM) and decodes dev and test
    with both; a rerun keeps all of it."""
    args, data, exp, out = fsdd_run
    lm = data / "lm" / "train_4gram.bin"
    assert f"[stage 4] build a 4-gram word LM from {data}/train.jsonl -> {lm}" in out, out
    assert lm.stat().st_size > 0 and (data / "lm" / "train_4gram.arpa").read_text().startswith("\\data\\")
    tuned = exp / "decode" / "lm_tune.json"
    decode = json.loads(tuned.read_text(encoding="utf-8"))["decode"]
    assert Path(decode["lm"]) == lm and 0 <= decode["alpha"] <= 2 and 0 <= decode["beta"] <= 16, decode
    assert not (exp / "tune.json").exists()
    for split in ("dev", "test"):
        report = json.loads((exp / "decode" / "lm" / f"{split}.json").read_text(encoding="utf-8"))
        assert Path(report["decoding"]["lm"]) == lm and report["decoding"]["alpha"] == decode["alpha"], report
        assert report["manifest"] == str(data / f"{split}.jsonl")
        assert json.loads((exp / f"{split}.report.json").read_text(encoding="utf-8"))["decoding"] == "greedy"
    scores = (exp / "scores_lm.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split(":")[0] for line in scores] == ["dev lm", "test lm"], scores
    assert all(re.search(r": WER \d+\.\d+%  CER .*LM alpha", line) for line in scores), scores

    again = run_recipe(FSDD_SCRIPT, *args, "--stage", "4").stdout
    assert f"[stage 4] skip: {lm} exists" in again and f"[stage 5] skip: {tuned} exists" in again, again
    assert f"skip: {exp}/decode/lm/dev.txt exists" in again and "evaluate" not in again, again
    assert (exp / "scores_lm.txt").read_text(encoding="utf-8").splitlines() == scores


@pytest.mark.slow
def test_an4_recipe_on_a_miniature(tmp_path: Path) -> None:
    """Stages 0-2 (prepare, check, train), then 4-5 (decode, score) without an LM; a rerun skips them all."""
    corpus = make_an4(tmp_path / "corpus") / "an4"
    data, exp = tmp_path / "data", tmp_path / "exp"
    script = RECIPES / "an4" / "run.sh"
    args = ["--an4-dir", str(corpus), "--dev-speakers", "1", "--data", str(data), "--exp", str(exp),
            "--workers", "1", "--device", "cpu", "--no-lm", *TINY_SETS]
    first = run_recipe(script, *args, "--stop-stage", "2")
    assert "some inputs were left out, see" in first.stderr  # broken entries: exit 3 = partial
    assert {p.name for p in data.glob("*.jsonl")} == {"train.jsonl", "dev.jsonl", "test.jsonl"}
    assert len(_lines(data / "train.jsonl")) + len(_lines(data / "dev.jsonl")) == 5
    assert "train: " in (data / "summary.txt").read_text(encoding="utf-8")
    assert (exp / ".done").is_file() and (exp / "last.pt").is_file()

    run_recipe(script, *args, "--stage", "4")
    scores = (exp / "scores.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split(":")[0] for line in scores] == ["dev nolm", "test nolm"], scores
    assert all(re.search(r": WER \d+\.\d+%  CER", line) for line in scores), scores

    again = run_recipe(script, *args).stdout
    for stage in range(5):
        assert re.search(rf"\[stage {stage}\] skip", again), again
    assert (exp / "scores.txt").read_text(encoding="utf-8").splitlines() == scores


@pytest.mark.slow
def test_librispeech_recipe_prepares_subsets_one_at_a_time(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for subset in ("dev-clean", "train-clean-100", "train-clean-360"):
        make_librispeech(corpus, subset)
    data = tmp_path / "data"
    script = RECIPES / "librispeech" / "run.sh"
    args = ["--corpus-dir", str(corpus), "--data", str(data), "--stop-stage", "1", "--workers", "1"]
    run_recipe(script, *args, "--subsets", "dev-clean,train-clean-100")
    train = _lines(data / "train.jsonl")
    assert train == _lines(data / "train-clean-100.jsonl") and _lines(data / "dev.jsonl") == _lines(
        data / "dev-clean.jsonl")
    assert (data / "skipped.dev-clean.tsv").is_file() and (data / "skipped.train-clean-100.tsv").is_file()
    out = run_recipe(script, *args, "--subsets", "dev-clean,train-clean-100,train-clean-360").stdout
    assert "/.dev-clean.done exists" in out and "/.train-clean-100.done exists" in out
    assert "prepare LibriSpeech train-clean-360" in out
    assert len(_lines(data / "train.jsonl")) == 2 * len(train)
    summary = (data / "summary.txt").read_text(encoding="utf-8")
    assert summary.splitlines()[0].startswith("dev-clean: ") and "train-clean-360: " in summary
    bad = subprocess.run(["bash", str(script), *args, "--subsets", "dev-clean,clean-100"], capture_output=True,
                         text=True, env=_env())
    assert bad.returncode == 2 and "unknown subset clean-100" in bad.stderr


@pytest.mark.slow
def test_librispeech_recipe_on_mini_librispeech_holds_out_dev_speakers(tmp_path: Path) -> None:
    corpus, data = tmp_path / "corpus", tmp_path / "data"
    make_librispeech(corpus, "train-clean-5")
    script = RECIPES / "librispeech" / "run.sh"
    out = run_recipe(script, "--corpus-dir", str(corpus), "--data", str(data), "--stop-stage", "1", "--workers", "1",
                     "--subsets", "train-clean-5", "--dev-speakers", "174").stdout
    assert {r["speaker"] for r in _lines(data / "dev.jsonl")} == {"174"}
    assert _lines(data / "dev.jsonl") == _lines(data / "dev-heldout.jsonl")
    assert {r["speaker"] for r in _lines(data / "train.jsonl")} == {"84"}
    assert "dev-heldout: 2 utterances" in out and "train-clean-5: 2 utterances" in out


# A stand-in for an `asrkit` that has `lm build`, `tune`, `average` and `evaluate --lm`: it logs its arguments,
# writes the files the real one would (the LM's .bin, tune's --out, `average EXP --best N`'s
# EXP/averaged-best<N>.pt) and prints an evaluate line. `config show` (how the recipes read their conf) is the
# real command's answer.
STUB_ASRKIT = r"""#!/usr/bin/env bash
echo "$*" >> "$ASRKIT_STUB_LOG"
if [ "${*: -1}" = --help ]; then echo "  --lm  --decode-params  --greedy  --device  --weight-range"; exit 0; fi
if [ "$1 $2" = "config show" ]; then exec "$ASRKIT_STUB_PYTHON" -m asrkit "$@"; fi
out=; prev=
for a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done
case "$1 $2" in
  "lm build") mkdir -p "$(dirname "$out")"; touch "$out.bin" ;;
  "tune "*) echo '{"decode": {}}' > "${out:-$(dirname "$2")/tune.json}" ;;
  "average "*) touch "$2/averaged-best$4.pt" ;;
  "evaluate "*) echo "WER 12.50%  CER 5.00%  (2 utterances; report r.json)" ;;
esac
"""


def stub_recipe_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                     stub: str = STUB_ASRKIT) -> tuple[Path, Path, Path, Path]:
    """A stub `asrkit` (logging its calls) in bin/, data/ with train/dev/test manifests of one line of `text`,
    exp/ with a checkpoint: (bin, data, exp, call log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "asrkit").write_text(stub)
    (bin_dir / "asrkit").chmod(0o755)
    data, exp, log = tmp_path / "data", tmp_path / "exp", tmp_path / "calls.log"
    data.mkdir()
    exp.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.jsonl").write_text(json.dumps({"id": "a", "text": text}) + "\n")
    (exp / "last.pt").touch()
    monkeypatch.setenv("ASRKIT_STUB_LOG", str(log))
    monkeypatch.setenv("ASRKIT_STUB_PYTHON", sys.executable)
    return bin_dir, data, exp, log


def stub_calls(log: Path) -> list[str]:
    """The stub's logged calls that do work: without the `--help` probes and the `config show` look-ups."""
    return [c for c in log.read_text().splitlines() if not c.endswith("--help") and not c.startswith("config show")]


@pytest.mark.parametrize(("model", "sets", "ctc"), [("deepspeech2", [], True), ("las", [], False),
                                                   ("transducer", [], False),
                                                   ("deepspeech2", ["--set", "train.lr=0.01"], True)],
                         ids=["deepspeech2", "las", "transducer", "deepspeech2-set"])
def test_an4_lm_and_decode_stages_call_the_cli(tmp_path: Path, model: str, sets: list[str], ctc: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages 3-5 against a stub asrkit whose CLI has `lm build`, `tune` and `evaluate --lm`: the word LM is
    built from train.jsonl, tuned on dev and used by CTC models (alpha / beta) and transducers (fused into the
    beam, tune's own grid), not by LAS (the model family of the conf and the --set overrides, as `asrkit config
    show` resolves it)."""
    bin_dir, data, exp, log = stub_recipe_dirs(tmp_path, monkeypatch, "yes")
    out = run_recipe(RECIPES / "an4" / "run.sh", "--stage", "3", "--model", model, "--data", str(data), "--exp",
                     str(exp), "--device", "cpu", *sets, bin_dir=bin_dir).stdout
    calls = stub_calls(log)
    asked = " ".join(["config show", f"conf/{model}.toml", *sets, "--key model.family"])
    assert asked in log.read_text().splitlines()
    lm = data / "lm" / "train_3gram"
    assert calls[0] == f"lm build {data}/train.jsonl --out {lm} --order 3"
    evaluations = [c for c in calls if c.startswith("evaluate ")]
    scores = (exp / "scores.txt").read_text().splitlines()
    if model != "las":
        tuned = exp / "decode" / "lm_tune.json"
        assert calls[1] == f"tune {exp} {data}/dev.jsonl --lm {lm}.bin --out {tuned} --device cpu --no-progress"
        assert len(evaluations) == 4 and evaluations[-1].endswith(f"--decode-params {tuned}")
        assert [line.split(":")[0] for line in scores] == ["dev nolm", "test nolm", "dev lm", "test lm"]
        assert evaluations[0].endswith("--greedy") == ctc  # a transducer's nolm row: its conf's own search
    else:  # LAS: no LM in the recipe (tuning would also search its CTC weight); it decodes as its conf says
        assert len(evaluations) == 2 and not any("--greedy" in c or "--lm" in c for c in evaluations)
        assert [line.split(":")[0] for line in scores] == ["dev nolm", "test nolm"]
        assert f"not using {lm}.bin: the recipe decodes CTC and transducer models with the LM (this is las" in out
    assert all(line.endswith("WER 12.50%  CER 5.00%  (2 utterances; report r.json)") for line in scores)


@pytest.mark.parametrize(("conf", "sets", "epochs", "k"),
                         [("conf/conformer_ctc_cpu.toml", [], 7, 5),
                          ("conf/deepspeech2.toml", ["--set", "train.keep_epochs=3"], 3, 3),
                          ("conf/deepspeech2.toml", ["--set", "train.keep_epochs=4"], 2, 2)],
                         ids=["keep10", "keep3-set", "keep4-two-kept"])
def test_decode_stage_decodes_the_averaged_checkpoint(tmp_path: Path, conf: str, sets: list[str], epochs: int,
                                                      k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conf that keeps epoch checkpoints (train.keep_epochs > 0): stage 4 first averages the K = min(5,
    keep_epochs, kept) with the lowest dev WER into EXP/averaged-best<K>.pt, then tunes and decodes that file, not
    EXP's best.pt; a rerun keeps the average."""
    bin_dir, data, exp, log = stub_recipe_dirs(tmp_path, monkeypatch, "yes")
    for epoch in range(1, epochs + 1):
        (exp / f"epoch-{epoch}.pt").touch()
    (data / "lm").mkdir()
    (data / "lm" / "train_3gram.bin").touch()
    args = ["--stage", "4", "--stop-stage", "4", "--conf", conf, "--data", str(data), "--exp", str(exp),
            "--device", "cpu", *sets]
    out = run_recipe(RECIPES / "an4" / "run.sh", *args, bin_dir=bin_dir).stdout
    averaged = exp / f"averaged-best{k}.pt"
    assert f"[stage 4] average the {k} epoch checkpoints of {exp} with the lowest dev WER -> {averaged}" in out, out
    assert f"[stage 4] decode the averaged checkpoint {averaged}" in out and f"instead of {exp}/best.pt" in out, out
    calls = stub_calls(log)
    tuned = exp / "decode" / "lm_tune.json"
    assert calls[0] == f"average {exp} --best {k}" and averaged.is_file()
    assert calls[1] == f"tune {averaged} {data}/dev.jsonl --lm {data}/lm/train_3gram.bin --out {tuned} --device cpu " \
        "--no-progress"
    evaluations = [c for c in calls if c.startswith("evaluate ")]
    assert len(evaluations) == 4 and all(c.startswith(f"evaluate {averaged} ") for c in evaluations), evaluations

    for f in (exp / "decode").glob("*/*.txt"):
        f.unlink()
    log.write_text("")
    out = run_recipe(RECIPES / "an4" / "run.sh", *args, bin_dir=bin_dir).stdout
    assert f"[stage 4] skip: {averaged} exists" in out, out
    calls = stub_calls(log)
    assert not any(c.startswith("average ") for c in calls) and calls[0].startswith(f"evaluate {averaged} "), calls


def test_decode_stage_without_kept_epoch_checkpoints_decodes_best_pt(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No train.keep_epochs in the conf: stage 4 decodes EXP (its best.pt) as before, averaging nothing, even with
    epoch checkpoints lying there; with keep_epochs but none kept, it says so and decodes EXP too."""
    bin_dir, data, exp, log = stub_recipe_dirs(tmp_path, monkeypatch, "yes")
    args = ["--stage", "4", "--stop-stage", "4", "--data", str(data), "--exp", str(exp), "--device", "cpu"]
    (exp / "epoch-1.pt").touch()
    out = run_recipe(RECIPES / "an4" / "run.sh", *args, bin_dir=bin_dir).stdout
    calls = stub_calls(log)
    assert "average" not in out and not any(c.startswith("average ") for c in calls), (out, calls)
    assert [c.split()[:2] for c in calls] == [["evaluate", str(exp)]] * 2, calls
    (exp / "epoch-1.pt").unlink()
    for f in (exp / "decode").glob("*/*.txt"):
        f.unlink()
    log.write_text("")
    out = run_recipe(RECIPES / "an4" / "run.sh", *args, "--set", "train.keep_epochs=5", bin_dir=bin_dir).stdout
    assert f"train.keep_epochs = 5, but no epoch checkpoints in {exp}: decoding {exp}/best.pt" in out, out
    assert [c.split()[:2] for c in stub_calls(log)] == [["evaluate", str(exp)]] * 2


def test_decode_stage_with_an_unreadable_conf_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conf (or --set) that `asrkit config show` rejects stops the decode stage with its message, exit 2."""
    bin_dir, data, exp, _ = stub_recipe_dirs(tmp_path, monkeypatch, "yes")
    bad = subprocess.run(["bash", str(RECIPES / "an4" / "run.sh"), "--stage", "4", "--data", str(data), "--exp",
                          str(exp), "--set", "model.nope=1"], capture_output=True, text=True, env=_env(bin_dir))
    assert bad.returncode == 2, bad.stderr
    assert "error: " in bad.stderr and "unknown config key model.nope" in bad.stderr  # the conf may be named
    assert "run.sh: cannot read model.family of conf/deepspeech2.toml" in bad.stderr


@pytest.mark.parametrize(("model", "family"), [("deepspeech2", "deepspeech2"), ("las", "las"),
                                               ("transducer", "transducer"), ("ds2", "deepspeech2"),
                                               ("rnnt", "transducer")])
def test_model_option_takes_the_family_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str,
                                             family: str) -> None:
    """--model is a [model] family: conf/<family>.toml (whose model.family it is) and exp/<family> by default. The
    old names ds2 and rnnt still work, mapped to the family with one note on stderr."""
    assert family in FAMILIES
    bin_dir, data, exp, log = stub_recipe_dirs(tmp_path, monkeypatch, "one two")
    note = [] if model == family else [f"note: --model {model} is now --model {family}"]
    # AN4's decode stage reads model.family of the conf --model picked (the stub asks the real asrkit)
    out = run_recipe(RECIPES / "an4" / "run.sh", "--stage", "4", "--stop-stage", "4", "--model", model, "--data",
                     str(data), "--exp", str(exp), "--device", "cpu", bin_dir=bin_dir)
    assert [line for line in out.stderr.splitlines() if line.startswith("note: ")] == note, out.stderr
    assert f"config show conf/{family}.toml --key model.family" in log.read_text().splitlines(), log.read_text()
    assert all(c.startswith(f"evaluate {exp} ") for c in stub_calls(log)), stub_calls(log)
    # FSDD's sample stage transcribes with the default exp/<family> (the stub writes nothing there)
    log.write_text("")
    out = run_recipe(FSDD_SCRIPT, "--stage", "3", "--stop-stage", "3", "--model", model, "--data", str(data),
                     "--device", "cpu", bin_dir=bin_dir)
    assert [line for line in out.stderr.splitlines() if line.startswith("note: ")] == note, out.stderr
    assert [c.split()[:4] for c in stub_calls(log)] == [["transcribe", f"exp/{family}", "--device", "cpu"]], \
        log.read_text()

def test_model_option_default_and_unknown_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --model a recipe uses deepspeech2 (conf/deepspeech2.toml, exp/deepspeech2); a name that is not a
    family nor an old alias exits 2 listing the valid ones, before any stage runs."""
    bin_dir, data, _, log = stub_recipe_dirs(tmp_path, monkeypatch, "one two")
    out = run_recipe(FSDD_SCRIPT, "--stage", "3", "--stop-stage", "3", "--data", str(data), "--device", "cpu",
                     bin_dir=bin_dir)
    assert "note: " not in out.stderr and stub_calls(log)[0].startswith("transcribe exp/deepspeech2 "), log.read_text()
    log.write_text("")
    for script in RUN_SCRIPTS:
        for name in ("rnn", "DS2", "conformer"):
            bad = subprocess.run(["bash", str(script), "--model", name, "--data", str(data)], capture_output=True,
                                 text=True, env=_env(bin_dir))
            assert bad.returncode == 2, (script, name, bad.stderr)
            assert f"run.sh: --model {name}: choose deepspeech2, las or transducer" in bad.stderr, bad.stderr
    assert log.read_text() == ""


def _missing_kenlm_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """What `asrkit lm build` prints (then exit 2) where KenLM's lmplz is not installed."""
    with monkeypatch.context() as patch:
        patch.setattr(lm_build, "TOOL_DIR", tmp_path / "no-kenlm")
        patch.setenv("PATH", str(tmp_path / "no-kenlm"))
        with pytest.raises(AsrkitError) as err:
            lm_build.find_tool("lmplz")
    return f"error: {err.value}"


@pytest.mark.parametrize("kenlm", [True, False], ids=["kenlm", "no-kenlm"])
def test_fsdd_lm_stages_call_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kenlm: bool) -> None:
    """Stages 4-5 against the stub asrkit: the 4-gram of train.jsonl, alpha / beta tuned on dev over FSDD's
    ranges, dev and test decoded with them; where lmplz is missing both stages skip with a message, exit 0."""
    stub = STUB_ASRKIT
    if not kenlm:
        error = _missing_kenlm_error(tmp_path, monkeypatch)
        stub = stub.replace('  "lm build") ', f'  "lm build") echo {shlex.quote(error)} >&2; exit 2; ')
        assert stub != STUB_ASRKIT
    bin_dir, data, exp, log = stub_recipe_dirs(tmp_path, monkeypatch, "one two", stub)
    out = run_recipe(FSDD_SCRIPT, "--stage", "4", "--data", str(data), "--exp", str(exp), "--device", "cpu",
                     bin_dir=bin_dir).stdout
    calls = stub_calls(log)
    lm = data / "lm" / "train_4gram"
    assert calls[0] == f"lm build {data}/train.jsonl --out {lm} --order 4"
    if not kenlm:
        assert calls == calls[:1] and not (exp / "decode").exists(), calls
        assert "[stage 4] skip: KenLM's lmplz / build_binary not found" in out, out
        assert f"[stage 5] skip: no LM at {lm}.bin" in out, out
        return
    tuned = exp / "decode" / "lm_tune.json"
    assert calls[1] == (f"tune {exp} {data}/dev.jsonl --lm {lm}.bin --out {tuned} --device cpu --no-progress "
                        "--alpha-range 0,2 --beta-range 0,16")
    assert calls[2:] == [f"evaluate {exp} {data}/{split}.jsonl --report {exp}/decode/lm/{split}.json --device cpu "
                         f"--decode-params {tuned}" for split in ("dev", "test")]
    scores = (exp / "scores_lm.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in scores] == ["dev lm", "test lm"], scores
