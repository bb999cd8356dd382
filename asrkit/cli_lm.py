"""`asrkit lm ...`: word n-gram language models (lm_app, which asrkit/cli.py adds to the `asrkit` app): `build`
(KenLM's lmplz on normalised text, optionally without held-out text) and `overlap` (how much of held-out
transcripts an LM text holds). Like every command, each parses and validates, then calls ONE library function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from asrkit.cli_common import user_errors
from asrkit.errors import AsrkitError

lm_app = typer.Typer(help="Word n-gram language models (KenLM) for CTC beam search.", no_args_is_help=True)


@lm_app.command("build")
@user_errors
def lm_build(
    text: Annotated[list[Path], typer.Argument(help="Training text: plain or .gz files (a sentence a line) or "
                                               "JSONL manifests (their text fields).")],
    out: Annotated[Path, typer.Option(help="Output stem: writes OUT.arpa, OUT.bin (KenLM binary, for --lm) and "
                                      "OUT.unigrams.txt.")],
    order: Annotated[int, typer.Option(help="N-gram order.")] = 4,
    prune: Annotated[str, typer.Option(help="lmplz --prune counts per order, e.g. 0,1,1 drops singleton 2- and "
                                       "3-grams.")] = "",
    memory: Annotated[str, typer.Option(help="lmplz -S: memory for sorting, e.g. 20% or 2G.")] = "20%",
    normaliser: Annotated[str | None, typer.Option(help="Text normaliser (asrkit.data.text.NORMALISERS), e.g. "
                                                   "default, commonvoice-en; by default the one `asrkit prepare` "
                                                   "recorded beside the manifests given, else default.")] = None,
    exclude: Annotated[list[Path] | None, typer.Option(help="Held-out manifest (dev, test; repeatable): leave out "
                                                       "the LM lines that hold one of its transcripts or share "
                                                       "--exclude-window words with one, and report the held-out "
                                                       "5-gram overlap before and after.")] = None,
    exclude_window: Annotated[int, typer.Option(help="Consecutive words an LM line may share with a held-out "
                                                "transcript before --exclude drops it.")] = 10,
    trie: Annotated[bool, typer.Option("--trie", help="Binary as a trie with 8-bit quantised weights: a third of "
                                       "the default layout's size or less, for large LMs.")] = False,
) -> None:
    """Train a word n-gram LM with KenLM's lmplz on text normalised like the transcripts (needs `make kenlm`)."""
    from asrkit.lm_build import build_lm

    try:
        counts = [int(p) for p in prune.split(",") if p.strip()]
    except ValueError:
        raise AsrkitError(f"--prune {prune!r}: expected integers like 0,1,1") from None
    typer.echo(build_lm(text, out, order=order, prune=counts, memory=memory, normaliser=normaliser,
                        exclude=exclude or (), exclude_window=exclude_window, trie=trie).summary())


@lm_app.command("overlap")
@user_errors
def lm_overlap(
    text: Annotated[Path, typer.Argument(help="LM text: a plain or .gz file, a sentence a line.")],
    manifest: Annotated[list[Path], typer.Argument(help="Held-out JSONL manifests (dev, test) to look for.")],
    n: Annotated[int, typer.Option("--n", help="N-gram order of the overlap measure.")] = 5,
    window: Annotated[int, typer.Option(help="The exclusion's window, as `lm build --exclude-window`.")] = 10,
    normaliser: Annotated[str | None, typer.Option(help="Text normaliser, as for `lm build`.")] = None,
) -> None:
    """How much of held-out transcripts an LM text contains: transcripts found verbatim, the share of their word
    n-grams found, the worst LM lines, and what `lm build --exclude` would leave out."""
    from asrkit.lm_text import overlap

    typer.echo(overlap([text], manifest, n=n, window=window, normaliser=normaliser).report())
