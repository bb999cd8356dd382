"""Long recordings: cut at pauses, decoded in segments, stitched; the same transcript as decoding the pieces."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from asrkit.checkpoint import save_checkpoint
from asrkit.cli import app
from asrkit.config import build_config
from asrkit.data.audio import load_span
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AsrkitError, AudioError
from asrkit.evaluate import evaluate
from asrkit.longform import check_segment_seconds, find_cuts, split_long, stitch
from asrkit.models import build_model
from asrkit.records import Hypothesis, Utterance, WordTiming
from asrkit.search import SearchOptions
from asrkit.transcribe import transcribe

FSDD = Path(__file__).parent / "assets" / "fsdd" / "recordings"
SR = 8000  # FSDD's rate: the model resamples to 16 kHz
N_MELS = 40


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[float, float]]]:
    """~95 s of real connected digits (FSDD, 8 kHz) with 0.3-0.8 s pauses of faint noise, as FLAC; and the
    (start, end) seconds of every spoken digit."""
    rng = random.Random(0)
    files = sorted(FSDD.glob("*_jackson_*.wav")) + sorted(FSDD.glob("*_nicolas_*.wav"))
    rng.shuffle(files)
    noise = np.random.default_rng(0)
    parts, spoken, t = [], [], 0.0
    for f in files:
        if t > 95:
            break
        wave, sr = sf.read(f, dtype="float32")
        assert sr == SR
        pause = noise.normal(0, 1e-3, int(SR * rng.uniform(0.3, 0.8))).astype(np.float32)
        parts += [wave, pause]
        spoken.append((t, t + len(wave) / SR))
        t += (len(wave) + len(pause)) / SR
    path = tmp_path_factory.mktemp("long") / "long speech ü.flac"
    sf.write(path, np.concatenate(parts), SR)
    return path, spoken


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained but deterministic DeepSpeech2: enough to compare decoding a file whole and in pieces."""
    cfg = build_config({"model": {"rnn_hidden": 32, "rnn_layers": 2, "conv_channels": 4},
                        "features": {"n_mels": N_MELS}})
    tok = CharTokenizer.train(["zero one two three four five six seven eight nine"])
    feat = Featurizer(cfg.features)
    feat.fit_stats([0.05 * torch.randn(16000, generator=torch.Generator().manual_seed(0))])
    torch.manual_seed(0)
    net = build_model(cfg, N_MELS, len(tok.vocab))
    net.eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, config=cfg, tokenizer=tok, featurizer=feat, model=net)
    return path


def test_cuts_fall_in_pauses_and_cover_the_recording(long_speech: tuple[Path, list[tuple[float, float]]]) -> None:
    path, spoken = long_speech
    total = sf.info(path).duration
    spans, sr = find_cuts(path, 10.0)
    assert sr == SR
    assert len(spans) >= 10
    assert spans[0][0] == 0.0
    for (off, dur), (nxt, _) in zip(spans, spans[1:], strict=False):
        assert 5.0 <= dur <= 10.0 + 1e-9
        assert nxt == pytest.approx(off + dur)
        cut = off + dur
        inside = [(s, e) for s, e in spoken if s + 0.02 < cut < e - 0.02]
        assert not inside, f"cut at {cut:.2f} s falls inside the digit spoken at {inside[0]}"
    assert spans[-1][0] + spans[-1][1] == pytest.approx(total, abs=1e-3)


def test_load_span_reads_only_that_span(long_speech: tuple[Path, list[tuple[float, float]]]) -> None:
    path, _ = long_speech
    whole, _ = sf.read(path, dtype="float32")
    span = load_span(path, 12.5, 3.0, SR)
    assert torch.equal(span, torch.from_numpy(whole[100_000:124_000]))
    with pytest.raises(AudioError, match="past the end"):
        load_span(path, 10_000.0, 1.0, SR)


def test_stitch_shifts_timings_and_joins_text() -> None:
    parent = Utterance("rec", "rec.wav", 30.0, "", offset=0.0)
    parts = [(Utterance("rec@0.00", "rec.wav", 12.0, "", offset=0.0),
              Hypothesis("one two", (1, 2), -1.0, (WordTiming("one", 0.5, 0.9), WordTiming("two", 1.0, 1.4)))),
             (Utterance("rec@12.00", "rec.wav", 10.0, "", offset=12.0), Hypothesis("", (), -0.5, ())),
             (Utterance("rec@22.00", "rec.wav", 8.0, "", offset=22.0),
              Hypothesis("three", (3,), -2.0, (WordTiming("three", 0.2, 0.6),)))]
    hyp = stitch(parts, parent)
    assert hyp.text == "one two three"
    assert hyp.score == pytest.approx(-3.5)
    assert hyp.tokens == (1, 2, 3)
    assert [(w.word, w.start, w.end) for w in hyp.words] == [("one", 0.5, 0.9), ("two", 1.0, 1.4),
                                                              ("three", pytest.approx(22.2), pytest.approx(22.6))]


@pytest.mark.parametrize("decode", [None, SearchOptions(beam_size=4)], ids=["greedy", "beam"])
def test_long_file_equals_its_pieces_decoded_one_by_one(long_speech: tuple[Path, list[tuple[float, float]]],
                                                        model: Path, tmp_path: Path,
                                                        decode: SearchOptions | None) -> None:
    path, _ = long_speech
    whole, _ = sf.read(path, dtype="float32")
    spans, _ = find_cuts(path, 10.0)
    pieces = []
    for k, (off, dur) in enumerate(spans):
        piece = tmp_path / f"piece{k}.wav"
        first = round(off * SR)
        sf.write(piece, whole[first : first + round(dur * SR)], SR, subtype="FLOAT")
        pieces.append(piece)
    [(_, long_hyp)], failures = transcribe(model, [path], device="cpu", decode=decode, segment_seconds=10.0,
                                           workers=1)
    assert not failures
    one_by_one, _ = transcribe(model, pieces, device="cpu", decode=decode, segment_seconds=0, workers=1)
    texts = [h.text for _, h in one_by_one]
    assert long_hyp.text == " ".join(t for t in texts if t)
    assert all(texts)  # not trivially equal
    starts = [w.start for w in long_hyp.words]
    assert starts == sorted(starts)
    assert 0 <= starts[0] and long_hyp.words[-1].end <= sf.info(path).duration + 0.05
    # timings: the words of piece k, shifted by its offset
    expected = [round(w.start + off, 6) for (_, h), (off, _) in zip(one_by_one, spans, strict=True) for w in h.words]
    assert [round(s, 6) for s in starts] == expected


def test_evaluate_scores_a_long_utterance_and_short_ones_together(
        long_speech: tuple[Path, list[tuple[float, float]]], model: Path, tmp_path: Path) -> None:
    path, _ = long_speech
    short = sorted(FSDD.glob("3_theo_*.wav"))[:2]
    manifest = tmp_path / "m.jsonl"
    rows = [{"audio_filepath": str(path), "duration": sf.info(path).duration, "text": "one two"}]
    rows += [{"audio_filepath": str(p), "duration": sf.info(p).duration, "text": "three"} for p in short]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cut = evaluate(model, manifest, device="cpu", segment_seconds=10.0)
    whole = evaluate(model, manifest, device="cpu", segment_seconds=0)
    assert [u.id for u in cut.utterances] == [u.id for u in whole.utterances] == [Path(r["audio_filepath"]).stem
                                                                                 for r in rows]
    assert [u.hyp for u in cut.utterances[1:]] == [u.hyp for u in whole.utterances[1:]]
    assert not cut.failures


def test_unreadable_long_file_fails_once_and_the_rest_go_on(long_speech: tuple[Path, list[tuple[float, float]]],
                                                           model: Path, tmp_path: Path) -> None:
    path, _ = long_speech
    broken = tmp_path / "broken.flac"
    data = path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # header says 95 s; the frames stop half-way
    good = sorted(FSDD.glob("4_lucas_*.wav"))[0]
    results, failures = transcribe(model, [broken, good], device="cpu", segment_seconds=10.0)
    assert [p for p, _ in results] == [str(good)]
    assert len(failures) == 1 and failures[0].path == str(broken)


def test_split_long_leaves_short_inputs_alone(long_speech: tuple[Path, list[tuple[float, float]]]) -> None:
    path, _ = long_speech
    short = Utterance("s", str(FSDD / "0_jackson_0.wav"), 0.5, "")
    long = Utterance("l", str(path), sf.info(path).duration, "")
    rows = split_long([short, long], 10.0)
    assert rows[0] == (0, short)
    assert all(i == 1 for i, _ in rows[1:]) and len(rows) > 2
    assert rows[1][1].id == "l@0.00" and rows[2][1].offset == pytest.approx(rows[1][1].duration)
    assert split_long([short, long], 0) == [(0, short), (1, long)]


def test_cli_segment_seconds(long_speech: tuple[Path, list[tuple[float, float]]], model: Path) -> None:
    path, _ = long_speech
    runner = CliRunner()
    res = runner.invoke(app, ["transcribe", str(model), str(path), "--segment-seconds", "1", "--device", "cpu"])
    assert res.exit_code == 2
    assert "--segment-seconds" in res.output and "at least" in res.output
    res = runner.invoke(app, ["transcribe", str(model), str(path), "--segment-seconds", "10", "--device", "cpu",
                              "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.strip())
    assert row["audio_filepath"] == str(path) and row["words"][-1]["end"] > 60


def test_segment_seconds_must_be_zero_or_long_enough() -> None:
    with pytest.raises(AsrkitError, match="at least"):
        check_segment_seconds(1.0)
    check_segment_seconds(0)
    check_segment_seconds(2.0)


@pytest.mark.slow
def test_one_hour_file_is_decoded_in_bounded_pieces(model: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1-hour file of the bad-input corpus (issue #9): speech bursts in noise at 8 kHz, written block by block.
    No batch ever holds more than batch_size x segment_seconds of audio, and the timings cover the hour."""
    import asrkit.inference as T

    path = tmp_path / "hour long ü.flac"
    digit, _ = sf.read(sorted(FSDD.glob("7_lucas_*.wav"))[0], dtype="float32")
    noise = np.random.default_rng(1)
    with sf.SoundFile(str(path), "w", SR, 1, format="FLAC") as f:
        for _ in range(360):  # 10 s blocks: a digit, then noise
            block = noise.normal(0, 1e-3, SR * 10).astype(np.float32)
            block[SR : SR + len(digit)] += digit
            f.write(block)
    loaded_seconds: list[float] = []
    original = T.load_batches

    def spy(loaded, utts, batch_size, device, failures):  # type: ignore[no-untyped-def]
        for idx, batch in original(loaded, utts, batch_size, device, failures):
            loaded_seconds.append(sum(utts[i].duration for i in idx))
            yield idx, batch

    monkeypatch.setattr(T, "load_batches", spy)
    [(_, hyp)], failures = transcribe(model, [path], device="cpu", batch_size=8, segment_seconds=40.0)
    assert not failures
    assert len(loaded_seconds) >= 3600 / (8 * 40)
    assert max(loaded_seconds) <= 8 * 40.0
    assert sum(loaded_seconds) == pytest.approx(3600.0, abs=0.1)
    assert hyp.words and hyp.words[-1].end <= 3600.0 and hyp.words[-1].start > 3500.0
