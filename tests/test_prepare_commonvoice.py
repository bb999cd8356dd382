"""Common Voice preparation on a generated miniature release (48 kHz MP3 clips + TSVs) and the real sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkit.errors import AsrkitError
from asrkit.prepare import commonvoice as cv

HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment"
# name -> (seconds, channels); a clip name missing here is listed in a TSV but absent from clips/
CLIPS = {"a1": (1.0, 1), "a2": (1.2, 2), "b1": (0.8, 1), "b2": (1.0, 1), "c1": (0.9, 1), "short": (0.2, 1),
         "long": (2.5, 1), "votes": (1.0, 1), "down": (1.0, 1), "empty": (1.0, 1), "digits": (1.0, 1),
         "cyrillic": (1.0, 1)}
TRAIN = [  # client, clip, sentence, up, down
    ("alice", "a1", "\u201cCaf\u00e9s,\u201d she said \u2014 it\u2019s late!", 2, 0),
    ("alice", "a2", '"""Hello,"" she said."', 3, 1),
    ("alice", "absent", "This clip is not in clips.", 2, 0),
    ("alice", "broken", "An undecodable file.", 2, 0),
    ("alice", "short", "Too short.", 2, 0),
    ("alice", "long", "Far too long.", 2, 0),
    ("alice", "votes", "Only one vote.", 1, 0),
    ("alice", "down", "Disliked.", 2, 3),
    ("alice", "empty", "?!", 2, 0),
    ("alice", "digits", "Route 66.", 2, 0),
    ("alice", "cyrillic", "Hello \u043c\u0438\u0440.", 2, 0),
]
DEV = [("bob", "b1", "Good morning.", 2, 0), ("bob", "b2", "Good night.", 2, 0), ("bob", "a1", "Duplicate.", 2, 0)]
TEST = [("carol", "c1", "Na\u00efve \u00e6sthetics.", 4, 0)]


def _row(client: str, clip: str, sentence: str, up: int, down: int) -> str:
    return f"{client}\tcommon_voice_en_{clip}.mp3\t{sentence}\t{up}\t{down}\t\t\t\t\ten\t"


def make_release(root: Path, tsvs: dict[str, list[tuple[str, str, str, int, int]]]) -> Path:
    clips = root / "clips"
    clips.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (seconds, channels) in CLIPS.items():
        wave = (0.2 * rng.standard_normal((int(48000 * seconds), channels))).astype(np.float32)
        sf.write(str(clips / f"common_voice_en_{name}.mp3"), wave, 48000, format="MP3")
    (clips / "common_voice_en_broken.mp3").write_bytes(b"this is not an mp3 stream" * 10)
    for split, rows in tsvs.items():
        lines = [HEADER] + [_row(*r) for r in rows]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_release(tmp_path_factory.mktemp("cv") / "en", {"train": TRAIN, "dev": DEV, "test": TEST})


def _manifest(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def test_prepare_commonvoice(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cv.prepare(release, out, min_upvotes=2, max_duration=2.0, workers=2)
    train, dev, test = (_manifest(out / f"{s}.jsonl") for s in ("train", "dev", "test"))
    assert sorted(train) == ["common_voice_en_a1", "common_voice_en_a2"]
    assert train["common_voice_en_a1"]["text"] == "cafes she said it's late"
    assert train["common_voice_en_a2"]["text"] == "hello she said"
    assert train["common_voice_en_a1"]["speaker"] == "alice"
    assert sorted(dev) == ["common_voice_en_b1", "common_voice_en_b2"] and dev["common_voice_en_b1"]["speaker"] == "bob"
    assert test["common_voice_en_c1"]["text"] == "naive aesthetics"
    flac = Path(train["common_voice_en_a2"]["audio_filepath"])
    info = sf.info(str(flac))
    assert flac.parent == out / "flac" and (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert train["common_voice_en_a2"]["duration"] == pytest.approx(1.2, abs=0.1)
    reasons = {Path(s.path).stem.removeprefix("common_voice_en_"): s.reason for s in result.skipped}
    assert "absent from clips/" in reasons["absent"]
    assert reasons["broken"].startswith("cannot decode MP3: damaged or not MP3 (libsndfile: ")
    assert "outside [0.5, 2.0]" in reasons["short"] and "outside [0.5, 2.0]" in reasons["long"]
    assert reasons["votes"] == "too few up-votes (1 < 2)"
    assert reasons["down"] == "more down-votes than up-votes (3 > 2)"
    assert reasons["empty"] == "empty text after normalisation"
    assert "digits 6" in reasons["digits"]
    assert "letters outside the en alphabet" in reasons["cyrillic"]
    assert "duplicate path" in reasons["a1"]
    assert len(result.skipped) == 10
    assert "common_voice_en_broken.mp3\tcannot decode MP3: damaged" in (out / "skipped.tsv").read_text(encoding="utf-8")


def test_rerun_converts_only_missing_clips(release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    cv.prepare(release, out, splits=["dev", "test"])
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "flac").glob("*.flac")}
    assert sorted(stamps) == ["common_voice_en_a1.flac", "common_voice_en_b1.flac", "common_voice_en_b2.flac",
                              "common_voice_en_c1.flac"]  # without train.tsv, a1 is no duplicate
    (out / "flac" / "common_voice_en_b2.flac").unlink()
    decoded: list[str] = []
    real_load = cv.load_audio

    def counting_load(path: Path, rate: int) -> object:
        decoded.append(Path(path).name)
        return real_load(path, rate)

    monkeypatch.setattr(cv, "load_audio", counting_load)
    result = cv.prepare(release, out, splits=["dev", "test"])
    assert decoded == ["common_voice_en_b2.mp3"]
    assert len(result.splits["dev"]) == 3 and not list((out / "flac").glob("*.tmp"))
    assert (out / "flac" / "common_voice_en_b1.flac").stat().st_mtime_ns == stamps["common_voice_en_b1.flac"]


def test_validated_only_release_is_split_by_speaker(tmp_path: Path) -> None:
    rows = [("alice", "a1", "One.", 2, 0), ("alice", "a2", "Two.", 2, 0), ("bob", "b1", "Three.", 2, 0),
            ("carol", "c1", "Four.", 2, 0), ("bob", "b2", "Five.", 2, 0)]
    release = make_release(tmp_path / "en", {"validated": rows})
    result = cv.prepare(release, tmp_path / "out")
    speakers = {name: {u.speaker for u in utts} for name, utts in result.splits.items()}
    assert all(len(s) == 1 for s in speakers.values())
    assert set.union(*speakers.values()) == {"alice", "bob", "carol"}
    assert sum(len(u) for u in result.splits.values()) == 5


def test_some_split_tsvs_missing_is_an_error(release: Path, tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match=r"no other\.tsv \(found: dev\.tsv, test\.tsv, train\.tsv\)"):
        cv.prepare(release, tmp_path / "out", splits=["train", "other"])
    with pytest.raises(AsrkitError, match="unknown Common Voice split.*valid: train, dev, test"):
        cv.prepare(release, tmp_path / "out", splits=["training"])


def test_wrong_locale_is_an_error(release: Path, tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match="locale 'en' but the language is 'de'; pass --lang en"):
        cv.prepare(release, tmp_path / "out", lang="de")


def test_libsndfile_without_mp3_fails_up_front(release: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "WAV", "FLAC": "FLAC"})
    with pytest.raises(AsrkitError, match=r"cannot decode MP3,.*libsndfile >= 1\.1.*pip install -U soundfile"):
        cv.prepare(release, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("lang", "text", "expected"), [
    ("en", "It\u2019s  a \u201cTEST\u201d\u2014ok?", "it's a test ok"),
    ("en", "'Quoted' words, rock 'n' roll", "quoted words rock n roll"),
    ("fr", "L\u2019\u00e9t\u00e9 \u00e0 l\u2019\u0152uvre !", "l'\u00e9t\u00e9 \u00e0 l'\u0153uvre"),
    ("de", "Stra\u00dfe \u00dcBER", "stra\u00dfe \u00fcber"),
    ("ru", "\u041f\u0440\u0438\u0432\u0435\u0442, \u041c\u0438\u0440!", "\u043f\u0440\u0438\u0432\u0435\u0442 "
                                                                       "\u043c\u0438\u0440"),
    ("pt-BR", "Ol\u00e1, S\u00e3o Paulo.", "ol\u00e1 s\u00e3o paulo"),
])
def test_normalize_sentence_per_language(lang: str, text: str, expected: str) -> None:
    assert cv.normalize_sentence(text, lang) == (expected, None)


def test_normalize_sentence_refuses_what_it_cannot_spell() -> None:
    assert cv.normalize_sentence("caf\u00e9 \u00f1", "de")[1] == "letters outside the de alphabet: \u00e9 \u00f1"
    assert cv.normalize_sentence("ＡＢＣ", "en") == ("abc", None)  # NFKC folds full-width letters
    assert str(cv.normalize_sentence("\u00bd price", "en")[1]).startswith("digits")


def test_real_commonvoice_sample(shared_data_dir: Path, tmp_path: Path) -> None:
    release = shared_data_dir / "commonvoice_en_sample"
    if not release.is_dir():
        pytest.skip(f"Common Voice sample not found at {release}")
    result = cv.prepare(release, tmp_path / "out", workers=4)
    assert not result.skipped
    assert sum(len(u) for u in result.splits.values()) == 96
    speakers = [{u.speaker for u in utts} for utts in result.splits.values()]
    assert len(set.union(*speakers)) == 6 and all(a.isdisjoint(b) for a in speakers for b in speakers if a is not b)
    first = next(u for u in result.splits["train"] if u.id == "common_voice_en_1")
    assert first.text == "i'm interested only in the present" and first.duration == pytest.approx(2.25, abs=0.05)
