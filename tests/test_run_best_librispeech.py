"""recipes/librispeech/run_best.sh, the best English model in one command, against a stub asrkit: five trainings
each from the one before (AN4 CTC -> Mini LibriSpeech + AN4 CTC -> three transducer cycles, each from the mean of
the last one's final epochs), then the LM, the tuning of its fusion and the decodes; a rerun trains nothing again;
a missing input stops with a message naming the step that makes it; step 6 builds the 4-gram from books."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_recipes import RECIPES, _env, run_recipe, stub_calls
from test_run_best import STUB, chain_dirs

SCRIPT = RECIPES / "librispeech" / "run_best.sh"


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    d = chain_dirs(tmp_path, monkeypatch)
    d["lm"] = tmp_path / "books_4gram.bin"
    d["lm"].touch()
    return d


def args(d: dict[str, Path], *more: str) -> list[str]:
    return ["--librispeech-dir", str(d["corpus"]), "--an4-data", str(d["an4"]), "--data", str(d["ls"]),
            "--exp-dir", str(d["exp"]), *more]


def fails(d: dict[str, Path], *argv: str) -> str:
    """run_best.sh's standard error; it must exit 2."""
    out = subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True, env=_env(d["bin"]))
    assert out.returncode == 2, (out.stdout, out.stderr)
    return out.stderr


def test_the_chain_and_its_decodes(dirs: dict[str, Path]) -> None:
    d = dirs
    run_recipe(SCRIPT, *args(d, "--lm", str(d["lm"]), "--set", "train.num_workers=0"), bin_dir=d["bin"])
    calls = stub_calls(d["log"])
    trains = [c for c in calls if c.startswith("train ")]
    ctc, joint, c1, c2, c3 = (d["exp"] / n for n in (
        "conformer_ctc_cpu", "conformer_ctc_char_init_an4_ls", "conformer_transducer_init_an4_ls",
        "conformer_transducer_cont_an4_ls", "conformer_transducer_cont2_an4_ls"))
    assert len(trains) == 5, calls
    assert all("--set train.num_workers=0" in t for t in trains), trains
    assert trains[0].startswith(f"train conf/conformer_ctc_cpu.toml --data {d['an4']} --exp {ctc} ")
    assert trains[1].startswith(f"train conf/conformer_ctc_char_init_cpu.toml --data {d['ls']} --data {d['an4']} "
                                f"--exp {joint} ") and trains[1].endswith(f"--init {ctc}/best.pt")
    assert trains[2].startswith(f"train conf/conformer_transducer_init_cpu.toml --data {d['ls']} --data {d['an4']} "
                                f"--exp {c1} ") and trains[2].endswith(f"--init {joint}/averaged-last5.pt")
    assert "--set train.epochs=7" in trains[2]
    for train, conf, exp, init in ((trains[3], "conformer_transducer_cont_cpu", c2, f"{c1}/averaged-last5.pt"),
                                   (trains[4], "conformer_transducer_cont2_cpu", c3, f"{c2}/averaged-last4.pt")):
        assert train.startswith(f"train conf/{conf}.toml --data {d['ls']} --data {d['an4']} --exp {exp} "), train
        assert train.endswith(f"--init {init}") and "train.epochs" not in train
        # each cycle starts from the mean written after the cycle before, not from its last epoch
        assert calls.index(f"average {Path(init).parent} --last {init[-4]} --out {init}") < calls.index(train)
    model = c3 / "averaged-last5.pt"
    assert f"average {c3} --last 5 --out {model}" in calls
    decodes = calls[calls.index(f"average {c3} --last 5 --out {model}") + 1:]
    assert decodes == [
        f"evaluate {model} {d['ls']}/dev.jsonl --report {c3}/decode/beam8_dev.json --workers 1 --beam-size 8",
        f"evaluate {model} {d['an4']}/dev.jsonl --report {c3}/decode/beam8_an4_dev.json --workers 1 --beam-size 8",
        f"tune {model} {d['ls']}/dev.jsonl --lm {d['lm']} --weight-range 0.4,0.8 --bonus-range 1.5,2.5 --steps 3 "
        "--beam-size 8 --no-progress",
        f"evaluate {model} {d['ls']}/dev.jsonl --report {c3}/decode/lm_dev.json --workers 1"], decodes
    assert (c3 / "tune.json").is_file()  # beside the model, where evaluate and transcribe read it
    assert [line.split(":")[0] for line in (c3 / "scores.txt").read_text().splitlines()] == [
        "beam8_dev", "beam8_an4_dev", "lm_dev"]

    d["log"].unlink()
    run_recipe(SCRIPT, *args(d, "--lm", str(d["lm"])), bin_dir=d["bin"])  # a rerun: all done
    again = stub_calls(d["log"]) if d["log"].exists() else []
    assert not [c for c in again if c.startswith(("train ", "average ", "tune ", "evaluate "))], again


def test_missing_inputs_name_the_step_that_makes_them(dirs: dict[str, Path]) -> None:
    d = dirs
    no_ls = [a for a in args(d) if a not in ("--librispeech-dir", str(d["corpus"]))]
    assert "pass --librispeech-dir DIR" in fails(d, *no_ls, "--stage", "4")
    assert f"{d['exp']}/conformer_transducer_init_an4_ls/averaged-last5.pt missing: run step 3 first" in \
        fails(d, *args(d), "--stage", "4")
    assert "conformer_transducer_cont_an4_ls/averaged-last4.pt missing: run step 4 first" in \
        fails(d, *args(d), "--stage", "5")
    assert "pass --gutenberg SRC" in fails(d, *no_ls, "--stage", "6")
    assert "conformer_transducer_cont2_an4_ls/averaged-last5.pt missing: run step 5 first" in \
        fails(d, *no_ls, "--stage", "7", "--lm", str(d["lm"]))
    # a model but no LM: tune needs step 6's
    (d["exp"] / "conformer_transducer_cont2_an4_ls").mkdir()
    (d["exp"] / "conformer_transducer_cont2_an4_ls" / "averaged-last5.pt").touch()
    (d["ls"] / "dev.jsonl").write_text(json.dumps({"id": "a", "text": "yes"}) + "\n")
    assert f"{d['ls']}/lm/books_nodev_4gram.bin missing: run step 6 first" in fails(d, *no_ls, "--stage", "7")
    assert not d["log"].exists() or not [c for c in stub_calls(d["log"]) if c.startswith(("train ", "tune "))]
    assert "unknown option --bogus" in fails(d, "--bogus")


BOOK = """The Project Gutenberg eBook of {title}

Title: {title}

*** START OF THE PROJECT GUTENBERG EBOOK A SHORT WALK ***

CHAPTER I

It was a fine morning when we set out from the house, and the sun was already high over the hills. My sister
said that she would rather stay at home with the dogs, but I would not hear of it.

We walked for a long time along the river, and at last we came to the old mill where the miller and his wife had
lived for many years.

"Mr. Brown is not at home," said the girl at the door.

*** END OF THE PROJECT GUTENBERG EBOOK A SHORT WALK ***
"""


def test_step_6_builds_the_4gram_from_books(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """make_lm_text.sh for real (the books' text, normalised, without the held-out books; KenLM's perplexities), the
    real `asrkit lm overlap` and `lm build` (KenLM's lmplz)."""
    d = dirs
    stub = d["bin"] / "asrkit"
    stub.write_text(STUB.replace('if [ "$1 $2" = "config show" ]', 'if [ "$1" = lm ] || [ "$1 $2" = "config show" ]'))
    books = d["exp"].parent / "books"
    books.mkdir()
    (books / "A Short Walk.txt").write_text(BOOK.format(title="A Short Walk"))
    # a held-out chapter's book (speaker 2136 reads Uncle Silas): every edition of it goes
    (books / "Uncle Silas.txt").write_text(BOOK.format(title="Uncle Silas").replace("river", "lake"))
    (d["ls"] / "dev.jsonl").write_text(json.dumps({"id": "a", "text": "it was a fine morning"}) + "\n")
    monkeypatch.setenv("PYTHON", sys.executable)
    no_ls = [a for a in args(d) if a not in ("--librispeech-dir", str(d["corpus"]))]
    run_recipe(SCRIPT, *no_ls, "--gutenberg", str(books), "--stage", "6", "--stop-stage", "6", bin_dir=d["bin"])
    lm_dir = d["ls"] / "lm"
    text = (lm_dir / "books.txt").read_text().splitlines()
    assert "we walked for a long time along the river and at last we came to the old mill where the miller and his " \
           "wife had lived for many years" in text
    assert "mister brown is not at home said the girl at the door" in text
    assert not [line for line in text if "chapter" in line or "gutenberg" in line]
    kept = (lm_dir / "books_nodev.txt").read_text()
    assert "along the river" in kept and "along the lake" not in kept
    calls = stub_calls(d["log"])
    assert f"lm overlap {lm_dir}/books_nodev.txt {d['ls']}/dev.jsonl" in calls
    assert f"lm build {lm_dir}/books_nodev.txt --out {lm_dir}/books_nodev_4gram --order 4 --prune 0,1,1,1 " \
           f"--memory 6G --trie --exclude {d['ls']}/dev.jsonl" in calls
    assert (lm_dir / "books_nodev_4gram.bin").is_file()
    d["log"].unlink()
    run_recipe(SCRIPT, *no_ls, "--gutenberg", str(books), "--stage", "6", "--stop-stage", "6", bin_dir=d["bin"])
    assert not d["log"].exists() or not [c for c in stub_calls(d["log"]) if c.startswith("lm ")]  # built once
