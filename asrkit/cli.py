"""The `asrkit` command line. Each command parses and validates, then calls ONE library function.

Heavy modules (torch, torchaudio) are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from asrkit.cli_common import (  # noqa: F401  (the exit codes: asrkit.cli.EXIT_* for scripts and tests)
    EXIT_CODES_HELP,
    EXIT_CRASH,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USER_ERROR,
    user_errors,
)
from asrkit.cli_decode import (
    AlphaOpt,
    BeamOpt,
    BetaOpt,
    DecodeParamsOpt,
    GreedyOpt,
    HotwordOpt,
    HotwordWeightOpt,
    LmOpt,
    OutputFormat,
    SegmentOpt,
    SetOpt,
    WorkersOpt,
    checked_segment_seconds,
    decode_request,
    transcribe_stream,
)
from asrkit.cli_lm import lm_app
from asrkit.cli_prepare import prepare_app
from asrkit.errors import AsrkitError

app = typer.Typer(help="End-to-end speech recognition: prepare corpora, train, transcribe, evaluate.",
                  epilog=EXIT_CODES_HELP, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
app.add_typer(prepare_app, name="prepare")

def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _report_failures(failures: list[Any], total: int, noun: str, note: str = "", ids: bool = False) -> None:
    """Each input that failed on stderr (`error: PATH: REASON`, plus the utterance id with `ids`), then
    "N of TOTAL NOUN failed" and EXIT_PARTIAL; nothing when none failed."""
    for f in failures:
        typer.echo(f"error: {f.path}: {f.reason}" + (f" (utterance {f.id})" if ids and f.id else ""), err=True)
    if failures:
        typer.echo(f"{len(failures)} of {total} {noun} failed{note}", err=True)
        raise typer.Exit(EXIT_PARTIAL)


@app.command()
@user_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="TOML config (only the keys that differ from defaults); "
                                                  "omit for the defaults.")] = None,
    data: Annotated[list[Path] | None, typer.Option(help="Folder with train.jsonl (and dev.jsonl for dev WER); "
                                                    "repeatable: trains on the union of the folders' train.jsonl, "
                                                    "dev WER on the union of their dev.jsonl (and per folder). "
                                                    "Default: data.")] = None,
    exp: Annotated[Path, typer.Option(help="Experiment folder: checkpoints, history, TensorBoard logs.")] = Path("exp"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key, e.g. --set train.lr=3e-4 "
                                                   "(repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from EXP/last.pt where it stopped.")] = False,
    init: Annotated[Path | None, typer.Option(help="Start from this checkpoint's (or experiment folder's) weights "
                                              "wherever name and shape match, e.g. a CTC run's encoder for a "
                                              "transducer with the same [encoder]; the rest start fresh.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a model; writes EXP/last.pt and EXP/best.pt (best dev WER). Exit code 3 when some utterances were
    skipped (unreadable audio, or longer than train.max_duration; listed in EXP/skipped.tsv)."""
    from asrkit.config import load_config
    from asrkit.train import fit

    cfg = load_config(config, set_ or [])
    result = fit(cfg, data or [Path("data")], exp, resume=resume, progress=progress, init=init)
    if result.stopped_by:  # SIGTERM or Ctrl-C: the step finished, last.pt written (the loop said so)
        raise typer.Exit(EXIT_INTERRUPTED)
    if not result.main:  # another DDP rank: rank 0 reports
        raise typer.Exit(EXIT_PARTIAL if result.skipped else EXIT_OK)
    best = f", best dev WER {result.best_wer:.2%}" if result.best_wer != float("inf") else ""
    typer.echo(f"trained {_count(result.steps, 'step')}, {_count(result.epochs, 'epoch')}{best}; checkpoints in {exp}")
    if result.skipped:
        typer.echo(f"{len(result.skipped)} utterance(s) skipped (unreadable audio, or longer than "
                   f"train.max_duration): see {exp}/skipped.tsv", err=True)
        raise typer.Exit(EXIT_PARTIAL)


@app.command()
@user_errors
def average(
    exp: Annotated[Path, typer.Argument(help="Experiment folder holding epoch-<k>.pt checkpoints (train with "
                                        "--set train.keep_epochs=N to keep the last N).")],
    last: Annotated[int | None, typer.Option(help="Average the weights of the last N epoch checkpoints.")] = None,
    best: Annotated[int | None, typer.Option(help="Average the weights of the N epoch checkpoints with the lowest "
                                             "dev WER (recorded when training with a dev.jsonl).")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the averaged checkpoint "
                                             "(default: EXP/averaged-last<N>.pt or EXP/averaged-best<N>.pt).")] = None,
    by: Annotated[str | None, typer.Option(help="--best ranks by: wer (dev WER, decoded as the conf's [decode] "
                                           "says: greedy unless it sets a beam) or loss (dev loss); default: the "
                                           "run's train.select.")] = None,
) -> None:
    """Average the last N epoch checkpoints (--last N), or the N with the lowest dev WER (--best N), into one model
    for transcribe / evaluate."""
    from asrkit.average import average as run

    for n, option in ((last, "--last"), (best, "--best")):
        if n is not None and n < 1:
            raise AsrkitError(f"{option} {n} must be at least 1")
    path = run(exp, last, out, best=best, by=by)
    which = f"the last {last}" if best is None else f"the {best} best-on-dev"
    typer.echo(f"averaged {which} epoch checkpoint(s) of {exp} into {path}")


config_app = typer.Typer(help="Show the configuration a run would use.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
@user_errors
def config_show(
    conf: Annotated[Path, typer.Argument(help="TOML config (only the keys that differ from defaults).")],
    key: Annotated[str | None, typer.Option(help="Print only this value (strings unquoted, for scripts), e.g. "
                                            "--key model.family.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key as `train` does, e.g. "
                                                   "--set train.lr=3e-4 (repeatable).")] = None,
) -> None:
    """Print the config as `asrkit train` resolves it (defaults filled in, --set applied), TOML-like: each section's
    header, then its key = value lines. With --key, just that value."""
    from asrkit.config import load_config

    typer.echo(_show_config(load_config(conf, set_ or []).to_dict(), key))


def _show_config(sections: dict[str, dict[str, Any]], key: str | None) -> str:
    """TOML-like `[section]` / `key = value` lines (values as JSON writes them), or the value of key (section.key)
    alone, a string without quotes."""
    if key is None:
        return "\n\n".join(f"[{s}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
                           for s, values in sections.items())
    section, dot, name = key.partition(".")
    if not dot or not name:
        raise AsrkitError(f"--key {key!r}: expected section.key, e.g. --key model.family")
    if section not in sections:
        raise AsrkitError(f"unknown config section [{section}]; valid sections: {', '.join(sections)}")
    if name not in sections[section]:
        raise AsrkitError(f"unknown config key {section}.{name}; "
                          f"valid keys in [{section}]: {', '.join(sorted(sections[section]))}")
    value = sections[section][name]
    return value if isinstance(value, str) else json.dumps(value)


app.add_typer(lm_app, name="lm")


def _parse_range(value: str, option: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise AsrkitError(f"{option} {value!r}: expected MIN,MAX, e.g. {option} 0,2") from None
    return low, high


@app.command()
@user_errors
def transcribe(
    model: Annotated[Path, typer.Argument(help="Checkpoint (.pt), experiment folder (uses best.pt), or a folder "
                                         "written by `asrkit export` (decoded with ONNX Runtime).")],
    audio: Annotated[list[Path], typer.Argument(help="Audio files (WAV, FLAC, OGG, MP3; any rate, any channels); "
                                                "with --stream, '-' reads raw 16-bit mono PCM from standard input.")],
    out: Annotated[Path | None, typer.Option(help="Write here instead of standard output.")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", help="text: 'path<TAB>transcript'; jsonl: text, "
                                                 "score, word timings and the n-best list.")] = OutputFormat.text,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Files per forward pass.")] = 16,
    lm: LmOpt = None,
    beam_size: BeamOpt = None,
    alpha: AlphaOpt = None,
    beta: BetaOpt = None,
    hotword: HotwordOpt = None,
    hotword_weight: HotwordWeightOpt = None,
    nbest: Annotated[int | None, typer.Option(help="Hypotheses per file in the JSONL output (beam search).")] = None,
    decode_params: DecodeParamsOpt = None,
    greedy: GreedyOpt = False,
    set_: SetOpt = None,
    workers: WorkersOpt = 0,
    segment_seconds: SegmentOpt = None,
    stream: Annotated[bool, typer.Option("--stream", help="Feed the audio in --chunk-ms chunks through a streaming "
                                         "model (a unidirectional transducer); partial transcripts go to standard "
                                         "error as they stabilise, with the compute latency per chunk.")] = False,
    chunk_ms: Annotated[int, typer.Option(help="Chunk size in milliseconds with --stream.")] = 320,
    pcm_rate: Annotated[int, typer.Option(help="Sample rate (Hz) of the raw PCM read from '-' with --stream.")] = 16000,
    plot_attention: Annotated[Path | None, typer.Option(
        "--plot-attention", metavar="DIR", help="Also write DIR/<audio stem>.png: the attention alignment of each "
        "file (attention models such as las), to see whether the model learned to align.")] = None,
) -> None:
    """Transcribe audio files. Exit code 3 if any file could not be read (the rest are still transcribed)."""
    from asrkit.transcribe import hypothesis_json, transcribe_nbest

    if stream:
        from asrkit.onnx.bundle import is_exported

        if is_exported(model):
            raise AsrkitError(f"--stream needs the PyTorch checkpoint; {model} is an exported ONNX model: "
                              "transcribe the checkpoint with --stream, or drop --stream")
        if lm or beam_size or alpha is not None or beta is not None or hotword or nbest or decode_params or set_:
            raise AsrkitError("--stream decodes with the search in the model's [decode]; drop --lm, --beam-size, "
                              "--alpha, --beta, --hotword, --nbest, --set and --decode-params, or drop --stream")
        _report_failures(transcribe_stream(model, audio, out, format, device, chunk_ms, pcm_rate), len(audio),
                         "inputs")
        return
    if any(str(a) == "-" for a in audio):
        raise AsrkitError("AUDIO '-' (raw PCM on standard input) needs --stream")
    decode = decode_request(decode_params, greedy, lm, beam_size, alpha, beta, hotword, hotword_weight, nbest, set_)
    results, failures = transcribe_nbest(model, audio, device=device, batch_size=batch_size, decode=decode,
                                         workers=workers, segment_seconds=checked_segment_seconds(segment_seconds))
    lines = [hypothesis_json(p, hyps[0], hyps if len(hyps) > 1 else ()) if format == OutputFormat.jsonl
             else f"{p}\t{hyps[0].text}" for p, hyps in results]
    text = "".join(line + "\n" for line in lines)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
    if plot_attention is not None:
        from asrkit.transcribe import plot_alignments

        written, _ = plot_alignments(model, audio, plot_attention, device=device, batch_size=batch_size,
                                     decode=decode)
        typer.echo(f"{len(written)} attention plot(s) in {plot_attention}", err=True)
    _report_failures(failures, len(audio), "files")


@app.command()
@user_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="Checkpoint (.pt), experiment folder (uses best.pt), or a folder "
                                         "written by `asrkit export` (decoded with ONNX Runtime).")],
    manifest: Annotated[Path, typer.Argument(help="JSONL manifest with reference text.")],
    report: Annotated[Path | None, typer.Option(help="JSON report: overall and per-utterance errors "
                                                "(default: <manifest stem>.report.json beside the model).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Utterances per forward pass.")] = 16,
    lm: LmOpt = None,
    beam_size: BeamOpt = None,
    alpha: AlphaOpt = None,
    beta: BetaOpt = None,
    hotword: HotwordOpt = None,
    hotword_weight: HotwordWeightOpt = None,
    decode_params: DecodeParamsOpt = None,
    greedy: GreedyOpt = False,
    set_: SetOpt = None,
    workers: WorkersOpt = 0,
    segment_seconds: SegmentOpt = None,
) -> None:
    """Word and character error rates of a model on a manifest. Exit code 3 when some utterances could not be read
    (they are named, left out of the WER and listed in the report)."""
    from asrkit.evaluate import evaluate as run
    from asrkit.onnx.bundle import export_folder

    decode = decode_request(decode_params, greedy, lm, beam_size, alpha, beta, hotword, hotword_weight, None, set_)
    if report is None:
        folder = export_folder(model)
        if folder is None:
            from asrkit.checkpoint import resolve_checkpoint

            folder = resolve_checkpoint(model).parent
        report = folder / f"{manifest.stem}.report.json"
    result = run(model, manifest, report=report, device=device, batch_size=batch_size, decode=decode,
                 workers=workers, segment_seconds=checked_segment_seconds(segment_seconds))
    typer.echo(f"WER {result.wer:.2%}  CER {result.cer:.2%}  ({len(result.utterances)} utterances, "
               f"{result.decoding}; report {report})")
    _report_failures(result.failures, len(result.utterances) + len(result.failures), "utterances",
                     " (left out of the WER; listed in the report)", ids=True)


class Quantize(StrEnum):
    int8 = "int8"


@app.command()
@user_errors
def export(
    model: Annotated[Path, typer.Argument(help="Checkpoint (.pt) or experiment folder (uses best.pt).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the ONNX graphs and asrkit-onnx.json to.")],
    quantize: Annotated[Quantize | None, typer.Option(help="int8: dynamic quantisation of the weights (smaller, "
                                                      "often faster on the CPU; measure the WER change).")] = None,
) -> None:
    """Export a model to ONNX (opset 17, dynamic batch and time) for ONNX Runtime: CTC models as model.onnx,
    transducers as encoder.onnx, predictor.onnx and joiner.onnx, beside asrkit-onnx.json (tokenizer, features,
    search settings). `asrkit transcribe OUT_DIR AUDIO` and `asrkit evaluate OUT_DIR MANIFEST` then decode with
    onnxruntime, without PyTorch. Attention (LAS) models cannot be exported."""
    from asrkit.onnx.export import export as run

    typer.echo(run(model, out_dir, quantize=quantize.value if quantize else "").summary())


class TuneMethod(StrEnum):
    grid = "grid"
    random = "random"


@app.command()
@user_errors
def tune(
    model: Annotated[Path, typer.Argument(help="Checkpoint (.pt) or experiment folder (uses best.pt).")],
    dev_manifest: Annotated[Path, typer.Argument(help="JSONL dev manifest with reference text.")],
    lm: Annotated[Path | None, typer.Option("--lm", help="KenLM word n-gram (.bin / .arpa from `asrkit lm build`); "
                                            "needed, except by an attention model with a CTC head (which can "
                                            "tune ctc_weight alone).")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the best settings (default: tune.json beside "
                                             "the model, which transcribe and evaluate then use).")] = None,
    method: Annotated[TuneMethod, typer.Option(help="grid: STEPS points per axis; random: TRIALS points.")]
    = TuneMethod.grid,
    alpha_range: Annotated[str | None, typer.Option(help="CTC: LM weights searched, MIN,MAX (default 0,2).")]
    = None,
    beta_range: Annotated[str | None, typer.Option(help="CTC: word bonuses searched, MIN,MAX (default -1,3).")]
    = None,
    weight_range: Annotated[str | None, typer.Option(help="Transducer / attention: LM weights (decode.lm_weight) "
                                                     "searched, MIN,MAX (default 0,1.5).")] = None,
    bonus_range: Annotated[str | None, typer.Option(help="Transducer / attention: word bonuses (decode.lm_bonus) "
                                                    "searched, MIN,MAX (default 0,3).")] = None,
    ctc_weight_range: Annotated[str | None, typer.Option(help="Attention with a CTC head: decode.ctc_weight "
                                                         "searched, MIN,MAX (default 0,0.6).")] = None,
    steps: Annotated[int | None, typer.Option(help="Grid points per axis (default 9 for CTC, 4 for transducer "
                                              "/ attention, which decode the dev set again for each).")] = None,
    trials: Annotated[int, typer.Option(help="Random settings tried.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the random search.")] = 0,
    beam_size: Annotated[int | None, typer.Option(help="Beams kept while tuning, and written (default: CTC the "
                                                  "checkpoint's decode.beam_size, else 32; transducer / "
                                                  "attention 8).")] = None,
    backend: Annotated[str | None, typer.Option(help="CTC beam search: flashlight (compiled, the LM's words only; "
                                                "asrkit where not installed), asrkit or pyctcdecode. Written with "
                                                "the weights: alpha and beta are tuned for it (default: "
                                                "the checkpoint's decode.backend, flashlight unless set).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Utterances per forward pass.")] = 16,
    workers: WorkersOpt = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Search the weights of a model's search on a dev set, write the best to tune.json beside the model.

    CTC: LM weight alpha and word bonus beta (--lm), on emissions computed once, decoded in parallel processes.

    Transducer / attention: lm_weight and lm_bonus of the word LM (--lm) fused into the beam search, and ctc_weight
    of an attention model with a CTC head; the dev set is decoded again for every setting."""
    from asrkit.tune import tune as run

    def parsed(value: str | None, option: str) -> tuple[float, float] | None:
        return None if value is None else _parse_range(value, option)

    result = run(model, dev_manifest, lm, out=out, method=method.value,
                 alpha_range=parsed(alpha_range, "--alpha-range"), beta_range=parsed(beta_range, "--beta-range"),
                 weight_range=parsed(weight_range, "--weight-range"), bonus_range=parsed(bonus_range, "--bonus-range"),
                 ctc_weight_range=parsed(ctc_weight_range, "--ctc-weight-range"), steps=steps, trials=trials,
                 seed=seed, beam_size=beam_size, backend=backend,
                 device=device, batch_size=batch_size, workers=workers, progress=progress)
    typer.echo(result.summary())
    _report_failures(result.failures, result.utterances + len(result.failures), "utterances",
                     " (left out of the tuning)", ids=True)


def main() -> None:
    app()
