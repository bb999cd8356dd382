"""recipes/an4/run_best.sh, the best AN4 models in one command, against a stub asrkit: the trainings chain (each
--init from the one before: AN4 CTC best.pt -> Mini LibriSpeech + AN4 CTC, averaged -> AN4 transducer; and from
that average -> Mini LibriSpeech + AN4 transducer, averaged -> its AN4 fine-tuning), a rerun trains nothing
again, and a missing LibriSpeech folder or checkpoint stops with a message."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_recipes import RECIPES, STUB_ASRKIT, _env, run_recipe, stub_calls, stub_recipe_dirs

SCRIPT = RECIPES / "an4" / "run_best.sh"
# the stub's `train` leaves what a training leaves (best.pt, last.pt), its `average --out` the averaged file
STUB = STUB_ASRKIT.replace('case "$1 $2" in', """exp=; prev=
for a in "$@"; do [ "$prev" = --exp ] && exp=$a; prev=$a; done
if [ "$1" = train ]; then mkdir -p "$exp"; touch "$exp/best.pt" "$exp/last.pt"; fi
if [ "$1" = average ] && [ -n "$out" ]; then touch "$out"; fi
case "$1 $2" in""", 1)


def chain_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The stub asrkit and AN4 manifests of test_recipes (marked prepared), Mini LibriSpeech manifests (their
    prepare stage skips too), an empty corpus folder and the experiment folder."""
    bin_dir, an4, exp, log = stub_recipe_dirs(tmp_path, monkeypatch, "yes", stub=STUB)
    (an4 / ".done").touch()
    ls = tmp_path / "lsdata"
    ls.mkdir()
    (ls / ".train-clean-5.done").touch()
    for name in ("train-clean-5", "dev-heldout"):
        (ls / f"{name}.jsonl").write_text(json.dumps({"id": "a", "text": "yes"}) + "\n")
    (tmp_path / "corpus").mkdir()
    return {"bin": bin_dir, "an4": an4, "ls": ls, "corpus": tmp_path / "corpus", "exp": exp, "log": log}


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    return chain_dirs(tmp_path, monkeypatch)


def args(d: dict[str, Path]) -> list[str]:
    return ["--librispeech-dir", str(d["corpus"]), "--data", str(d["an4"]), "--ls-data", str(d["ls"]),
            "--exp-dir", str(d["exp"])]


def test_trainings_each_from_the_last(dirs: dict[str, Path]) -> None:
    d = dirs
    run_recipe(SCRIPT, *args(d), bin_dir=d["bin"])
    calls = stub_calls(d["log"])
    trains = [c for c in calls if c.startswith("train ")]
    ctc, joint, ct, lst, ft = (d["exp"] / n for n in (
        "conformer_ctc_cpu", "conformer_ctc_char_init_an4_ls", "conformer_transducer_init_ls",
        "conformer_transducer_init_an4_ls", "conformer_transducer_ft_ls"))
    assert len(trains) == 5, calls
    assert trains[0].startswith(f"train conf/conformer_ctc_cpu.toml --data {d['an4']} --exp {ctc} ")
    assert "--init" not in trains[0]
    assert trains[1].startswith(f"train conf/conformer_ctc_char_init_cpu.toml --data {d['ls']} --data {d['an4']} "
                                f"--exp {joint} "), trains[1]
    assert trains[1].endswith(f"--init {ctc}/best.pt")
    assert f"average {joint} --last 5 --out {joint}/averaged-last5.pt" in calls
    assert calls.index(f"average {joint} --last 5 --out {joint}/averaged-last5.pt") < calls.index(trains[2])
    assert trains[2].startswith(f"train conf/conformer_transducer_init_cpu.toml --data {d['an4']} --exp {ct} ")
    assert trains[2].endswith(f"--init {joint}/averaged-last5.pt")
    assert f"evaluate {ct}/best.pt {d['an4']}/dev.jsonl --greedy --report {ct}/decode/best_greedy_dev.json " \
           "--workers 1" in calls
    assert (ct / "scores.txt").is_file()  # AN4's decode and score stages ran on the transducer
    assert trains[3].startswith(f"train conf/conformer_transducer_init_cpu.toml --data {d['ls']} --data {d['an4']} "
                                f"--exp {lst} "), trains[3]
    assert "--set train.epochs=7" in trains[3] and trains[3].endswith(f"--init {joint}/averaged-last5.pt")
    assert calls.index(f"average {lst} --last 5 --out {lst}/averaged-last5.pt") < calls.index(trains[4])
    assert trains[4].startswith(f"train conf/conformer_transducer_ft_ls_cpu.toml --data {d['an4']} --exp {ft} ")
    assert trains[4].endswith(f"--init {lst}/averaged-last5.pt")
    tuned = ft / "decode" / "lm_tune.json"  # the 3-gram fused into the fine-tuned transducer's beam
    assert f"tune {ft} {d['an4']}/dev.jsonl --lm {d['an4']}/lm/train_3gram.bin --out {tuned} --device auto " \
           "--no-progress" in calls, [c for c in calls if c.startswith("tune ")]
    assert calls[-1].startswith(f"evaluate {ft}/best.pt {d['an4']}/dev.jsonl --greedy")
    assert [line.split(":")[0] for line in (ft / "scores.txt").read_text().splitlines()] == [
        "dev nolm", "test nolm", "dev lm", "test lm"]

    d["log"].unlink()
    run_recipe(SCRIPT, *args(d), bin_dir=d["bin"])  # a rerun: every training and the average are done
    again = stub_calls(d["log"])
    assert not [c for c in again if c.startswith(("train ", "average "))], again


def test_relative_paths_are_the_callers(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Options name folders relative to where run_best.sh is called from, not to recipes/an4."""
    d = dirs
    monkeypatch.chdir(d["exp"].parent)
    run_recipe(SCRIPT, "--librispeech-dir", "corpus", "--data", "data", "--ls-data", "lsdata", "--exp-dir", "exp",
               "--stop-stage", "1", bin_dir=d["bin"])
    (train,) = [c for c in stub_calls(d["log"]) if c.startswith("train ")]
    assert f"--data {d['an4']} --exp {d['exp']}/conformer_ctc_cpu " in train


def test_missing_inputs_stop_with_a_message(dirs: dict[str, Path]) -> None:
    d = dirs
    no_ls = [a for a in args(d) if a not in ("--librispeech-dir", str(d["corpus"]))]
    out = subprocess.run(["bash", str(SCRIPT), *no_ls, "--stage", "2"], capture_output=True, text=True,
                         env=_env(d["bin"]))
    assert out.returncode == 2 and "pass --librispeech-dir DIR" in out.stderr
    out = subprocess.run(["bash", str(SCRIPT), *args(d), "--stage", "2"], capture_output=True, text=True,
                         env=_env(d["bin"]))
    assert out.returncode == 2 and f"{d['exp']}/conformer_ctc_cpu/best.pt missing: run step 1 first" in out.stderr
    out = subprocess.run(["bash", str(SCRIPT), *args(d), "--stage", "3"], capture_output=True, text=True,
                         env=_env(d["bin"]))
    assert out.returncode == 2 and "averaged-last5.pt missing: run step 2 first" in out.stderr
    out = subprocess.run(["bash", str(SCRIPT), *args(d), "--stage", "5"], capture_output=True, text=True,
                         env=_env(d["bin"]))
    assert out.returncode == 2 and "conformer_transducer_init_an4_ls/averaged-last5.pt missing: run step 4 first" \
        in out.stderr
    assert not d["log"].exists() or not [c for c in stub_calls(d["log"]) if c.startswith("train ")]


def test_set_reaches_every_training(dirs: dict[str, Path]) -> None:
    d = dirs
    run_recipe(SCRIPT, *args(d), "--set", "train.num_workers=0", bin_dir=d["bin"])
    trains = [c for c in stub_calls(d["log"]) if c.startswith("train ")]
    assert len(trains) == 5 and all("--set train.num_workers=0" in c for c in trains), trains
    assert "--set train.epochs=7 --set train.num_workers=0" in trains[3]  # step 4's own override stays
