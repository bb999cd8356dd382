"""Several corpora in one training run: `asrkit train --data A --data B` trains on the union of their train.jsonl,
scores dev on the union of their dev.jsonl (and per corpus), prefixes utterance ids only when corpora share one,
refuses a --resume with other --data folders, and recipes/an4/run.sh --extra-data passes more --data to training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FSDD_ASSETS
from test_recipes import RECIPES, run_recipe, stub_calls, stub_recipe_dirs
from typer.testing import CliRunner

from asrkit.cli import app
from asrkit.config import build_config
from asrkit.errors import AsrkitError
from asrkit.experiment import load_data
from asrkit.train import fit

# One optimiser step per epoch (each corpus's few utterances fit one batch), seconds of CPU.
TINY = {
    "model": {"conv_layers": 1, "conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 32},
    "features": {"n_mels": 40, "spec_augment": False},
    "train": {"epochs": 2, "max_steps": 2, "lr": 3e-3, "warmup_steps": 2, "batch_seconds": 20.0,
              "num_workers": 0, "save_every_steps": 0, "seed": 3},
}
TINY_SETS = [arg for section, keys in TINY.items() for key, value in keys.items()
             for arg in ("--set", f"{section}.{key}={json.dumps(value)}")]


def _corpus(root: Path, name: str, words: dict[str, str]) -> Path:
    """`asrkit prepare folder` of FSDD recordings ({file stem: FSDD file}) whose transcript is the stem's word;
    its train.jsonl copied to dev.jsonl. The utterance ids are the stems."""
    audio = root / f"{name}-audio"
    audio.mkdir(parents=True)
    for stem, wav in words.items():
        shutil.copy(FSDD_ASSETS / wav, audio / f"{stem}.wav")
        (audio / f"{stem}.txt").write_text(stem.split("_")[0].upper() + "\n")
    data = root / name
    result = CliRunner().invoke(app, ["prepare", "folder", str(audio), str(data), "--name", "train"])
    assert result.exit_code == 0, result.output
    shutil.copy(data / "train.jsonl", data / "dev.jsonl")
    return data


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """a: "zero", "one"; b: "two", "three" (letters a lacks: t, w, h); c: "one" too (an id a also has)."""
    root = tmp_path_factory.mktemp("corpora")
    return {"a": _corpus(root, "a", {"zero": "0_jackson_5.wav", "one": "1_jackson_5.wav"}),
            "b": _corpus(root, "b", {"two": "2_jackson_5.wav", "three": "3_jackson_5.wav"}),
            "c": _corpus(root, "c", {"one": "1_lucas_5.wav", "one_more": "1_theo_5.wav"})}


def test_training_uses_the_union_and_scores_dev_per_corpus(corpora: dict[str, Path], tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    result = CliRunner().invoke(app, ["train", "--data", str(corpora["a"]), "--data", str(corpora["b"]),
                                      "--exp", str(exp), "--no-progress", *TINY_SETS])
    assert result.exit_code == 0, result.output
    assert "training on 2 corpora: a (2 train, 2 dev), b (2 train, 2 dev); 4 train, 4 dev utterances in all" \
        in result.output
    assert "prefixed" not in result.output  # no id is shared: the ids stay as they are
    assert "dev WER" in result.output and " (a " in result.output and ", b " in result.output
    state = torch.load(exp / "last.pt", weights_only=True)
    chars = set(state["tokenizer"]["chars"])
    assert {"z", "w", "h"} <= chars  # "z" only in a, "w" and "h" only in b
    assert state["train"]["data"] == [str(corpora["a"].resolve()), str(corpora["b"].resolve())]
    history = [json.loads(line) for line in (exp / "history.jsonl").read_text().splitlines()]
    assert history  # max_steps stops inside epoch 2: one epoch scored
    for record in history:  # dev_wer stays the overall value; the per-corpus ones are under their own keys
        assert isinstance(record["dev_wer"], float) and isinstance(record["dev_cer"], float)
        assert set(record["dev_wer_by_corpus"]) == set(record["dev_cer_by_corpus"]) == {"a", "b"}


def test_one_corpus_history_is_unchanged(corpora: dict[str, Path], tmp_path: Path) -> None:
    cfg = build_config({**TINY, "train": {**TINY["train"], "epochs": 1, "max_steps": 0}})
    result = fit(cfg, corpora["b"], tmp_path / "exp", progress=False)
    assert set(result.history[0]) == {"epoch", "step", "dev_wer", "dev_cer", "dev_loss"}  # no per-corpus keys


def test_shared_ids_are_prefixed_with_the_corpus_name(corpora: dict[str, Path]) -> None:
    plain = load_data([corpora["a"], corpora["b"]])
    assert sorted(u.id for u in plain.train) == ["one", "three", "two", "zero"]
    data = load_data([corpora["a"], corpora["c"]])
    assert sorted(u.id for u in data.train) == ["a/one", "a/zero", "c/one", "c/one_more"]
    assert sorted(u.id for u in data.dev) == sorted(u.id for u in data.train)
    assert data.dev_corpus["c/one"] == "c"
    note = data.notes[-1]
    assert "'one'" in note and str(corpora["a"] / "train.jsonl") in note and str(corpora["c"] / "train.jsonl") in note
    assert "prefixed with its corpus name" in note


def test_shared_ids_train_with_a_printed_note(corpora: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = build_config({**TINY, "train": {**TINY["train"], "epochs": 1, "max_steps": 0}})
    result = fit(cfg, [corpora["a"], corpora["c"]], tmp_path / "exp", progress=False)
    assert result.steps == 1
    err = capsys.readouterr().err
    assert "every utterance id is prefixed with its corpus name" in err
    assert "(a " in err and ", c " in err  # dev WER per corpus


def test_folders_with_the_same_name_are_told_apart(corpora: dict[str, Path], tmp_path: Path) -> None:
    for parent in ("x", "y"):
        shutil.copytree(corpora["a" if parent == "x" else "b"], tmp_path / parent / "data")
    data = load_data([tmp_path / "x" / "data", tmp_path / "y" / "data"])
    assert [c.name for c in data.corpora] == ["x/data", "y/data"]


def test_resume_needs_the_same_data_list(corpora: dict[str, Path], tmp_path: Path) -> None:
    first = build_config({**TINY, "train": {**TINY["train"], "max_steps": 1}})
    exp = tmp_path / "exp"
    fit(first, [corpora["a"], corpora["b"]], exp, progress=False)
    cfg = build_config(TINY)
    for other in ([corpora["a"]], [corpora["b"], corpora["a"]], [corpora["a"], corpora["b"], corpora["c"]]):
        with pytest.raises(AsrkitError, match="--resume: the checkpoint was trained on --data .*same --data folders"):
            fit(cfg, other, exp, resume=True, progress=False)
    assert fit(cfg, [corpora["a"], corpora["b"]], exp, resume=True, progress=False).steps == 2


def test_resume_with_other_data_exits_2(corpora: dict[str, Path], tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    sets = [*TINY_SETS, "--set", "train.max_steps=1"]
    first = CliRunner().invoke(app, ["train", "--data", str(corpora["b"]), "--exp", str(exp), "--no-progress", *sets])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["train", "--data", str(corpora["b"]), "--data", str(corpora["a"]), "--exp",
                                     str(exp), "--no-progress", "--resume", *TINY_SETS])
    assert again.exit_code == 2, again.output
    assert "error: --resume: the checkpoint was trained on" in again.output
    assert str(corpora["a"].resolve()) in again.output


def test_missing_folder_is_an_error_naming_it(corpora: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-corpus"
    result = CliRunner().invoke(app, ["train", "--data", str(corpora["a"]), "--data", str(missing), "--exp",
                                      str(tmp_path / "exp"), *TINY_SETS])
    assert result.exit_code == 2, result.output
    assert f"--data {missing}: folder not found" in result.output
    assert not (tmp_path / "exp").exists()  # refused before any work


def test_bad_data_values_are_errors(corpora: dict[str, Path]) -> None:
    with pytest.raises(AsrkitError, match="given twice"):
        load_data([corpora["a"], corpora["b"], corpora["a"] / ".." / "a"])
    with pytest.raises(AsrkitError, match=r"a file; --data takes the folder that holds train.jsonl"):
        load_data([corpora["a"] / "train.jsonl"])
    with pytest.raises(AsrkitError, match="no --data folder"):
        load_data([])


@pytest.mark.parametrize("recipe", ["an4", "librispeech", "fsdd"])
def test_recipe_extra_data_goes_to_training(recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, data, exp, log = stub_recipe_dirs(tmp_path, monkeypatch, "yes")
    extra = tmp_path / "extra"
    stage = "1" if recipe == "fsdd" else "2"  # FSDD trains in stage 1
    run_recipe(RECIPES / recipe / "run.sh", "--stage", stage, "--stop-stage", stage, "--data", str(data), "--exp",
               str(exp), "--extra-data", str(extra), "--extra-data", str(extra / "more"), bin_dir=bin_dir)
    [call] = [c for c in stub_calls(log) if c.startswith("train ")]
    assert f"--data {data} --data {extra} --data {extra / 'more'} --exp {exp}" in call
