"""Build KenLM word n-grams: `asrkit lm build` (lmplz / build_binary on text normalised like the transcripts), and
the one-time conversion of a gzipped ARPA (LibriSpeech's 3-gram.arpa.gz, 4-gram.arpa.gz) to a KenLM binary.

The LM text goes through a named normaliser of asrkit.data.text.NORMALISERS: the one given, else the one recorded
beside the manifests among the inputs (normaliser.json, written by `asrkit prepare`), else "default". Lines that
normaliser refuses (Common Voice's: digits, letters outside the language's alphabet) are left out and counted.

Text is streamed: LibriSpeech's 800 M words of LM text (librispeech-lm-norm.txt.gz) go from the gzip file
through the normalisation into lmplz's standard input, never written out in between.

Files of an LM built to `OUT` (a stem; a trailing .arpa / .bin is dropped):
    OUT.arpa           the ARPA text model (lmplz)
    OUT.bin            the KenLM binary (build_binary): what `--lm` should point at, it loads fastest
    OUT.unigrams.txt   its words, one a line: the decoders' list of known words
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asrkit.data.text import DEFAULT
from asrkit.errors import AsrkitError
from asrkit.io import atomic_path
from asrkit.lm_files import Refused, lm_normaliser, lm_stem, read_lm_text, unigram_words
from asrkit.lm_text import WINDOW, HeldOut, Overlap
from asrkit.progress import say

KENLM_TOOLS_HINT = "run `make kenlm` (builds lmplz and build_binary into tools/kenlm/bin)"
TOOL_DIR = Path(__file__).resolve().parent.parent / "tools" / "kenlm" / "bin"  # where `make kenlm` puts them


def find_tool(name: str) -> Path:
    """A KenLM program (lmplz, build_binary) on PATH, else in the project's tools/kenlm/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    local = TOOL_DIR / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    raise AsrkitError(f"KenLM's {name} was not found on PATH nor in {TOOL_DIR}; {KENLM_TOOLS_HINT}, "
                      f"or put a KenLM build's bin/ folder on PATH")


@dataclass(frozen=True)
class BuiltLM:
    arpa: Path
    binary: Path
    unigrams: Path
    order: int
    sentences: int
    words: int  # running words of training text
    vocabulary: int  # distinct words
    normaliser: str = DEFAULT  # the text normaliser the training text went through
    refused: Refused = field(default_factory=Refused)  # lines it refused, left out
    excluded: str = ""  # what --exclude left out (asrkit.lm_text.Overlap.exclusion_summary), "" without it

    def summary(self) -> str:
        left_out = (f"; left out {self.refused.lines} line(s) the normaliser refused (first: {self.refused.first})"
                    if self.refused.lines else "")
        return (f"{self.order}-gram LM from {self.sentences} sentences ({self.words} words, vocabulary "
                f"{self.vocabulary}) normalised by {self.normaliser} -> {self.binary} (+ {self.arpa.name}, "
                f"{self.unigrams.name}); decode with --lm {self.binary}{left_out}"
                f"{f'; --exclude: {self.excluded}' if self.excluded else ''}")


def build_lm(texts: Sequence[str | Path], out: str | Path, *, order: int = 4, prune: Sequence[int] = (),
             memory: str = "20%", discount_fallback: bool = True, normaliser: str | None = None,
             exclude: Sequence[str | Path] = (), exclude_window: int | None = None, trie: bool = False) -> BuiltLM:
    """Train a word n-gram with lmplz on normalised text, write OUT.arpa, OUT.bin and OUT.unigrams.txt.

    `normaliser` names the text normaliser (None: the one recorded beside the manifests among `texts`, else
    "default"; see `lm_normaliser`).

    `prune` are lmplz's --prune counts per order (e.g. 0 1 1: drop singleton 2- and 3-grams).
    `discount_fallback` lets lmplz estimate small or artificial corpora (such as digit strings) whose
    count-of-counts break Kneser-Ney's discounts.
    `exclude` are held-out manifests (dev, test): LM lines that leak their text are left out, by the rule of
    asrkit.lm_text (a held-out transcript inside the line, or `exclude_window` (10) consecutive words shared with
    one); the summary says how many and the held-out 5-gram overlap before and after.
    `trie` stores the binary as KenLM's trie with 8-bit quantised weights (build_binary -q 8 -b 8 trie): a
    third of the default probing table's size or less, for large LMs, at a little query speed."""
    if order < 2:
        raise AsrkitError(f"--order {order} must be at least 2 (KenLM's minimum; 3 to 5 is usual for words)")
    if len(prune) > order:
        raise AsrkitError(f"--prune has {len(prune)} thresholds but the LM has order {order}; give at most one "
                          "per order, e.g. --prune 0,1,1")
    if any(p < 0 for p in prune) or list(prune) != sorted(prune):
        raise AsrkitError(f"--prune {','.join(map(str, prune))}: thresholds must be >= 0 and non-decreasing")
    normaliser = lm_normaliser([*texts, *exclude], normaliser)
    held_out = None
    if exclude:

        held_out = Overlap(HeldOut.from_manifests(exclude, normaliser, window=exclude_window or WINDOW))
    lmplz, build_binary = find_tool("lmplz"), find_tool("build_binary")
    stem = lm_stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    arpa, binary, unigram_path = Path(f"{stem}.arpa"), Path(f"{stem}.bin"), Path(f"{stem}.unigrams.txt")
    counts = {"sentences": 0, "words": 0}
    vocab: set[str] = set()
    refused = Refused()

    def corpus() -> Iterator[str]:  # the normalised text, counted as lmplz reads it
        for sentence in read_lm_text(texts, normaliser, refused):
            if held_out is not None and not held_out.add(sentence):
                continue
            tokens = sentence.split()
            vocab.update(tokens)
            counts["sentences"] += 1
            counts["words"] += len(tokens)
            yield sentence + "\n"

    lines = corpus()
    first = next(lines, None)
    if first is None:
        raise AsrkitError(f"no text in {', '.join(map(str, texts))} after normalisation ({normaliser})"
                          f"{f'; {refused.lines} line(s) refused, first {refused.first}' if refused.lines else ''}"
                          "; nothing to train on")
    with tempfile.TemporaryDirectory(prefix="asrkit-lm-", dir=stem.parent) as work, atomic_path(arpa) as arpa_tmp:
        cmd = [str(lmplz), "-o", str(order), "-S", memory, "-T", work, "--arpa", str(arpa_tmp)]
        if prune:
            cmd += ["--prune", *map(str, prune)]
        if discount_fallback:
            cmd.append("--discount_fallback")
        _pipe(itertools.chain([first], lines), cmd, "lmplz")  # streamed: no copy of a large corpus on disk
    with atomic_path(binary) as binary_tmp:
        layout = ["-q", "8", "-b", "8", "trie"] if trie else []
        _run([str(build_binary), "-s", *layout, str(arpa), str(binary_tmp)], "build_binary")
    unigram_path.write_text("".join(w + "\n" for w in sorted(vocab)), encoding="utf-8")
    return BuiltLM(arpa, binary, unigram_path, order, counts["sentences"], counts["words"], len(vocab), normaliser,
                   refused, held_out.exclusion_summary() if held_out is not None else "")


def _run(cmd: list[str], name: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-4:])
        raise AsrkitError(f"{name} failed (exit {proc.returncode}): {tail[:600]}; command: {' '.join(cmd)}")


# ---------------------------------------------------------------------------------------------- gzipped ARPA


GZ_CACHE_SUFFIX = ".asrkit.bin"  # the binary of a gzipped ARPA, beside it: 3-gram.arpa.gz -> 3-gram.asrkit.bin


def binary_of_gzipped_arpa(gz: Path) -> Path:
    """A gzipped ARPA (LibriSpeech's 3-gram.arpa.gz, 4-gram.arpa.gz) as a KenLM binary, converted once and
    cached beside it (or under ~/.cache/asrkit/lm when its folder is read-only) with its word list:
    STEM.asrkit.bin and STEM.asrkit.unigrams.txt. Loading a binary takes seconds where the ARPA takes minutes.

    The words are lower-cased on the way (asrkit's transcripts are; LibriSpeech's LMs are upper case) unless
    that would merge two of them. Without KenLM's build_binary the lower-cased ARPA is cached instead."""
    stem = gz.name[: -len(".arpa.gz")]
    folder = gz.parent if _writable(gz.parent) else _user_cache(gz)
    sidecar = folder / f"{stem}.asrkit.unigrams.txt"
    binary, arpa = folder / f"{stem}{GZ_CACHE_SUFFIX}", folder / f"{stem}.asrkit.arpa"
    for cached in (binary, arpa):
        if cached.is_file() and sidecar.is_file() and cached.stat().st_mtime >= gz.stat().st_mtime:
            return cached
    try:
        build_binary: Path | None = find_tool("build_binary")
    except AsrkitError:
        build_binary = None
    out = binary if build_binary is not None else arpa
    say(f"note: converting {gz} once to {out} (words lower-cased like the transcripts); later runs load that")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        words = _convert_arpa(gz, tmp, build_binary)
    sidecar.write_text("".join(w + "\n" for w in unigram_words(words)), encoding="utf-8")
    return out


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _user_cache(gz: Path) -> Path:
    import hashlib

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asrkit" / "lm"
    return base / hashlib.sha1(str(gz.resolve()).encode()).hexdigest()[:12]


def _convert_arpa(gz: Path, out: Path, build_binary: Path | None) -> list[str]:
    """Stream a gzipped ARPA, lower-cased where that merges no two words, through build_binary into the
    binary `out` (or, without build_binary, into the ARPA `out`); returns its words, as written. The 1-grams
    come first in an ARPA: they decide the case before anything is written."""
    try:
        with gzip.open(gz, "rt", encoding="utf-8") as f:
            head: list[str] = []
            words: list[str] = []
            for line in f:  # the header and the 1-grams
                head.append(line)
                if line.startswith(("\\2-grams:", "\\end\\")):
                    break
                parts = line.split("\t")
                if len(parts) >= 2 and not line.startswith("\\"):
                    words.append(parts[1].strip())
            if not words:
                raise AsrkitError(f"{gz}: no \\1-grams: section, not an ARPA language model")
            fold = any(w != w.lower() for w in words) and len({w.lower() for w in words}) == len(set(words))
            lines = (line.lower() if fold else line for line in itertools.chain(head, f))
            if build_binary is None:
                with out.open("w", encoding="utf-8") as dest:
                    dest.writelines(lines)
            else:
                _pipe(lines, [str(build_binary), "-s", "/dev/stdin", str(out)], f"build_binary (converting {gz})")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise AsrkitError(f"{gz}: cannot read it as a gzipped ARPA file ({err})") from None
    return [w.lower() for w in words] if fold else words


def _pipe(lines: Iterable[str], cmd: list[str], name: str) -> None:
    """Write `lines` to the standard input of `cmd`; its error output, if it fails, in the message."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            with io.TextIOWrapper(proc.stdin, encoding="utf-8") as dest:  # type: ignore[arg-type,type-var]
                dest.writelines(lines)
        except BrokenPipeError:
            pass  # it stopped reading: its exit status says why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.wait() != 0:
            errors.seek(0)
            tail = " | ".join(errors.read().decode(errors="replace").strip().splitlines()[-4:])
            raise AsrkitError(f"{name} failed (exit {proc.returncode}): {tail[:600]}; command: {' '.join(cmd)}")
