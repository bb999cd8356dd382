"""What `asrkit transcribe` and `asrkit evaluate` share: the search options (on top of the checkpoint's [decode]
and a tune.json, asrkit.request.choose), --segment-seconds, and `transcribe --stream`.

Heavy modules (torch) are imported inside the functions so `--help` stays fast.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from asrkit.errors import AsrkitError

if TYPE_CHECKING:
    from asrkit.records import Failure
    from asrkit.request import DecodeRequest

LmOpt = Annotated[Path | None, typer.Option("--lm", help="KenLM model (.bin / .arpa from `asrkit lm build`): CTC "
                                            "models: beam search with this word LM; LAS: shallow fusion with a unit "
                                            "LM (with --set decode.lm_weight=W).")]
BeamOpt = Annotated[int | None, typer.Option(help="Hypotheses kept per step; 1: greedy. Default: the model's "
                                             "\\[decode] or tuned value (CTC: greedy, 32 with --lm; LAS: 4; RNN-T: "
                                             "greedy).")]
AlphaOpt = Annotated[float | None, typer.Option(help="LM weight (default 0.5, or the tuned value).")]
BetaOpt = Annotated[float | None, typer.Option(help="Word insertion bonus (default 1.0, or the tuned value).")]
HotwordOpt = Annotated[list[str] | None, typer.Option("--hotword", help="Word or phrase to boost (repeatable).")]
HotwordWeightOpt = Annotated[float | None, typer.Option(help="Score added per hotword match (default 10).")]
DecodeParamsOpt = Annotated[Path | None, typer.Option(help="Decode settings written by `asrkit tune` "
                                                      "(default: tune.json beside the model, if there).")]
GreedyOpt = Annotated[bool, typer.Option("--greedy", help="Greedy decoding even if tune.json is beside the model.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override any \\[decode] search setting, e.g. --set "
                                                  "decode.length_penalty=0.5 (repeatable; over tune.json).")]
WorkersOpt = Annotated[int, typer.Option(help="Processes decoding in parallel (0: one per CPU core).")]
SegmentOpt = Annotated[float | None, typer.Option(help="Audio longer than this many seconds (default 40) is cut at "
                                                  "pauses into pieces of at most this length, decoded and stitched, so "
                                                  "memory stays bounded for hours of audio; 0: decode files whole.")]


class OutputFormat(StrEnum):
    text = "text"
    jsonl = "jsonl"


def decode_request(decode_params: Path | None, greedy: bool, lm: Path | None, beam_size: int | None,
                   alpha: float | None, beta: float | None, hotword: list[str] | None, hotword_weight: float | None,
                   nbest: int | None, sets: list[str] | None) -> DecodeRequest:
    """The search options given, as one request (named options over --set decode.KEY=VALUE)."""
    from asrkit.config import decode_sets
    from asrkit.request import DecodeRequest

    if beam_size is not None and beam_size < 1:
        raise AsrkitError(f"beam size {beam_size} must be at least 1 (try --beam-size 32)")
    settings = decode_sets(sets or [])
    named = {"lm": None if lm is None else str(lm), "beam_size": beam_size, "alpha": alpha, "beta": beta,
             "hotword_weight": hotword_weight, "nbest": nbest}
    settings.update({k: v for k, v in named.items() if v is not None})
    if hotword:
        settings["hotwords"] = tuple(h for h in hotword if h.strip())
    return DecodeRequest(decode_params, greedy, settings)


def checked_segment_seconds(seconds: float | None) -> float:
    """--segment-seconds checked, or asrkit.longform's default."""
    from asrkit.longform import DEFAULT_SEGMENT_SECONDS, check_segment_seconds

    if seconds is None:
        return DEFAULT_SEGMENT_SECONDS
    try:
        check_segment_seconds(seconds)
    except AsrkitError as err:
        raise AsrkitError(f"--segment-seconds: {err}") from None
    return seconds


def transcribe_stream(model: Path, audio: list[Path], out: Path | None, format: OutputFormat, device: str,
                      chunk_ms: int, pcm_rate: int) -> list[Failure]:
    """`transcribe --stream`: each final transcript as soon as its input ends; partials and latency on stderr.
    Returns the inputs that failed."""
    from asrkit.stream import Partial, latency_summary, stream_files
    from asrkit.transcribe import hypothesis_json

    shown: dict[str, str] = {}

    def show(name: str, partial: Partial) -> None:
        text = partial.stable.strip()
        if text and text != shown.get(name):
            shown[name] = text
            typer.echo(f"{name} [{partial.audio_s:6.2f} s] {text}", err=True)

    failures: list[Any] = []
    sink = sys.stdout if out is None else out.open("w", encoding="utf-8")
    try:
        for name, result in stream_files(model, audio, chunk_ms=chunk_ms, pcm_rate=pcm_rate, device=device,
                                         failures=failures, on_partial=show):
            hyp = result.hypothesis
            sink.write((hypothesis_json(name, hyp) if format == OutputFormat.jsonl else f"{name}\t{hyp.text}") + "\n")
            sink.flush()
            typer.echo(f"{name}: {latency_summary(result, chunk_ms)}", err=True)
    finally:
        if out is not None:
            sink.close()
    return failures
