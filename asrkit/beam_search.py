"""asrkit's CTC prefix beam search with word-level n-gram fusion (the DeepSpeech objective), in Python: the
"asrkit" backend of `asrkit.decoding.CTCBeamDecoder`, used where the compiled lexicon search
(asrkit.lexicon_search) cannot serve a request (hotwords, open vocabulary, sentencepiece units)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from asrkit.search import SearchOptions

WORD_START = "\u2581"  # sentencepiece's word-boundary marker
AVG_WORD_LEN = 6  # pyctcdecode's: a partial unknown word longer than this is penalised in proportion
LOOKAHEAD_MARGIN = 0.5  # nats of slack in the look-ahead pruning of expansions (bench/ctc_decode.py)


def candidate_tokens(log_probs: np.ndarray, min_logp: float, top_k: int = 0) -> np.ndarray:
    """(T, V) bool: the tokens worth expanding per frame: those above `min_logp`, at most the `top_k` most
    likely (0: no limit; DeepSpeech's cutoff_top_n), and always the argmax."""
    mask = log_probs >= min_logp
    if 0 < top_k < log_probs.shape[1]:
        below = np.argpartition(-log_probs, top_k, axis=1)[:, top_k:]  # all but the k most likely
        np.put_along_axis(mask, below, False, axis=1)
    mask[np.arange(len(log_probs)), log_probs.argmax(axis=1)] = True
    return mask



NEG_INF = float("-inf")
LOG10 = math.log(10.0)  # KenLM scores are log10


def logaddexp(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow; -inf + -inf is -inf."""
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


def token_kinds(vocab: Sequence[str]) -> list[tuple[bool, str]]:
    """(starts a word, characters it adds) of every token: the char tokenizer's " " starts a word and adds
    nothing; a sentencepiece "▁the" starts a word and adds "the"; special pieces (<unk>) add nothing."""
    kinds = [(False, "")]
    for piece in vocab[1:]:
        if piece == " ":
            kinds.append((True, ""))
        elif piece.startswith(WORD_START):
            kinds.append((True, piece[1:]))
        elif len(piece) > 2 and piece[0] == "<" and piece[-1] == ">":
            kinds.append((False, ""))
        else:
            kinds.append((False, piece))
    return kinds


class Hotwords:
    """pyctcdecode's hotword scoring: `weight` for every word of the text that is a word of a hotword phrase,
    and weight * len(partial) / len(shortest hotword it starts) for a partial word."""

    def __init__(self, phrases: Sequence[str], weight: float) -> None:
        self.words = sorted({w for p in phrases for w in p.split()})
        self._set = frozenset(self.words)
        self.weight = weight

    def word(self, word: str) -> float:
        return self.weight if word in self._set else 0.0

    def partial(self, partial: str) -> float | None:
        """Score of a partial word that starts a hotword, else None."""
        lengths = [len(w) for w in self.words if w.startswith(partial)]
        return self.weight * len(partial) / min(lengths) if lengths else None


# A beam: [log p of its paths ending in blank, ... ending in its last token, LM + hotword score of its words,
#          completed words' (start, end) frames, start and end frame of the word being spelt,
#          log p of the path these timings come from]
Beam = list[Any]
Key = tuple[str, str, int]  # (completed words, partial word, last token)


class PrefixBeamSearch:
    """asrkit's CTC prefix beam search with word-level n-gram fusion (the DeepSpeech objective).

    A beam is a prefix keyed by (completed words, partial word, last token), holding the log-probabilities of
    its paths ending in blank and in its last token, so both kinds share one slot of the beam. A word is scored
    by the LM when it is completed (the next word-start token, or the end); a word being spelt is scored by
    the unigram of its likeliest known completion (LM look-ahead), or gets the unknown-word offset when no
    known word starts with it. LM scores are cached per text, partial-word scores across utterances.

    Pruning, per frame: only tokens above `token_min_logp` are expanded (a blank-only frame just shifts every
    beam; runs of them were collapsed before); an expansion whose estimate cannot reach the beam is not
    built (look-ahead pruning); beams more than `beam_prune_logp` below the best are dropped, then the best
    `beam_size` are kept. pyctcdecode's scoring otherwise, in a faster loop."""

    def __init__(self, vocab: Sequence[str], options: SearchOptions, lm: Any = None) -> None:
        self.options = options
        self.lm = lm
        self.kinds = token_kinds(vocab)
        self.hotwords = Hotwords(options.hotwords, options.hotword_weight) if options.hotwords else None
        self._partials: dict[str, float] = {}

    def set_options(self, options: SearchOptions) -> None:
        self.options = options
        self._partials = {}  # they scale with alpha

    def search(self, log_probs: np.ndarray) -> list[tuple[str, float, tuple[tuple[int, int], ...]]]:
        """(T, V) log-probs -> [(text, score, (start, end) frames of each word)], best first."""
        opts, kinds = self.options, self.kinds
        texts: dict[str, tuple[float, Any]] = {"": (0.0, self.lm.start() if self.lm is not None else None)}
        partials = self._partials
        if len(partials) > 500_000:
            partials.clear()
        beams: dict[Key, Beam] = {("", "", -1): [0.0, NEG_INF, 0.0, (), -1, -1, 0.0]}
        bonus = max(opts.beta, 0.0) + (opts.hotword_weight if self.hotwords is not None else 0.0)
        prune_below = opts.beam_prune_logp - bonus
        margin = bonus + LOOKAHEAD_MARGIN
        mask = candidate_tokens(log_probs, opts.token_min_logp, opts.token_top_k)
        counts = mask.sum(axis=1).tolist()
        toks = np.nonzero(mask)[1].tolist()
        logps = log_probs[mask].tolist()
        pos = 0
        for t, n in enumerate(counts):
            if n == 1 and toks[pos] == 0:  # only the blank: every beam ends in blank, the ranking stays
                p = logps[pos]
                pos += 1
                for b in beams.values():
                    b[0] = logaddexp(b[0], b[1]) + p
                    b[1] = NEG_INF
                    b[6] = b[0]
                continue
            cands = sorted(zip(logps[pos : pos + n], toks[pos : pos + n], strict=True), reverse=True)
            pos += n
            new: dict[Key, Beam] = {}
            totals = [(b[0] if b[1] == NEG_INF else logaddexp(b[0], b[1])) for b in beams.values()]
            floor = self._floor(totals, [b[2] for b in beams.values()], cands, prune_below, margin)
            for (key, b), total in zip(beams.items(), totals, strict=True):
                pb, pnb = b[0], b[1]
                text, wp, last = key
                reach = floor - total - b[2]
                for p, tok in cands:
                    if p < reach:
                        break
                    if tok == 0:  # blank: same prefix, now ending in blank
                        v = total + p
                        e = new.get(key)
                        if e is None:
                            new[key] = [v, NEG_INF, b[2], b[3], b[4], b[5], v]
                        else:
                            e[0] = logaddexp(e[0], v)
                            if v > e[6]:
                                e[3], e[4], e[5], e[6] = b[3], b[4], b[5], v
                        continue
                    if tok == last:  # a repeat collapses onto the same prefix...
                        if pnb > NEG_INF:
                            v = pnb + p
                            pe = t + 1 if b[4] >= 0 else b[5]
                            e = new.get(key)
                            if e is None:
                                new[key] = [NEG_INF, v, b[2], b[3], b[4], pe, v]
                            else:
                                e[1] = logaddexp(e[1], v)
                                if v > e[6]:
                                    e[3], e[4], e[5], e[6] = b[3], b[4], pe, v
                        if pb == NEG_INF:
                            continue
                        v = pb + p  # ...unless a blank separates them
                    else:
                        v = total + p
                    starts, chars = kinds[tok]
                    words, ps, pe = b[3], b[4], b[5]
                    if starts:
                        if wp:
                            text2 = f"{text} {wp}" if text else wp
                            words = (*words, (ps, pe))
                        else:
                            text2 = text
                        wp2 = chars
                        ps, pe = (t, t + 1) if chars else (-1, -1)
                    else:
                        text2, wp2 = text, wp + chars
                        if chars:
                            ps, pe = (t if ps < 0 else ps), t + 1
                    key2 = (text2, wp2, tok)
                    e = new.get(key2)
                    if e is not None:
                        e[1] = logaddexp(e[1], v)
                        if v > e[6]:
                            e[3], e[4], e[5], e[6] = words, ps, pe, v
                        continue
                    if text2 is text and wp2 is wp:
                        lm_score = b[2]
                    else:
                        ts = texts.get(text2)
                        lm_score = (ts or self._score_text(text2, texts))[0]
                        if wp2:
                            pscore = partials.get(wp2)
                            if pscore is None:
                                pscore = partials[wp2] = self._score_partial(wp2)
                            lm_score += pscore
                    new[key2] = [NEG_INF, v, lm_score, words, ps, pe, v]
            beams = self._prune(new)
        return self._finish(beams, texts)

    def _floor(self, totals: list[float], lm_scores: list[float], cands: list[tuple[float, int]],
               prune_below: float, margin: float) -> float:
        """Look-ahead pruning: the score under which an expansion is not worth building. Its estimate (beam +
        token, before the LM sees a new word) must reach the `beam_size`-th best estimate and lie within the
        beam's width of the best one, less `margin` for what a word's bonus or a merge could add."""
        est = np.add.outer(np.add(totals, lm_scores), [p for p, _ in cands])
        floor = float(est.max()) + prune_below
        k = self.options.beam_size
        if est.size > k:
            floor = max(floor, float(np.partition(est, est.size - k, axis=None)[est.size - k]) - margin)
        return floor

    def _prune(self, new: dict[Key, Beam]) -> dict[Key, Beam]:
        scored = [(logaddexp(e[0], e[1]) + e[2], key) for key, e in new.items()]
        cutoff = max(scored)[0] + self.options.beam_prune_logp
        kept = [sk for sk in scored if sk[0] >= cutoff]
        if len(kept) > self.options.beam_size:
            kept = heapq.nlargest(self.options.beam_size, kept)
        if self.options.prune_history and self.options.nbest == 1 and self.lm is not None and len(kept) > 1:
            kept = self._prune_history(sorted(kept, reverse=True))
        return {key: new[key] for _, key in kept}

    def _prune_history(self, kept: list[tuple[float, Key]]) -> list[tuple[float, Key]]:
        """Keep the best of beams whose last (order - 1) words, partial word and last token agree: the LM
        cannot tell them apart any more (pyctcdecode's prune_history)."""
        n = max(1, self.lm.order - 1)
        seen, out = set(), []
        for s, key in kept:
            h = (tuple(key[0].rsplit(" ", n)[-n:]), key[1], key[2])
            if h not in seen:
                seen.add(h)
                out.append((s, key))
        return out

    def _score_text(self, text: str, texts: dict[str, tuple[float, Any]]) -> tuple[float, Any]:
        """LM (alpha * ln p + beta per word) and hotword score of completed words, from the text's parent."""
        parent, _, word = text.rpartition(" ")
        score, state = texts.get(parent) or self._score_text(parent, texts)
        if self.lm is not None:
            logp, state = self.lm.score(state, word)
            score += self.options.alpha * LOG10 * logp + self.options.beta
        if self.hotwords is not None:
            score += self.hotwords.word(word)
        texts[text] = (score, state)
        return texts[text]

    def _score_partial(self, partial: str) -> float:
        if self.hotwords is not None:
            hot = self.hotwords.partial(partial)
            if hot is not None:
                return hot
        if self.lm is None:
            return 0.0
        best = self.lm.lookahead(partial)
        if best is not None:
            return self.options.alpha * LOG10 * best if self.options.lm_lookahead else 0.0
        offset = self.options.alpha * LOG10 * self.lm.unk_offset
        return offset * max(1.0, len(partial) / AVG_WORD_LEN)

    def _finish(self, beams: dict[Key, Beam],
                texts: dict[str, tuple[float, Any]]) -> list[tuple[str, float, tuple[tuple[int, int], ...]]]:
        """Complete the partial words, add the end of sentence, merge equal texts, best first."""
        finals: dict[str, tuple[float, float, tuple[tuple[int, int], ...]]] = {}
        for (text, wp, _), b in beams.items():
            words = b[3]
            if wp:
                text = f"{text} {wp}" if text else wp
                words = (*words, (b[4], b[5]))
            score, state = texts.get(text) or self._score_text(text, texts)
            if self.lm is not None:
                score += self.options.alpha * LOG10 * self.lm.end(state)
            path = logaddexp(b[0], b[1])
            old = finals.get(text)
            if old is None:
                finals[text] = (path + score, path, words)
            else:
                finals[text] = (logaddexp(old[0], path + score), max(old[1], path),
                                words if path > old[1] else old[2])
        ranked = sorted(finals.items(), key=lambda kv: -kv[1][0])
        return [(text, s, words) for text, (s, _, words) in ranked]
