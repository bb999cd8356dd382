"""`asrkit prepare ...`: the sub-commands that turn a corpus into JSONL manifests (prepare_app, which asrkit/cli.py
adds to the `asrkit` app). Like every command, each parses and validates, then calls ONE library function.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from asrkit.cli_common import EXIT_PARTIAL, user_errors
from asrkit.errors import AsrkitError

prepare_app = typer.Typer(help="Turn a corpus into JSONL manifests (one per split) in OUT.", no_args_is_help=True)

def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise AsrkitError(f"--workers {workers} must be at least 1")


SHOW_SKIPPED = 20  # prepare names this many skipped inputs on stderr; skipped.tsv lists them all


def _print_summary(result: Any) -> None:
    """The skipped inputs (the first SHOW_SKIPPED) on stderr, then the summary; EXIT_PARTIAL if any was skipped."""
    for item in result.skipped[:SHOW_SKIPPED]:
        typer.echo(f"skipped {item.path}: {item.reason}", err=True)
    if len(result.skipped) > SHOW_SKIPPED:
        typer.echo(f"... and {len(result.skipped) - SHOW_SKIPPED:,} more, in {result.report_path}", err=True)
    typer.echo(result.summary())
    if result.skipped:
        raise typer.Exit(EXIT_PARTIAL)


@prepare_app.command("folder")
@user_errors
def prepare_folder(
    corpus_dir: Annotated[Path, typer.Argument(help="Folder of audio files, each with a same-stem .txt transcript.")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write <split>.jsonl manifests and skipped.tsv.")],
    list_file: Annotated[Path | None, typer.Option("--list", help="TSV or CSV of path,text[,speaker] instead of "
                                                   ".txt files; relative paths are under CORPUS_DIR.")] = None,
    name: Annotated[str, typer.Option(help="Split name when nothing is held out.")] = "all",
    dev_fraction: Annotated[float, typer.Option(help="Fraction held out as dev (writes train/dev/test).")] = 0.0,
    test_fraction: Annotated[float, typer.Option(help="Fraction held out as test.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the random split.")] = 0,
    workers: Annotated[int, typer.Option(help="Threads measuring durations.")] = 4,
) -> None:
    """Prepare a folder of audio + text. Exit code 3 when some files were skipped (listed in skipped.tsv)."""
    from asrkit.prepare import folder

    for frac, opt in ((dev_fraction, "--dev-fraction"), (test_fraction, "--test-fraction")):
        if not 0.0 <= frac < 1.0:
            raise AsrkitError(f"{opt} {frac} must be in [0, 1)")
    _print_summary(folder.prepare(corpus_dir, out_dir, list_file=list_file, name=name, dev_fraction=dev_fraction,
                                  test_fraction=test_fraction, seed=seed, workers=workers))


class FsddSplit(StrEnum):
    official = "official"
    speaker = "speaker"


@prepare_app.command("fsdd")
@user_errors
def prepare_fsdd(
    corpus_dir: Annotated[Path, typer.Argument(help="FSDD folder (holding recordings/ or the recordings).")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write train/dev/test.jsonl (and audio/ if --connected).")],
    split: Annotated[FsddSplit, typer.Option(help="official: test = takes 0-4 of every digit and speaker; "
                                             "speaker: test = all of --test-speakers.")] = FsddSplit.official,
    dev_speakers: Annotated[str, typer.Option(help="Comma-separated speakers whose training takes form a "
                                              "speaker-disjoint dev split, e.g. 'theo'.")] = "",
    test_speakers: Annotated[str, typer.Option(help="Comma-separated test speakers (with --split speaker).")] = "",
    connected: Annotated[bool, typer.Option(help="Concatenate one speaker's recordings into connected-digit "
                                            "utterances (TIDIGITS style).")] = False,
    min_digits: Annotated[int, typer.Option(help="Fewest digits per connected utterance.")] = 2,
    max_digits: Annotated[int, typer.Option(help="Most digits per connected utterance.")] = 5,
    passes: Annotated[int, typer.Option(help="Times each recording is used in connected utterances.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for grouping and silences.")] = 0,
    workers: Annotated[int, typer.Option(help="Threads measuring durations.")] = 4,
) -> None:
    """Prepare the Free Spoken Digit Dataset (isolated digits or connected digits)."""
    from asrkit.prepare import fsdd

    if not 1 <= min_digits <= max_digits:
        raise AsrkitError(f"--min-digits {min_digits} / --max-digits {max_digits}: need 1 <= min <= max")
    if passes < 1:
        raise AsrkitError(f"--passes {passes} must be at least 1")
    _print_summary(fsdd.prepare(corpus_dir, out_dir, split=split.value, dev_speakers=_split_list(dev_speakers),
                                test_speakers=_split_list(test_speakers), connected=connected,
                                min_digits=min_digits, max_digits=max_digits, passes=passes, seed=seed,
                                workers=workers))


@prepare_app.command("librispeech")
@user_errors
def prepare_librispeech(
    out_dir: Annotated[Path, typer.Argument(help="Where to write <subset>.jsonl manifests, skipped.tsv and, when "
                                            "extracting or downloading, download/.")],
    subsets: Annotated[str, typer.Option(help="Comma-separated subsets: dev-clean, dev-other, test-clean, test-other, "
                                         "train-clean-100, train-clean-360, train-other-500, and Mini "
                                         "LibriSpeech's dev-clean-2, train-clean-5.")],
    corpus_dir: Annotated[Path | None, typer.Option(help="Folder holding an extracted LibriSpeech/<subset>/ (or "
                                                    "<subset>/) or the <subset>.tar.gz files.")] = None,
    download: Annotated[bool, typer.Option(help="Fetch subsets not found locally from openslr.org into "
                                           "OUT/download/ (resumable; MD5-checked for the full corpus).")] = False,
    base_url: Annotated[str | None, typer.Option(help="Mirror to download from instead of openslr.org "
                                                 "(default: $ASRKIT_LIBRISPEECH_URL if set).")] = None,
    workers: Annotated[int, typer.Option(help="Threads measuring durations.")] = 4,
    dev_speakers: Annotated[str, typer.Option(help="Comma-separated speaker ids whose utterances leave the train-* "
                                              "subsets for a speaker-disjoint dev-heldout.jsonl.")] = "",
) -> None:
    """Prepare LibriSpeech: one manifest per subset, with speaker and chapter. Exit code 3 when some files were
    skipped (listed in skipped.tsv)."""
    from asrkit.prepare import librispeech

    if corpus_dir is None and not download:
        raise AsrkitError("give --corpus-dir (an extracted LibriSpeech or its .tar.gz files) or --download")
    _check_workers(workers)
    _print_summary(librispeech.prepare(out_dir, subsets=_split_list(subsets), corpus_dir=corpus_dir,
                                       download=download, base_url=base_url, workers=workers,
                                       dev_speakers=_split_list(dev_speakers)))


@prepare_app.command("commonvoice")
@user_errors
def prepare_commonvoice(
    cv_dir: Annotated[Path, typer.Argument(help="Language folder of an extracted Common Voice release (holding "
                                           "clips/ and the .tsv files), e.g. cv-corpus-17.0/en.")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write <split>.jsonl, skipped.tsv and the flac/ cache.")],
    lang: Annotated[str, typer.Option(help="Locale of the release (en, de, fr, ...); selects the letters kept "
                                      "by text normalisation.")] = "en",
    splits: Annotated[str, typer.Option(help="Comma-separated TSVs to prepare (train, dev, test, validated, other, "
                                        "invalidated). Without train/dev/test.tsv, validated.tsv is divided "
                                        "by speaker.")] = "train,dev,test",
    min_upvotes: Annotated[int, typer.Option(help="Drop clips with fewer up-votes.")] = 0,
    min_duration: Annotated[float, typer.Option(help="Drop clips shorter than this (seconds).")] = 0.5,
    max_duration: Annotated[float, typer.Option(help="Drop clips longer than this (seconds).")] = 20.0,
    sample_rate: Annotated[int, typer.Option(help="Sample rate of the FLAC cache (Hz).")] = 16000,
    workers: Annotated[int, typer.Option(help="Threads converting MP3 to FLAC.")] = 4,
) -> None:
    """Prepare Common Voice: MP3 -> FLAC cache (resumable), vote/duration filters, per-language text
    normalisation. Exit code 3 when some clips were skipped (listed in skipped.tsv)."""
    from asrkit.prepare import commonvoice

    if min_upvotes < 0:
        raise AsrkitError(f"--min-upvotes {min_upvotes} must be 0 or more")
    if not 0 <= min_duration < max_duration:
        raise AsrkitError(f"--min-duration {min_duration} / --max-duration {max_duration}: need 0 <= min < max")
    _check_workers(workers)
    _print_summary(commonvoice.prepare(cv_dir, out_dir, lang=lang, splits=_split_list(splits),
                                       min_upvotes=min_upvotes, min_duration=min_duration,
                                       max_duration=max_duration, sample_rate=sample_rate, workers=workers))


@prepare_app.command("an4")
@user_errors
def prepare_an4(
    corpus_dir: Annotated[Path, typer.Argument(help="The AN4 folder holding etc/ and wav/ (SPHERE or big-endian "
                                               ".raw), or a folder holding an4/.")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write train/dev/test.jsonl and skipped.tsv.")],
    dev_speakers: Annotated[int, typer.Option(help="Move this many training speakers (chosen deterministically) "
                                              "to a speaker-disjoint dev split.")] = 0,
    workers: Annotated[int, typer.Option(help="Threads measuring durations and converting .raw files.")] = 4,
) -> None:
    """Prepare the CMU AN4 census corpus: train and test as the corpus defines them, optional dev. Exit code 3
    when some files were skipped (listed in skipped.tsv)."""
    from asrkit.prepare import an4

    if dev_speakers < 0:
        raise AsrkitError(f"--dev-speakers {dev_speakers} must be 0 or more")
    _check_workers(workers)
    _print_summary(an4.prepare(corpus_dir, out_dir, dev_speakers=dev_speakers, workers=workers))
