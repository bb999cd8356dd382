"""flashlight-text's lexicon beam search (C++, as torchaudio's ctc_decoder uses it) over a KenLM word n-gram:
the "flashlight" backend of `asrkit.decoding.CTCBeamDecoder`: pyctcdecode's beam-100 WER at 40-70x its
speed (bench/ctc_decode.py).

Words are spelt from a trie of the LM's words (a closed vocabulary: a word the LM does not know cannot be
output); a word being spelt is scored by its likeliest completion's unigram (the trie smeared with MAX), the
LM scores it when it is complete. A word is spelt with the space token after it (flashlight's silence);
the search appends a frame holding a certain space to end the last one. The score of a hypothesis is its
best path's acoustic log-prob (Viterbi, where the prefix search sums its paths) + alpha * ln p_LM + beta *
words, alpha and beta meaning what they mean for the other backends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asrkit.errors import AsrkitError

if TYPE_CHECKING:
    from asrkit.search import SearchOptions

LOG10 = math.log(10.0)  # KenLM scores are log10
SPACE = " "  # the character tokenizer's word separator
IMPOSSIBLE = -1e4  # log-prob of the other tokens in the frame appended to end the last word


def unsupported(vocab: Sequence[str], options: SearchOptions) -> str:
    """Why the lexicon search cannot serve this request ("" when it can)."""
    if not options.lm:
        return "beam search without an LM"
    if options.hotwords:
        return "hotwords"
    if options.nbest > 1:
        return "n-best lists (it merges hypotheses whose last words agree: its lists are short)"
    if SPACE not in vocab or any(len(t) != 1 for t in vocab[1:]):
        return "a vocabulary of word pieces (the lexicon spells words in characters)"
    return ""


@lru_cache(maxsize=4)
def _lexicon(path: str, vocab: tuple[str, ...]) -> tuple[Any, Any, Any, list[str]]:
    """(flashlight KenLM, its word dictionary, the trie of spellable words, the words) of an LM file, built
    once per process and vocabulary (tuning and the worker processes reuse them)."""
    from asrkit import lm as lmlib

    fl = lmlib.require_flashlight()
    words = lmlib.unigram_words(lmlib.read_unigrams(Path(path)))
    lmlib.check_vocabulary(words, vocab, path)
    word_dict = fl.Dictionary(["<unk>", *words])
    lm = lmlib.load_flashlight_lm(path, word_dict)
    index = {t: i for i, t in enumerate(vocab) if i}
    trie = fl.Trie(len(vocab), index[SPACE])
    start = lm.start(False)
    for i, word in enumerate(words, 1):
        spelling = [index.get(c) for c in word]
        if None not in spelling:  # a word is its letters and a space
            trie.insert([*spelling, index[SPACE]], i, lm.score(start, i)[1])
    trie.smear(fl.SmearingMode.MAX)
    return lm, word_dict, trie, ["<unk>", *words]


class LexiconSearch:
    """Beam search of (T, V) log-probs with flashlight's LexiconDecoder; `search` returns the best hypothesis as
    asrkit.beam_search.PrefixBeamSearch.search returns its list: [(text, score, (start, end) frames of each word)]."""

    def __init__(self, vocab: Sequence[str], options: SearchOptions) -> None:
        reason = unsupported(vocab, options)
        if reason:
            raise AsrkitError(f"the flashlight backend cannot decode {reason}; use the asrkit backend")
        from asrkit import lm as lmlib

        self._fl = lmlib.require_flashlight()
        self.vocab = list(vocab)
        self._lm, _, self._trie, self.words = _lexicon(str(lmlib.resolve_lm(options.lm)), tuple(self.vocab))
        self._space = self.vocab.index(SPACE)
        self.set_options(options)

    def set_options(self, options: SearchOptions) -> None:
        """New alpha, beta or beam settings; the LM and the trie stay (smeared scores do not depend on alpha)."""
        fl = self._fl
        self.options = options
        top_k = options.token_top_k if 0 < options.token_top_k < len(self.vocab) else len(self.vocab)
        opts = fl.LexiconDecoderOptions(
            beam_size=options.beam_size, beam_size_token=top_k, beam_threshold=-options.beam_prune_logp,
            lm_weight=options.alpha * LOG10, word_score=options.beta, unk_score=-math.inf, sil_score=0.0,
            log_add=False, criterion_type=fl.CriterionType.CTC)
        self._decoder = fl.LexiconDecoder(opts, self._trie, self._lm, self._space, 0, 0, [], False)

    def search(self, log_probs: np.ndarray) -> list[tuple[str, float, tuple[tuple[int, int], ...]]]:
        lp = np.full((log_probs.shape[0] + 1, log_probs.shape[1]), IMPOSSIBLE, dtype=np.float32)
        lp[:-1] = log_probs
        lp[-1, self._space] = 0.0  # a certain space after the last frame ends the last word
        results = self._decoder.decode(lp.ctypes.data, lp.shape[0], lp.shape[1])
        if not results:
            return [("", 0.0, ())]
        best = max(results, key=lambda r: r.score)
        words, frames = self._words(list(best.tokens)[1:-1], list(best.words)[1:-1])
        return [(" ".join(words), float(best.score), frames)]

    def _words(self, path: list[int], labels: list[int]) -> tuple[list[str], tuple[tuple[int, int], ...]]:
        """Words of a best path and the (first, last + 1) frames of their tokens. `labels` holds a word's index
        at the frame where its last token is first emitted, -1 elsewhere."""
        runs: list[list[int]] = []  # [first, last] frame of each emitted letter (repeats merged)
        prev = 0
        for t, tok in enumerate(path):
            if tok not in (0, self._space):
                if tok == prev:
                    runs[-1][1] = t
                else:
                    runs.append([t, t])
            prev = tok
        words: list[str] = []
        frames: list[tuple[int, int]] = []
        r = 0
        for t, label in enumerate(labels):
            if label < 0:
                continue
            first, last = t, t
            if r < len(runs) and runs[r][0] <= t:
                first = runs[r][0]
                while r < len(runs) and runs[r][0] <= t:
                    last = runs[r][1]
                    r += 1
            words.append(self.words[label])
            frames.append((first, last + 1))
        return words, tuple(frames)
