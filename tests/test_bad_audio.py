"""Broken and odd audio files, made here, through every command: `prepare folder`, `train`, `transcribe` and
`evaluate`. For each file the command gives the right output, or an error naming the file and the reason while
it goes on with the rest; a summary line counts what was left out; the exit code is 0 when nothing was,
EXIT_PARTIAL (3) when something was."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FSDD_ASSETS
from typer.testing import CliRunner

from asrkit.cli import EXIT_OK, EXIT_PARTIAL, app
from asrkit.config import build_config
from asrkit.data.audio import resample
from asrkit.data.manifest import read_manifest
from asrkit.train import fit

WORDS = ["zero", "one", "two", "three"]
HOUR = "hour.flac"
UNICODE = "dir with space/ünïcödé 語.wav"
TINY_SETS = ["train.epochs=1", "model.conv_layers=1", "model.conv_channels=4",
             "model.rnn_layers=1", "model.rnn_hidden=32", "features.n_mels=40", "train.num_workers=0",
             "train.batch_seconds=3"]


@dataclass(frozen=True)
class Case:
    """One file of the corpus: its transcript, and what every command must say about it."""

    name: str  # path under the corpus folder
    text: str  # transcript, written beside it as a same-stem .txt
    reason: str = ""  # fragment of the per-file error; "" for a usable file


# Recordings of one FSDD speaker in other formats: every command must read them like the original.
GOOD = [
    Case("rate8k.wav", "zero"),  # FSDD's own 8 kHz 16-bit PCM
    Case("rate44k.wav", "one"),  # resampled to 44.1 kHz
    Case("stereo.wav", "two"),  # two identical channels
    Case("pcm24.wav", "three"),  # 24-bit PCM
    Case("float32.wav", "zero"),  # 32-bit float samples
    Case(UNICODE, "one"),  # spaces and non-ASCII characters in the path
]
SILENCE = Case("silence.wav", "two")  # a recording that came out as digital zeros: valid audio, no speech
TRUNCATED_WAV = Case("partial.wav", "three")  # a WAV cut short: libsndfile reads the samples that are there
BAD = [
    Case("truncated.flac", "two", "truncated or damaged"),  # a download cut short after the header
    Case("empty.wav", "one", "empty file (0 bytes)"),
    Case("no_frames.wav", "one", "audio has no samples"),  # a valid header and 0 frames
    Case("not_audio.wav", "one", "Format not recognised"),  # text with a .wav extension
]
MISSING = Case("missing.wav", "three", "file not found")  # listed in a manifest, gone from the disk


def _fsdd(digit: int) -> tuple[np.ndarray, int]:
    wave, sr = sf.read(str(FSDD_ASSETS / f"{digit}_jackson_5.wav"), dtype="float32")
    return wave, sr


def _write_corpus(root: Path) -> None:
    """Every case of GOOD, SILENCE, TRUNCATED_WAV, BAD and the 1-hour file, each with its .txt transcript."""
    (root / "dir with space").mkdir(parents=True)
    shutil.copy(FSDD_ASSETS / "0_jackson_5.wav", root / "rate8k.wav")
    wave, sr = _fsdd(1)
    sf.write(str(root / "rate44k.wav"), resample(torch.from_numpy(wave), sr, 44100).numpy(), 44100, subtype="PCM_16")
    wave, sr = _fsdd(2)
    sf.write(str(root / "stereo.wav"), np.stack([wave, wave], axis=1), sr, subtype="PCM_16")
    wave, sr = _fsdd(3)
    sf.write(str(root / "pcm24.wav"), wave, sr, subtype="PCM_24")
    wave, sr = _fsdd(0)
    sf.write(str(root / "float32.wav"), wave, sr, subtype="FLOAT")
    shutil.copy(FSDD_ASSETS / "1_jackson_5.wav", root / UNICODE)
    sf.write(str(root / "silence.wav"), np.zeros(16000, dtype=np.int16), 16000)
    wave, sr = _fsdd(3)
    sf.write(str(root / "whole.wav"), wave, sr, subtype="PCM_16")
    data = (root / "whole.wav").read_bytes()
    (root / TRUNCATED_WAV.name).write_bytes(data[: len(data) * 6 // 10])
    (root / "whole.wav").unlink()
    wave, sr = _fsdd(2)
    sf.write(str(root / "whole.flac"), wave, sr, format="FLAC")
    data = (root / "whole.flac").read_bytes()
    (root / "truncated.flac").write_bytes(data[: len(data) // 2])
    (root / "whole.flac").unlink()
    (root / "empty.wav").write_bytes(b"")
    sf.write(str(root / "no_frames.wav"), np.zeros(0, dtype=np.int16), 16000)
    (root / "not_audio.wav").write_text("these are meeting notes, not audio\n" * 20)
    _write_hour(root / HOUR)
    for case in [*GOOD, SILENCE, TRUNCATED_WAV, *BAD, Case(HOUR, "one two three")]:
        (root / case.name).with_suffix(".txt").write_text(case.text.upper() + "\n", encoding="utf-8")


def _write_hour(path: Path, seconds: int = 3600, sr: int = 16000) -> None:
    """One hour of faint noise as 16 kHz FLAC, a minute at a time: about a second and 12 MB."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", sr, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds // 60):
            f.write(rng.integers(-1, 2, 60 * sr).astype(np.int16))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-audio") / "corpus"
    _write_corpus(root)
    return root


@pytest.fixture(scope="module")
def prepared(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`asrkit prepare folder` over the corpus: (output folder, what the command printed)."""
    out = tmp_path_factory.mktemp("prepared")
    result = CliRunner().invoke(app, ["prepare", "folder", str(corpus), str(out), "--workers", "2"])
    assert "Traceback" not in result.output
    assert result.exit_code == EXIT_PARTIAL, result.output
    return out, result.output


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small DeepSpeech2 trained until it transcribes the four FSDD recordings the GOOD files are made from."""
    root = tmp_path_factory.mktemp("model")
    lines = [{"id": w, "audio_filepath": str(FSDD_ASSETS / f"{d}_jackson_5.wav"), "duration": 0.5, "text": w}
             for d, w in enumerate(WORDS)]
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = build_config({
        "model": {"conv_layers": 1, "conv_channels": 8, "rnn_layers": 2, "rnn_hidden": 64},
        "features": {"n_mels": 40, "spec_augment": False},
        "train": {"epochs": 40, "lr": 1e-2, "warmup_steps": 5, "anneal": 1.0, "batch_seconds": 10.0,
                  "num_workers": 0, "save_every_steps": 0, "seed": 7, "device": "cpu"},
    })
    fit(cfg, root / "data", root / "exp", progress=False)
    return root / "exp"


def _bad_lines(corpus: Path) -> list[dict]:
    """Manifest lines for the files prepare leaves out, and for one that does not exist."""
    return [{"id": Path(c.name).stem, "audio_filepath": str(corpus / c.name), "duration": 1.0, "text": c.text}
            for c in [*BAD, MISSING]]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_prepare_keeps_every_readable_file_and_names_every_other(corpus: Path, prepared: tuple[Path, str]) -> None:
    out, output = prepared
    manifest = read_manifest(out / "all.jsonl")
    utts = {Path(u.audio_filepath).relative_to(corpus.resolve()).as_posix(): u for u in manifest}
    kept = {c.name for c in [*GOOD, SILENCE, TRUNCATED_WAV]} | {HOUR}
    assert set(utts) == kept
    for case in [*GOOD, SILENCE, TRUNCATED_WAV]:
        assert utts[case.name].duration == pytest.approx(sf.info(str(corpus / case.name)).duration, abs=1e-3)
        assert utts[case.name].text == case.text
    assert utts[HOUR].duration == pytest.approx(3600.0)  # measured from the header, never decoded whole
    assert utts[TRUNCATED_WAV.name].duration < _fsdd(3)[0].shape[0] / 8000 * 0.7  # the samples present, not more
    unicode = utts[UNICODE]
    assert unicode.audio_filepath == str((corpus / UNICODE).resolve()) and unicode.id == "dir with space-ünïcödé 語"

    report = dict(line.split("\t", 1) for line in (out / "skipped.tsv").read_text(encoding="utf-8").splitlines()[1:])
    assert set(report) == {str(corpus / c.name) for c in BAD}
    for case in BAD:
        path = str(corpus / case.name)
        assert case.reason in report[path], (case, report[path])
        assert f"skipped {path}: {report[path]}" in output  # named on stderr too, while the run went on
    assert f"skipped {len(BAD)} input(s)" in output and f"all: {len(kept)} utterances" in output


@pytest.mark.slow
def test_train_skips_unreadable_and_overlong_utterances(corpus: Path, prepared: tuple[Path, str],
                                                        tmp_path: Path) -> None:
    """The prepared manifest (with the 1-hour file) plus the files prepare left out and a missing one."""
    out, _ = prepared
    rows = [u.to_json() for u in read_manifest(out / "all.jsonl")] + _bad_lines(corpus)
    _write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    exp = tmp_path / "exp"
    args = ["train", "--data", str(tmp_path / "data"), "--exp", str(exp), "--no-progress"]
    result = CliRunner().invoke(app, [*args, *(a for s in TINY_SETS for a in ("--set", s))])
    assert "Traceback" not in result.output
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert "steps, 1 epoch" in result.output and (exp / "last.pt").is_file()

    skipped = dict(line.split("\t", 1) for line in (exp / "skipped.tsv").read_text(encoding="utf-8").splitlines()[1:])
    assert set(skipped) == {"hour"} | {Path(c.name).stem for c in [*BAD, MISSING]}
    assert "3600.0 s is longer than train.max_duration = 60 s" in skipped["hour"]
    assert "skipping 1 training utterance(s) longer than train.max_duration = 60 s (hour)" in result.output
    for case in [*BAD, MISSING]:
        utt_id, path = Path(case.name).stem, str(corpus / case.name)
        assert path in skipped[utt_id] and case.reason in skipped[utt_id], (case, skipped[utt_id])
        assert f"skipping {utt_id}: {path}: " in result.output
    assert f"{len(skipped)} utterance(s) skipped" in result.output
    state = torch.load(exp / "last.pt", weights_only=True)["train"]
    assert state["epoch"] == 1 and state["nonfinite"] == 0  # a whole epoch, digital silence included, without NaN


@pytest.mark.slow
def test_transcribe_reads_every_format_and_names_every_broken_file(corpus: Path, model: Path) -> None:
    # The 1-hour file is left out here: the long-audio tests (tests/test_long_audio.py) cover it.
    inputs = [*GOOD, SILENCE, TRUNCATED_WAV, *BAD, MISSING]
    paths = [str(corpus / c.name) for c in inputs]
    result = CliRunner().invoke(app, ["transcribe", str(model), *paths, "--device", "cpu", "--greedy"])
    assert "Traceback" not in result.output
    assert result.exit_code == EXIT_PARTIAL, result.output
    got = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert set(got) == {str(corpus / c.name) for c in [*GOOD, SILENCE, TRUNCATED_WAV]}
    for case in GOOD:
        assert got[str(corpus / case.name)] == case.text, (case, got)
    # Digital silence is decoded like any audio (a line, no error); what a model says for input it never saw in
    # training (log-mel at the floor everywhere) is its own business, so the text itself is not checked.
    for case in [*BAD, MISSING]:
        assert f"error: {corpus / case.name}: " in result.stderr
        line = next(x for x in result.stderr.splitlines() if x.startswith(f"error: {corpus / case.name}: "))
        assert case.reason in line, line
    assert f"{len(BAD) + 1} of {len(inputs)} files failed" in result.stderr

    good_only = CliRunner().invoke(app, ["transcribe", str(model), *paths[: len(GOOD)], "--device", "cpu",
                                         "--greedy"])
    assert good_only.exit_code == EXIT_OK, good_only.output


@pytest.mark.slow
def test_evaluate_scores_the_readable_and_names_the_rest(corpus: Path, prepared: tuple[Path, str], model: Path,
                                                         tmp_path: Path) -> None:
    out, _ = prepared
    # The 1-hour file is left out here: the long-audio tests (tests/test_long_audio.py) cover it.
    rows = [u.to_json() for u in read_manifest(out / "all.jsonl") if u.duration < 60] + _bad_lines(corpus)
    manifest = _write_jsonl(tmp_path / "test.jsonl", rows)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["evaluate", str(model), str(manifest), "--report", str(report),
                                      "--device", "cpu", "--greedy"])
    assert "Traceback" not in result.output
    assert result.exit_code == EXIT_PARTIAL, result.output
    body = json.loads(report.read_text(encoding="utf-8"))
    scored = {u["id"]: u for u in body["utterances"]}
    assert len(scored) == len(GOOD) + 2  # GOOD, the silence and the truncated WAV
    for case in GOOD:
        utt_id = Path(case.name).with_suffix("").as_posix().replace("/", "-")
        assert scored[utt_id]["hyp"] == case.text and scored[utt_id]["word_errors"] == 0, scored[utt_id]
    failures = {f["path"]: f["reason"] for f in body["failures"]}
    assert set(failures) == {str(corpus / c.name) for c in [*BAD, MISSING]}
    for case in [*BAD, MISSING]:
        path = str(corpus / case.name)
        assert case.reason in failures[path] and f"error: {path}: {failures[path]}" in result.stderr
    assert f"{len(BAD) + 1} of {len(rows)} utterances failed" in result.stderr
    assert f"({len(scored)} utterances" in result.stdout
