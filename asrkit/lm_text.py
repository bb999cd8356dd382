"""LM text against held-out transcripts: how much of a manifest's text an LM text contains (`asrkit lm overlap`),
and leaving out the LM lines that leak it (`asrkit lm build --exclude`).

Book text for a LibriSpeech LM may hold the very chapters the dev and test speakers read (LibriSpeech's audio is
LibriVox readings of Gutenberg books): an LM trained on them has seen the answers. Two measures of a leak:

- held-out sentences found verbatim: manifest transcripts that occur whole in the text (a line, or inside one);
- the share of the manifest's distinct word n-grams (n = 5) that occur in the text (within a line).

Some 5-gram overlap is normal ("one of the most", "i do not know what"): common phrases are in any large text.
A leak shows in long spans, so the exclusion drops an LM line when it
- contains a held-out transcript (or is one), or
- shares WINDOW (10) consecutive words with a held-out transcript, or
- has n to WINDOW-1 words and occurs whole inside a held-out transcript (a short sentence of the held-out passage);
and leaves everything else, common phrases included. The held-out 5-gram overlap before and after says what it did.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asrkit.errors import AsrkitError
from asrkit.lm_files import is_manifest, lm_normaliser, read_lm_text, read_numbered_lm_text

N = 5  # the n-gram order of the overlap measure
WINDOW = 10  # an LM line sharing this many consecutive words with a held-out transcript is dropped
SHOWN = 10  # the worst LM lines a report lists


class HeldOut:
    """The text of held-out manifests as sets of word n-grams: what an LM text is checked against."""

    def __init__(self, sentences: Iterable[str], n: int = N, window: int = WINDOW) -> None:
        if n < 1 or window < n:
            raise AsrkitError(f"--n {n} and --window {window}: need 1 <= n <= window")
        self.n, self.window = n, window
        self.sentences = sorted({s for s in sentences if s})
        if not self.sentences:
            raise AsrkitError("the held-out manifests have no text to check against")
        self.ngrams: set[str] = set()  # every distinct n-gram: the overlap measure
        self.spans: set[str] = set()  # every span of n to `window` words: the exclusion
        self.by_first: dict[str, list[str]] = {}  # first n-gram -> transcripts starting with it
        self.short: set[str] = set()  # transcripts of fewer than n words: found only as a whole line
        for sentence in self.sentences:
            words = sentence.split()
            if len(words) < n:
                self.short.add(sentence)
                continue
            self.by_first.setdefault(" ".join(words[:n]), []).append(sentence)
            for k in range(n, window + 1):
                grams = {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}
                self.spans |= grams
                if k == n:
                    self.ngrams |= grams
        self.first_words = {g.split(" ", 1)[0] for g in self.ngrams}  # a cheap test before joining n words

    @classmethod
    def from_manifests(cls, manifests: Sequence[str | Path], normaliser: str | None = None, n: int = N,
                       window: int = WINDOW) -> HeldOut:
        """The held-out text of JSONL manifests, through the LM text's normaliser."""
        for path in manifests:
            if not is_manifest(Path(path)):
                raise AsrkitError(f"{path}: expected a JSONL manifest (.jsonl, .jsonl.gz) of held-out transcripts")
        return cls(read_lm_text(manifests, lm_normaliser(manifests, normaliser)), n, window)

    def found_in(self, words: list[str]) -> set[str]:
        """The held-out n-grams in a line's words."""
        n, first, grams = self.n, self.first_words, self.ngrams
        return {g for i in range(len(words) - n + 1) if words[i] in first
                and (g := " ".join(words[i:i + n])) in grams}

    def sentences_in(self, line: str, found: set[str]) -> list[str]:
        """Held-out transcripts of n words or more that occur whole in `line`; `found`: its held-out n-grams."""
        padded = f" {line} "
        return [s for g in found for s in self.by_first.get(g, ()) if f" {s} " in padded]

    def leak(self, line: str, words: list[str], found: set[str]) -> str | None:
        """Why the line leaks held-out text ("sentence", "span", "inside"), or None. `found`: its n-grams.
        Transcripts shorter than n words ("yes") are too common to leak anything: no line is dropped for them."""
        if not found:
            return None
        if self.sentences_in(line, found):
            return "sentence"
        if len(words) < self.window:
            return "inside" if line in self.spans else None
        k = self.window
        if any(" ".join(words[i:i + k]) in self.spans for i in range(len(words) - k + 1)):
            return "span"
        return None


@dataclass
class Overlap:
    """What an LM text holds of a held-out text, as it is and after the exclusion."""

    held_out: HeldOut
    lines: int = 0
    words: int = 0
    found: set[str] = field(default_factory=set)  # held-out n-grams in the text
    kept_found: set[str] = field(default_factory=set)  # ... in the lines the exclusion keeps
    sentences: set[str] = field(default_factory=set)  # held-out transcripts found whole
    dropped: Counter[str] = field(default_factory=Counter)  # lines the exclusion drops, by reason
    dropped_words: int = 0
    worst: list[tuple[int, int, str, str]] = field(default_factory=list)  # (n-grams, -order, where, line): a heap
    by_file: Counter[str] = field(default_factory=Counter)  # dropped lines per file
    _order: int = 0

    def add(self, line: str, where: str = "", file: str = "") -> bool:
        """Count a line of the LM text; True when the exclusion keeps it."""
        words = line.split()
        self.lines += 1
        self.words += len(words)
        found = self.held_out.found_in(words) if len(words) >= self.held_out.n else set()
        if found:
            self.found |= found
            self.sentences.update(self.held_out.sentences_in(line, found))
            self._order += 1
            item = (len(found), -self._order, where, line)
            if len(self.worst) < SHOWN:
                heapq.heappush(self.worst, item)
            elif item > self.worst[0]:
                heapq.heapreplace(self.worst, item)
        elif line in self.held_out.short:
            self.sentences.add(line)
        reason = self.held_out.leak(line, words, found)
        if reason is None:
            self.kept_found |= found
            return True
        self.dropped[reason] += 1
        self.dropped_words += len(words)
        self.by_file[file] += 1
        return False

    def filter(self, lines: Iterable[str]) -> Iterator[str]:
        """The lines the exclusion keeps, each counted."""
        return (line for line in lines if self.add(line))

    def _share(self, found: set[str]) -> str:
        total = len(self.held_out.ngrams)
        return f"{len(found)}/{total} ({100 * len(found) / max(total, 1):.2f}%)"

    def exclusion_summary(self) -> str:
        """One line for `lm build --exclude`: what was dropped, the held-out n-gram overlap before and after."""
        n, k = self.held_out.n, self.held_out.window
        kinds = (f"{self.dropped['sentence']} holding a held-out transcript, {self.dropped['span']} sharing {k} "
                 f"words with one, {self.dropped['inside']} of {n}-{k - 1} words inside one")
        return (f"left out {sum(self.dropped.values())} of {self.lines} LM line(s) ({self.dropped_words} words: "
                f"{kinds}); held-out {n}-grams in the LM text: {self._share(self.found)} before, "
                f"{self._share(self.kept_found)} after")

    def report(self) -> str:
        """The full report of `asrkit lm overlap`."""
        held, n = self.held_out, self.held_out.n
        count = len(held.sentences)
        rows = [f"held-out text: {count} distinct transcripts, {len(held.ngrams)} distinct word {n}-grams",
                f"LM text: {self.lines} lines, {self.words} words",
                f"held-out transcripts found verbatim in the LM text: {len(self.sentences)}/{count} "
                f"({100 * len(self.sentences) / count:.2f}%)",
                f"held-out {n}-grams found in the LM text: {self._share(self.found)}",
                f"exclusion (`asrkit lm build --exclude`, window {held.window}): " + self.exclusion_summary()]
        if self.by_file:
            rows.append("lines dropped per file: " + ", ".join(f"{f}: {c}" for f, c in self.by_file.most_common(5)))
        if self.worst:
            rows.append(f"LM lines with the most held-out {n}-grams:")
            rows += [f"  {where}: {grams} {n}-grams: {line[:100]}{'...' if len(line) > 100 else ''}"
                     for grams, _, where, line in sorted(self.worst, reverse=True)]
        for sentence in sorted(self.sentences)[:SHOWN]:
            rows.append(f"  held-out transcript found verbatim: {sentence[:100]}")
        return "\n".join(rows)


def overlap(texts: Sequence[str | Path], manifests: Sequence[str | Path], *, n: int = N, window: int = WINDOW,
            normaliser: str | None = None) -> Overlap:
    """How much of the manifests' text the LM text contains (see the module's doc), both normalised alike."""
    name = lm_normaliser([*manifests, *texts], normaliser)
    result = Overlap(HeldOut.from_manifests(manifests, name, n, window))
    for path, lineno, line in read_numbered_lm_text(texts, name):
        result.add(line, f"{path}:{lineno}", str(path))
    return result
