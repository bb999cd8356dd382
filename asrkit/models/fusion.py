"""Shallow fusion of a KenLM word n-gram into the searches that emit tokens one at a time (the transducer's
beam search, the attention decoder's): a hypothesis is ranked by

    log p_model(tokens | x) + weight x ln p_LM(words) + bonus x |words|

where the words are the tokens spelt out (a character tokenizer's space, or a sentencepiece "▁", ends a word).
A completed word is scored when the next word starts (and the last one at the end, with </s>); the word still
being spelt scores by its likeliest completion's unigram (look-ahead), or the LM's unknown-word penalty when no
known word starts with it, so that a hypothesis is not ranked up merely for having an unfinished word.

`WordFusion` does the bookkeeping on immutable `Fused` states; `WordLMScorer` is the scorer the attention beam
search (las_search.beam_search) takes. Both need `asrkit.lm.WordLM` (the LM is loaded once, outside the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from asrkit.lm import WordLM

LN10 = 2.302585092994046  # KenLM scores are log10
WORD_START = "\u2581"  # sentencepiece's word-start mark
EOS = 0  # the attention decoder's end of sentence (the blank id of CTC models)


@dataclass(frozen=True)
class Fused:
    """The LM side of one hypothesis: KenLM state after its completed words, their weighted score, the partial word."""

    lm_state: Any
    words: float  # weight x ln p(completed words) + bonus x their count
    partial: str  # characters of the word being spelt


class WordFusion:
    """Incremental word-LM scores of token sequences (see the module docstring). `vocab`: the tokenizer's vocabulary
    (id 0 = blank / EOS, never a character)."""

    def __init__(self, lm: WordLM, vocab: Sequence[str], weight: float, bonus: float = 0.0,
                 lookahead: bool = True) -> None:
        self.lm, self.weight, self.bonus, self.lookahead = lm, weight, bonus, lookahead
        # Each token as (starts a new word, characters it adds).
        self.pieces: list[tuple[bool, str]] = [(False, "")]
        for piece in vocab[1:]:
            if piece == " ":
                self.pieces.append((True, ""))
            elif piece.startswith(WORD_START):
                self.pieces.append((True, piece[len(WORD_START):]))
            else:
                self.pieces.append((False, piece))

    def start(self) -> Fused:
        return Fused(self.lm.start(), 0.0, "")

    def _complete(self, state: Fused) -> tuple[Any, float]:
        """The LM state and weighted score once the partial word (if any) is a word."""
        if not state.partial:
            return state.lm_state, state.words
        logp, out = self.lm.score(state.lm_state, state.partial)
        return out, state.words + self.weight * LN10 * logp + self.bonus

    def extend(self, state: Fused, token: int) -> Fused:
        if token == EOS:
            return state
        new_word, chars = self.pieces[token]
        if new_word and state.partial:
            lm_state, words = self._complete(state)
            return Fused(lm_state, words, chars)
        return Fused(state.lm_state, state.words, state.partial + chars)

    def value(self, state: Fused) -> float:
        """Weighted LM score of a hypothesis still being searched: completed words + look-ahead on the partial."""
        if not state.partial or not self.lookahead:
            return state.words
        best = self.lm.lookahead(state.partial)
        return state.words + self.weight * LN10 * (self.lm.unk_offset if best is None else best)

    def final(self, state: Fused) -> float:
        """Weighted LM score of a finished hypothesis: the partial word completed, then </s>."""
        lm_state, words = self._complete(state)
        return words + self.weight * LN10 * self.lm.end(lm_state)


class WordLMScorer:
    """Word-LM shallow fusion as a scorer of las_search.beam_search: each candidate token adds the change in
    `WordFusion.value`; a candidate EOS adds the change to `WordFusion.final`. State: a `Fused` per hypothesis."""

    def __init__(self, fusion: WordFusion) -> None:
        self.fusion = fusion

    def start(self, b: int, k: int) -> list[list[Fused]]:
        first = self.fusion.start()
        return [[first] * k for _ in range(b)]

    def score(self, states: list[list[Fused]], cands: torch.Tensor,
              alive: torch.Tensor) -> tuple[torch.Tensor, list[list[list[Fused]]]]:
        scores = torch.zeros(cands.shape)
        new: list[list[list[Fused]]] = []
        for j, (per_beam, live) in enumerate(zip(cands.tolist(), alive.tolist(), strict=True)):
            new.append([])
            for s, (tokens, ok) in enumerate(zip(per_beam, live, strict=True)):
                state = states[j][s]
                before = self.fusion.value(state) if ok else 0.0
                outs = []
                for c, t in enumerate(tokens):
                    out = self.fusion.extend(state, t) if ok else state
                    if ok:
                        after = self.fusion.final(state) if t == EOS else self.fusion.value(out)
                        scores[j, s, c] = after - before
                    outs.append(out)
                new[j].append(outs)
        return scores.to(cands.device), new

    def select(self, new: list[list[list[Fused]]], src: torch.Tensor, col: torch.Tensor) -> list[list[Fused]]:
        return [[new[j][s][c] for s, c in zip(srcs, cols, strict=True)]
                for j, (srcs, cols) in enumerate(zip(src.tolist(), col.tolist(), strict=True))]
