"""The records that flow between stages. No logic beyond conversion and `.to(device)`.

torch is imported only where a tensor field is moved: the numpy-only paths (ONNX Runtime inference, asrkit.onnx)
use these records without importing it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Utterance:
    """One line of a JSONL manifest (NeMo-compatible keys: audio_filepath, duration, text, optional offset).

    `offset` None: the utterance is the whole file. A number (a manifest's `offset` key, or a piece of a long
    recording cut by asrkit.longform): it is the span [offset, offset + duration) seconds of the file, so one
    recording can hold many utterances. `asrkit.data.audio.load_utterance` reads either."""

    id: str
    audio_filepath: str  # absolute, or relative to the manifest's folder
    duration: float  # seconds, measured (of the span, when there is an offset)
    text: str  # normalised once, at prepare time
    speaker: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # corpus-specific keys kept
    offset: float | None = None  # seconds into the audio file where the utterance starts; None: the whole file

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "audio_filepath": self.audio_filepath,
            "duration": round(self.duration, 4 if self.offset is None else 6),
            "text": self.text,
            "speaker": self.speaker,
        }
        if self.offset is not None:  # only when set: manifests without offsets round-trip unchanged
            out["offset"] = round(self.offset, 6)  # a span is read as written: to the microsecond, below a sample
        out.update(self.extra)
        return out


@dataclass(frozen=True, kw_only=True)
class Failure:
    """An input a stage could not use, and why: the one record every stage reports it with (prepare's
    skipped.tsv, transcribe / evaluate / tune / stream's `error: PATH: REASON` lines, long-form cutting).
    Keyword-only, so that no call site can swap the three strings."""

    id: str = ""  # the utterance, where there is one: several manifest lines (offsets) can share one file
    path: str  # the file (or `file:line`) that could not be used
    reason: str  # why, in words a user can act on


class _TensorFields:
    """`.to` and `.pin_memory` for a record dataclass: every tensor field moved or pinned, the others kept."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # set by @dataclass on the subclasses

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Self:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Self:
        """Page-locked copies (the DataLoader's pin_memory thread calls this), for asynchronous copies to a GPU."""
        return self._map(lambda t: t.pin_memory() if t.numel() else t)  # an empty tensor has nothing to pin

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Self:
        import torch

        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: fn(v) for k, v in tensors.items() if isinstance(v, torch.Tensor)})


@dataclass
class Batch(_TensorFields):
    """A padded mini-batch. Shapes: feats (B, T, F), feat_lens (B,), targets (B, U), target_lens (B,)."""

    ids: list[str]
    feats: torch.Tensor
    feat_lens: torch.Tensor
    targets: torch.Tensor
    target_lens: torch.Tensor
    texts: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) of items that could not be loaded


@dataclass
class WaveBatch(_TensorFields):
    """A padded mini-batch of waveforms whose features are made on the training device
    (asrkit.data.device_features: `DeviceFeaturizer.batch` turns it into a `Batch`).

    Shapes: waves (B, S) each centre-padded (`centre_pad`) then zero-padded, feat_lens (B,) the frames each
    utterance gives, masks (B, K, 3) SpecAugment masks (K = 0 without augmentation), targets (B, U),
    target_lens (B,)."""

    ids: list[str]
    waves: torch.Tensor
    feat_lens: torch.Tensor
    masks: torch.Tensor
    targets: torch.Tensor
    target_lens: torch.Tensor
    texts: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) of items that could not be loaded


@dataclass
class Emissions:
    """CTC output: log_probs (B, T', V) with blank = 0, lengths (B,), frame_shift in seconds."""

    log_probs: torch.Tensor
    lengths: torch.Tensor
    frame_shift: float


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float  # seconds
    end: float  # seconds


@dataclass(frozen=True)
class Hypothesis:
    """A decoded transcript: text, token ids, total log score, optional word timings."""

    text: str
    tokens: tuple[int, ...] = ()
    score: float = 0.0
    words: tuple[WordTiming, ...] = ()
