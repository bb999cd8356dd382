"""Manifest lines with an `offset` (NeMo): several utterances cut from one recording, read span by span everywhere
(training features and waveforms, evaluation, long-audio cutting), with clear errors for bad offsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FSDD_ASSETS
from typer.testing import CliRunner

from asrkit.checkpoint import save_checkpoint
from asrkit.cli import EXIT_PARTIAL, app
from asrkit.config import FeatureConfig, build_config
from asrkit.data.audio import SPAN_END_SLACK, load_audio, load_span, load_utterance, write_audio
from asrkit.data.features import Featurizer
from asrkit.data.loader import SpeechDataset, WaveItem, collate, collate_waves
from asrkit.data.manifest import ManifestError, read_manifest, write_manifest
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AudioError
from asrkit.evaluate import evaluate
from asrkit.experiment import _fit_featurizer
from asrkit.longform import find_cuts, split_long
from asrkit.models import build_model
from asrkit.records import Utterance

# The long file, the separate recordings, and the (offset, duration) of each in the long one.
Recording = tuple[Path, list[Path], list[tuple[float, float]]]
SR = 8000  # FSDD's rate; the featurizer resamples to 16 kHz
PIECES = [("0_jackson_0.wav", "zero"), ("1_nicolas_0.wav", "one"), ("2_theo_0.wav", "two")]
GAPS = [0.37, 0.2, 0.5]  # seconds of faint noise before each piece, so no offset is a round number


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """One WAV holding three FSDD recordings with noise between them; the separate recordings; and the
    (offset, duration) of each in the long one."""
    folder = tmp_path_factory.mktemp("offset")
    noise = np.random.default_rng(0)
    parts, spans, t = [], [], 0
    separate = [FSDD_ASSETS / name for name, _ in PIECES]
    for path, gap in zip(separate, GAPS, strict=True):
        wave, sr = sf.read(path, dtype="float32")
        assert sr == SR
        pad = (noise.normal(0, 1e-3, round(gap * SR)) * 32768).round() / 32768  # on the 16-bit grid
        parts += [pad.astype(np.float32), wave]
        t += len(pad)
        spans.append((t / SR, len(wave) / SR))
        t += len(wave)
    parts.append(parts[0])  # and a little after the last one
    path = folder / "long take.wav"
    write_audio(path, np.concatenate(parts), SR)
    return path, separate, spans


def offset_manifest(folder: Path, recording: Recording) -> Path:
    """Three lines, no ids, all pointing at the long recording (relative path), each with its offset."""
    path, _, spans = recording
    lines = [{"audio_filepath": path.name, "duration": dur, "offset": off, "text": text}
             for (off, dur), (_, text) in zip(spans, PIECES, strict=True)]
    manifest = folder / "offsets.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@pytest.fixture
def manifest(tmp_path: Path, recording: Recording) -> Path:
    path = recording[0]
    link = tmp_path / path.name
    link.write_bytes(path.read_bytes())
    return offset_manifest(tmp_path, recording)


def separate_utterances(recording: Recording) -> list[Utterance]:
    _, separate, spans = recording
    return [Utterance(p.stem, str(p), dur, text) for p, (_, dur), (_, text) in zip(separate, spans, PIECES,
                                                                                     strict=True)]


# --- reading ------------------------------------------------------------------------------------------


def test_offsets_are_parsed_and_ids_are_distinct(manifest: Path,
                                                 recording: Recording) -> None:
    utts = read_manifest(manifest)
    spans = recording[2]
    assert [u.offset for u in utts] == [off for off, _ in spans]
    assert [u.duration for u in utts] == [dur for _, dur in spans]
    assert all(u.audio_filepath == str(manifest.parent / "long take.wav") for u in utts)
    assert all("offset" not in u.extra for u in utts)
    assert [u.id for u in utts] == [f"long take@{off:.6f}".rstrip("0") for off, _ in spans]
    assert len({u.id for u in utts}) == 3
    assert utts[0].id == "long take@0.37"


def test_id_default_without_offset_is_the_stem_and_zero_offset_is_kept(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "duration": 1, "text": "x"}) + "\n"
                        + json.dumps({"audio_filepath": "a.wav", "duration": 1, "text": "y", "offset": 0}) + "\n"
                        + json.dumps({"audio_filepath": "a.wav", "duration": 1, "text": "z", "offset": "1.5"}) + "\n"
                        + json.dumps({"audio_filepath": "a.wav", "duration": 1, "text": "w", "offset": None}) + "\n")
    with pytest.raises(ManifestError, match=rf"{manifest}:4: duplicate id 'a' \(first at line 1\)"):
        read_manifest(manifest)  # null: no offset, the whole file, as line 1
    manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[:3]))
    utts = read_manifest(manifest)
    assert [(u.id, u.offset) for u in utts] == [("a", None), ("a@0", 0.0), ("a@1.5", 1.5)]


def test_same_offset_twice_is_a_duplicate_id(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    line = json.dumps({"audio_filepath": "a.wav", "duration": 1, "text": "x", "offset": 2.25}) + "\n"
    manifest.write_text(line + line)
    with pytest.raises(ManifestError, match=rf"{manifest}:2: duplicate id 'a@2.25'.*give each line a distinct id"):
        read_manifest(manifest)


@pytest.mark.parametrize("value,fragment", [
    (-0.5, "offset -0.5 must be a number of seconds >= 0"),
    ("soon", "offset 'soon' is not a number"),
    (True, "offset True is not a number"),
    ([1], "offset [1] is not a number"),
    ("inf", "offset inf must be a number of seconds >= 0"),
    ("nan", "offset nan must be a number of seconds >= 0"),
])
def test_bad_offset_names_file_line_and_value(tmp_path: Path, value: object, fragment: str) -> None:
    manifest = tmp_path / "m.jsonl"
    good = {"audio_filepath": "a.wav", "duration": 1.0, "text": "x"}
    manifest.write_text(json.dumps({**good, "id": "ok"}) + "\n" + json.dumps({**good, "offset": value}) + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    assert str(info.value).startswith(f"{manifest}:2: ")
    assert fragment in str(info.value)


# --- round trip ---------------------------------------------------------------------------------------


def test_read_write_read_keeps_offsets(manifest: Path, tmp_path: Path) -> None:
    utts = read_manifest(manifest)
    out = tmp_path / "again.jsonl"
    write_manifest(out, utts)
    back = read_manifest(out)
    assert back == utts
    assert [u.offset for u in back] == [u.offset for u in utts]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["offset"] for r in rows] == [u.offset for u in utts]
    write_manifest(tmp_path / "third.jsonl", back)
    assert (tmp_path / "third.jsonl").read_bytes() == out.read_bytes()


def test_manifest_without_offsets_is_written_back_byte_for_byte(tmp_path: Path) -> None:
    first = tmp_path / "a.jsonl"
    write_manifest(first, [Utterance("u1", "/x/u1.wav", 1.25, "hello", "s1", {"lang": "en"}),
                           Utterance("u2", "/x/u2.wav", 0.5, "world")])
    assert "offset" not in first.read_text()
    second = tmp_path / "b.jsonl"
    write_manifest(second, read_manifest(first))
    assert second.read_bytes() == first.read_bytes()
    assert [u.offset for u in read_manifest(second)] == [None, None]


# --- the samples and features of each line ------------------------------------------------------------


def test_load_utterance_reads_only_the_span(manifest: Path,
                                            recording: Recording) -> None:
    whole = load_audio(recording[0], SR)
    for utt, path in zip(read_manifest(manifest), recording[1], strict=True):
        assert utt.offset is not None
        wave = load_utterance(utt, SR)
        assert torch.equal(wave, load_audio(path, SR))
        first = round(utt.offset * SR)
        assert torch.equal(wave, whole[first : first + len(wave)])
    plain = Utterance("w", str(recording[0]), len(whole) / SR, "")  # no offset: the whole file
    assert torch.equal(load_utterance(plain, SR), whole)


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_dataset_features_equal_those_of_the_separate_recordings(
        manifest: Path, recording: Recording, augment: bool) -> None:
    utts = read_manifest(manifest)
    separate = separate_utterances(recording)
    tok = CharTokenizer.train(u.text for u in utts)
    feat = Featurizer(FeatureConfig(n_mels=40, normalize=False, noise_prob=1.0 if augment else 0.0))
    cut = SpeechDataset(utts, feat, tok, augment=augment, seed=3)
    alone = SpeechDataset(separate, feat, tok, augment=augment, seed=3)
    for i in range(3):
        a, b = cut[i], alone[i]
        assert not a.error and a.feats.shape[0] == feat.num_frames(round(utts[i].duration * feat.cfg.sample_rate))
        assert torch.equal(a.feats, b.feats)
        assert torch.equal(a.targets, b.targets)
    assert cut[0].feats.shape != cut[1].feats.shape  # three different recordings, not one repeated
    batch = collate([cut[i] for i in range(3)])
    assert batch.ids == [u.id for u in utts] and not batch.failed


def test_dataset_waveforms_equal_those_of_the_separate_recordings(
        manifest: Path, recording: Recording) -> None:
    utts = read_manifest(manifest)
    feat = Featurizer(FeatureConfig(n_mels=40, normalize=False, time_mask_ratio=0.3))
    cut = SpeechDataset(utts, feat, None, augment=True, waveforms=True)
    alone = SpeechDataset(separate_utterances(recording), feat, None, augment=True, waveforms=True)
    for i in range(3):
        a, b = cut[i], alone[i]
        assert isinstance(a, WaveItem) and isinstance(b, WaveItem) and not a.error
        assert torch.equal(a.wave, b.wave) and a.frames == b.frames and torch.equal(a.masks, b.masks)


# --- offsets past the end: skipped and named ------------------------------------------------------------


def test_offset_past_the_end_is_an_audio_error_naming_file_and_times(
        recording: Recording) -> None:
    path = recording[0]
    total = sf.info(path).frames / SR
    late = Utterance("late", str(path), 1.0, "x", offset=total + 2.0)
    with pytest.raises(AudioError, match=rf"offset {total + 2:.2f} s is past the end of the audio \({total:.2f} s\)"
                       ) as info:
        load_utterance(late, SR)
    assert info.value.path == str(path)
    long = Utterance("long", str(path), 1.0, "x", offset=total - 0.5)  # starts inside, ends 0.5 s after the end
    with pytest.raises(AudioError, match=rf"span {total - 0.5:.2f}-{total + 0.5:.2f} s ends past the end of the "
                                         rf"audio \({total:.2f} s\)"):
        load_utterance(long, SR)
    # a rounded duration may reach a little past the end: read to the end
    rounded = Utterance("r", str(path), 0.5 + SPAN_END_SLACK / 2, "x", offset=total - 0.5)
    assert len(load_utterance(rounded, SR)) == round(0.5 * SR)


def test_unreadable_span_is_skipped_and_named_by_the_dataset(manifest: Path) -> None:
    utts = read_manifest(manifest)
    bad = Utterance("bad", utts[0].audio_filepath, 1.0, "zero", offset=500.0)
    for waveforms in (False, True):
        ds = SpeechDataset([utts[0], bad, utts[2]], Featurizer(FeatureConfig(n_mels=40, normalize=False)), None,
                           waveforms=waveforms)
        batch = (collate_waves if waveforms else collate)([ds[i] for i in range(3)])  # type: ignore[operator]
        assert batch.ids == [utts[0].id, utts[2].id]
        assert len(batch.failed) == 1 and batch.failed[0][0] == "bad"
        assert utts[0].audio_filepath in batch.failed[0][1] and "offset 500.00 s is past the end" in batch.failed[0][1]


def test_span_of_a_truncated_file_is_an_audio_error(tmp_path: Path,
                                                    recording: Recording
                                                    ) -> None:
    wave, _ = sf.read(recording[0], dtype="float32")
    flac = tmp_path / "cut.flac"
    sf.write(flac, wave, SR)
    data = flac.read_bytes()
    flac.write_bytes(data[: len(data) // 2])  # the header still says the full length
    total = len(wave) / SR
    with pytest.raises(AudioError) as info:
        load_span(flac, total - 1.0, 0.8, SR)
    assert info.value.path == str(flac)


# --- evaluation and long-audio cutting -----------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, recording: Recording) -> Path:
    """An untrained but deterministic small DS2 checkpoint, statistics from the separate recordings."""
    cfg = build_config({"model": {"rnn_hidden": 32, "rnn_layers": 2, "conv_channels": 4},
                        "features": {"n_mels": 40}})
    tok = CharTokenizer.train(["zero one two"])
    feat = Featurizer(cfg.features)
    feat.fit_stats([load_audio(p, 16000) for p in recording[1]])
    torch.manual_seed(0)
    net = build_model(cfg, 40, len(tok.vocab))
    net.eval()
    path = tmp_path_factory.mktemp("offset-model") / "model.pt"
    save_checkpoint(path, config=cfg, tokenizer=tok, featurizer=feat, model=net)
    return path


def test_evaluate_decodes_each_span(manifest: Path, tmp_path: Path, recording: Recording, model: Path) -> None:
    """An untrained but deterministic model: the offset lines decode exactly as the separate recordings."""
    separate = tmp_path / "separate.jsonl"
    write_manifest(separate, separate_utterances(recording))
    cut = evaluate(model, manifest, device="cpu")
    alone = evaluate(model, separate, device="cpu")
    assert not cut.failures and not alone.failures
    assert [u.hyp for u in cut.utterances] == [u.hyp for u in alone.utterances]
    assert [u.id for u in cut.utterances] == [u.id for u in read_manifest(manifest)]
    assert len({u.hyp for u in cut.utterances}) > 1  # not the same output for everything


def test_long_utterance_with_an_offset_is_cut_within_its_span(tmp_path: Path) -> None:
    digits = sorted(FSDD_ASSETS.glob("*_jackson_*.wav"))[:40]
    pause = np.zeros(SR // 2, dtype=np.float32)
    wave = np.concatenate([x for p in digits for x in (sf.read(p, dtype="float32")[0], pause)])
    path = tmp_path / "long.wav"
    write_audio(path, wave, SR)
    total = len(wave) / SR
    assert total > 20
    off, dur = 5.0, 12.0
    spans, _ = find_cuts(path, 4.0, off, dur)
    assert spans[0][0] == 0.0 and sum(d for _, d in spans) == pytest.approx(dur)
    utt = Utterance("u", str(path), dur, "", offset=off)
    rows = split_long([utt], 4.0)
    assert len(rows) == len(spans) >= 3
    assert rows[0][1].offset == off and rows[0][1].id == "u@0.00"
    assert rows[-1][1].offset + rows[-1][1].duration == pytest.approx(off + dur)  # type: ignore[operator]
    pieces = torch.cat([load_utterance(seg, SR) for _, seg in rows])
    assert torch.equal(pieces, load_utterance(utt, SR))
    assert torch.equal(pieces, torch.from_numpy(wave[round(off * SR) : round((off + dur) * SR)]))


def test_feature_statistics_read_each_span(manifest: Path, recording: Recording) -> None:
    cfg = build_config({"features": {"n_mels": 40}})
    utts = read_manifest(manifest)
    bad = Utterance("bad", utts[0].audio_filepath, 1.0, "x", offset=500.0)
    skipped: dict[str, str] = {}
    cut = _fit_featurizer(cfg, [*utts, bad], False, skipped)
    alone = _fit_featurizer(cfg, separate_utterances(recording), False, {})
    assert torch.equal(cut.mean, alone.mean) and torch.equal(cut.std, alone.std)
    assert list(skipped) == ["bad"] and "past the end" in skipped["bad"]


def test_evaluate_leaves_out_only_the_bad_line(manifest: Path, tmp_path: Path, model: Path) -> None:
    utts = read_manifest(manifest)
    late = [Utterance(f"late{k}", utts[0].audio_filepath, 0.5, "one", offset=100.0 + k) for k in range(2)]
    mixed = tmp_path / "mixed.jsonl"
    write_manifest(mixed, [utts[0], late[0], utts[1], late[1], utts[2]])
    result = evaluate(model, mixed, device="cpu")
    assert [u.id for u in result.utterances] == [u.id for u in utts]  # the good lines of that file are scored
    assert [(f.id, f.path) for f in result.failures] == [(u.id, u.audio_filepath) for u in late]  # each bad one named
    assert "offset 100.00 s is past the end" in result.failures[0].reason
    # The command line names each failed line by its utterance id, as their files are the same.
    run = CliRunner().invoke(app, ["evaluate", str(model), str(mixed), "--device", "cpu", "--report",
                                   str(tmp_path / "report.json")])
    assert run.exit_code == EXIT_PARTIAL, run.output
    for u in late:
        assert f"error: {u.audio_filepath}: " in run.stderr and f"(utterance {u.id})" in run.stderr
    assert "2 of 5 utterances failed" in run.stderr
