"""JSONL manifests: one `Utterance` per line, errors reported as file:line.

Keys (NeMo-compatible): audio_filepath, duration (seconds), text; optional id, speaker and offset (seconds into the
file where the utterance starts: the line is then the span [offset, offset + duration) of a longer recording, and
several lines may share one file). Any other key is kept in `Utterance.extra` and written back.

A line without `id` gets the audio file's stem ("rec" for rec.wav), plus "@<offset>" in seconds when it has an
offset ("rec@12.5", "rec@0"), so the lines that cut one recording into pieces get distinct ids.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from asrkit.errors import AsrkitError
from asrkit.io import atomic_open
from asrkit.records import Utterance

REQUIRED_KEYS = ("audio_filepath", "duration", "text")
_KNOWN = {"id", "audio_filepath", "duration", "text", "speaker", "offset"}


class ManifestError(AsrkitError):
    pass


def parse_line(line: str, where: str, base_dir: Path) -> Utterance:
    """Parse one manifest line; `where` is "file:line" for error messages."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise ManifestError(f"{where}: missing key(s) {', '.join(missing)}; "
                            f"every line needs {', '.join(REQUIRED_KEYS)}")
    try:
        duration = float(obj["duration"])
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: duration {obj['duration']!r} is not a number (seconds)") from None
    if not duration > 0:
        raise ManifestError(f"{where}: duration {duration} must be positive")
    text = obj["text"]
    if not isinstance(text, str):
        raise ManifestError(f"{where}: text must be a string, got {text!r}")
    audio = str(obj["audio_filepath"])
    if not os.path.isabs(audio):
        audio = str((base_dir / audio).resolve())
    offset = _offset(obj.get("offset"), where)
    utt_id = str(obj.get("id") or default_id(audio, offset))
    extra = {k: v for k, v in obj.items() if k not in _KNOWN}
    return Utterance(utt_id, audio, duration, text, str(obj.get("speaker", "") or ""), extra, offset)


def _offset(value: object, where: str) -> float | None:
    """The `offset` key: None when absent (or null), else seconds >= 0."""
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError
        offset = float(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: offset {value!r} is not a number (seconds into the audio file)") from None
    if not (math.isfinite(offset) and offset >= 0):
        raise ManifestError(f"{where}: offset {offset} must be a number of seconds >= 0")
    return offset


def default_id(audio: str, offset: float | None) -> str:
    """The id of a line without one: the file's stem, plus "@<offset in seconds>" when the line has an offset."""
    stem = Path(audio).stem
    if offset is None:
        return stem
    return f"{stem}@{f'{offset:.6f}'.rstrip('0').rstrip('.')}"


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a JSONL manifest. Relative audio paths are resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; create it with `asrkit prepare ...`")
    utts: list[Utterance] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            utt = parse_line(line, f"{path}:{lineno}", path.parent)
            if utt.id in seen:
                raise ManifestError(f"{path}:{lineno}: duplicate id {utt.id!r} (first at line {seen[utt.id]}); "
                                    "a line without an id gets its audio file's name (plus @offset when it has "
                                    "one): give each line a distinct id")
            seen[utt.id] = lineno
            utts.append(utt)
    if not utts:
        raise ManifestError(f"{path}: manifest is empty")
    return utts


def write_manifest(path: str | Path, utts: Iterable[Utterance]) -> int:
    """Write atomically (`atomic_open`: temp file + fsync + rename) so a killed run never leaves half a manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as f:
        for utt in utts:
            f.write(json.dumps(utt.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n
