"""CTC decoding: greedy (best path) and beam search with an n-gram LM (pyctcdecode + KenLM), with word
timings. Emissions come with blank = 0."""

from __future__ import annotations

import heapq
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from asrkit.data.tokenizer import Tokenizer
from asrkit.errors import AsrkitError
from asrkit.records import Emissions, Hypothesis, WordTiming

WORD_START = "\u2581"  # sentencepiece's word-boundary marker
BACKENDS = ("asrkit", "pyctcdecode")
AVG_WORD_LEN = 6  # pyctcdecode's: a partial unknown word longer than this is penalised in proportion
LOOKAHEAD_MARGIN = 0.5  # nats of slack in the look-ahead pruning of expansions (bench/ctc_decode.py)


def ctc_greedy(emissions: Emissions, tokenizer: Tokenizer) -> list[Hypothesis]:
    """Best path: argmax per frame, merge repeats, drop blanks. Score = sum of the chosen log-probs."""
    best_logp, best = emissions.log_probs.float().max(dim=-1)  # (B, T')
    hyps = []
    for b in range(best.shape[0]):
        n = int(emissions.lengths[b])
        path = best[b, :n].tolist()
        tokens, frames = [], []
        prev = 0
        for t, tok in enumerate(path):
            if tok != 0 and tok != prev:
                tokens.append(tok)
                frames.append(t)
            prev = tok
        words = word_timings(tokens, frames, tokenizer.vocab, emissions.frame_shift)
        hyps.append(Hypothesis(tokenizer.decode(tokens), tuple(tokens), float(best_logp[b, :n].sum()), words))
    return hyps


def word_timings(tokens: Sequence[int], frames: Sequence[int], vocab: Sequence[str],
                 frame_shift: float) -> tuple[WordTiming, ...]:
    """Group emitted tokens into words (space token or sentencepiece's '▁'); start = first token's frame,
    end = last token's frame + 1, in seconds."""
    words: list[WordTiming] = []
    chars: list[str] = []
    start = end = 0
    for tok, frame in zip(tokens, frames, strict=True):
        piece = vocab[tok]
        boundary = piece == " " or piece.startswith(WORD_START)
        if boundary and chars:
            words.append(WordTiming("".join(chars), start * frame_shift, end * frame_shift))
            chars = []
        piece = piece.replace(WORD_START, "").strip()
        if piece:
            if not chars:
                start = frame
            chars.append(piece)
            end = frame + 1
    if chars:
        words.append(WordTiming("".join(chars), start * frame_shift, end * frame_shift))
    return tuple(words)


# ------------------------------------------------------------------------------------------------------
# Beam search with an n-gram LM (DeepSpeech): argmax_y log p(y|x) + alpha log p_LM(y) + beta wordcount(y)
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMDecodeOptions:
    """CTC beam-search settings. The defaults are the fast ones measured in bench/ctc_decode.py."""

    lm: str = ""  # KenLM model (.bin or .arpa, from `asrkit lm build`); empty: beam search without an LM
    alpha: float = 0.5  # LM weight
    beta: float = 1.0  # word insertion bonus (per word)
    beam_size: int = 32  # beams kept after each frame
    beam_prune_logp: float = -8.0  # drop beams this far (natural log) below the best one
    token_min_logp: float = -5.0  # tokens below this log-prob in a frame are not expanded (unless the argmax)
    token_top_k: int = 0  # expand at most this many of a frame's most likely tokens (0: no limit)
    lm_lookahead: bool = True  # score a word being spelt by its likeliest completion's unigram (asrkit backend)
    prune_history: bool = False  # keep one of beams whose last (order - 1) words agree (off when nbest > 1)
    hotwords: tuple[str, ...] = ()  # words or phrases to boost
    hotword_weight: float = 10.0  # score added per hotword match
    nbest: int = 1  # hypotheses returned per utterance
    unk_score_offset: float = -10.0  # log10 score added for a word the LM does not know
    backend: str = "asrkit"  # asrkit: asrkit's prefix search | pyctcdecode: pyctcdecode's (same scoring, slower)

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise AsrkitError(f"beam size {self.beam_size} must be at least 1 (try --beam-size 32)")
        if self.nbest < 1:
            raise AsrkitError(f"nbest {self.nbest} must be at least 1")
        if self.nbest > self.beam_size:
            raise AsrkitError(f"nbest {self.nbest} is larger than the beam size {self.beam_size}; "
                              f"raise --beam-size to at least {self.nbest}")
        if self.beam_prune_logp >= 0 or self.token_min_logp >= 0:
            raise AsrkitError(f"beam_prune_logp {self.beam_prune_logp} and token_min_logp {self.token_min_logp} "
                              "are log-probabilities and must be negative")
        for name in ("alpha", "beta", "hotword_weight", "unk_score_offset"):
            if not math.isfinite(getattr(self, name)):
                raise AsrkitError(f"{name} {getattr(self, name)} must be a finite number")
        if self.backend not in BACKENDS:
            raise AsrkitError(f"unknown decoding backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if self.alpha < 0:
            raise AsrkitError(f"alpha {self.alpha} must be >= 0 (0 turns the LM off)")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["hotwords"] = list(self.hotwords)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> LMDecodeOptions:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise AsrkitError(f"{where}: unknown decode setting(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(valid))}")
        kwargs = dict(data)
        if "hotwords" in kwargs:
            kwargs["hotwords"] = tuple(str(h) for h in kwargs["hotwords"])
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise AsrkitError(f"{where}: {err}") from None


def ctc_labels(vocab: Sequence[str]) -> list[str]:
    """pyctcdecode's labels: the blank (id 0) as "", the rest as they are (" " for the char tokenizer's space,
    "▁"-prefixed pieces for sentencepiece, which pyctcdecode recognises as BPE)."""
    return ["", *vocab[1:]]


def candidate_tokens(log_probs: np.ndarray, min_logp: float, top_k: int = 0) -> np.ndarray:
    """(T, V) bool: the tokens worth expanding per frame: those above `min_logp`, at most the `top_k` most
    likely (0: no limit; DeepSpeech's cutoff_top_n), and always the argmax."""
    mask = log_probs >= min_logp
    if 0 < top_k < log_probs.shape[1]:
        below = np.argpartition(-log_probs, top_k, axis=1)[:, top_k:]  # all but the k most likely
        np.put_along_axis(mask, below, False, axis=1)
    mask[np.arange(len(log_probs)), log_probs.argmax(axis=1)] = True
    return mask


def collapse_blank_frames(log_probs: np.ndarray, token_min_logp: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Drop the frames that cannot change any beam: a frame where only the blank passes `token_min_logp`
    (and is the argmax) right after another such frame adds the same score to every beam and resets
    nothing. Returns (kept frames, their original indices, summed blank log-prob of the dropped ones)."""
    others = log_probs[:, 1:].max(axis=1)
    blank_only = (others < token_min_logp) & (log_probs[:, 0] >= others)
    drop = np.zeros_like(blank_only)
    drop[1:] = blank_only[1:] & blank_only[:-1]
    keep = np.flatnonzero(~drop)
    return log_probs[keep], keep, float(log_probs[drop, 0].sum())


NEG_INF = float("-inf")
LOG10 = math.log(10.0)  # KenLM scores are log10


def _logaddexp(a: float, b: float) -> float:
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

    def __init__(self, vocab: Sequence[str], options: LMDecodeOptions, lm: Any = None) -> None:
        self.options = options
        self.lm = lm
        self.kinds = token_kinds(vocab)
        self.hotwords = Hotwords(options.hotwords, options.hotword_weight) if options.hotwords else None
        self._partials: dict[str, float] = {}

    def set_options(self, options: LMDecodeOptions) -> None:
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
                    b[0] = _logaddexp(b[0], b[1]) + p
                    b[1] = NEG_INF
                    b[6] = b[0]
                continue
            cands = sorted(zip(logps[pos : pos + n], toks[pos : pos + n], strict=True), reverse=True)
            pos += n
            new: dict[Key, Beam] = {}
            totals = [(b[0] if b[1] == NEG_INF else _logaddexp(b[0], b[1])) for b in beams.values()]
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
                            e[0] = _logaddexp(e[0], v)
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
                                e[1] = _logaddexp(e[1], v)
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
                        e[1] = _logaddexp(e[1], v)
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
        scored = [(_logaddexp(e[0], e[1]) + e[2], key) for key, e in new.items()]
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
            path = _logaddexp(b[0], b[1])
            old = finals.get(text)
            if old is None:
                finals[text] = (path + score, path, words)
            else:
                finals[text] = (_logaddexp(old[0], path + score), max(old[1], path),
                                words if path > old[1] else old[2])
        ranked = sorted(finals.items(), key=lambda kv: -kv[1][0])
        return [(text, s, words) for text, (s, _, words) in ranked]


class CTCBeamDecoder:
    """Beam search with a KenLM model and its unigrams on numpy (T, V) log-probs: asrkit's prefix search
    (backend "asrkit", the default) or pyctcdecode's ("pyctcdecode"), same scoring.

    Build once (the LM is loaded once and cached per process), decode many; `set_weights` changes alpha and
    beta without reloading (tuning)."""

    def __init__(self, vocab: Sequence[str], options: LMDecodeOptions) -> None:
        from asrkit import lm as lmlib

        self.options = options
        self.vocab = list(vocab)
        self._encode: dict[str, int] = {p: i for i, p in enumerate(self.vocab) if i}
        self._hotwords = [h.strip() for h in options.hotwords if h.strip()]
        self._search: PrefixBeamSearch | None = None
        self._decoder: Any = None
        if options.backend == "asrkit":
            word_lm = lmlib.WordLM(options.lm, self.vocab, options.unk_score_offset) if options.lm else None
            self._search = PrefixBeamSearch(self.vocab, options, word_lm)
            return
        pyctcdecode = lmlib.require_pyctcdecode()
        language_model = None
        if options.lm:
            word_lm = lmlib.WordLM(options.lm, self.vocab, options.unk_score_offset)
            language_model = pyctcdecode.LanguageModel(word_lm.model, word_lm.words, alpha=float(options.alpha),
                                                        beta=float(options.beta),
                                                        unk_score_offset=float(options.unk_score_offset))
        alphabet = pyctcdecode.Alphabet.build_alphabet(ctc_labels(self.vocab))
        self._decoder = pyctcdecode.BeamSearchDecoderCTC(alphabet, language_model)

    def set_weights(self, alpha: float, beta: float) -> None:
        self.options = replace(self.options, alpha=alpha, beta=beta)
        if self._search is not None:
            self._search.set_options(self.options)
        else:
            self._decoder.reset_params(alpha=float(alpha), beta=float(beta))

    def decode(self, log_probs: np.ndarray, frame_shift: float) -> list[Hypothesis]:
        """(T, V) log-probs of one utterance -> up to `nbest` hypotheses, best first."""
        opts = self.options
        if log_probs.shape[0] == 0:
            return [Hypothesis("")]
        frames, index, offset = collapse_blank_frames(np.asarray(log_probs, dtype=np.float32), opts.token_min_logp)
        if self._search is not None:
            beams = self._search.search(frames)
        else:
            beams = [(text, combined, tuple(f for _, f in word_frames)) for text, _, word_frames, _, combined in
                     self._decoder.decode_beams(
                         frames, beam_width=opts.beam_size, beam_prune_logp=opts.beam_prune_logp,
                         token_min_logp=opts.token_min_logp, prune_history=opts.prune_history and opts.nbest == 1,
                         hotwords=self._hotwords or None, hotword_weight=opts.hotword_weight)]
        hyps: list[Hypothesis] = []
        seen: set[str] = set()
        for text, score, word_frames in beams:
            if text in seen:
                continue
            seen.add(text)
            words = tuple(WordTiming(w, float(index[s]) * frame_shift, float(index[e - 1] + 1) * frame_shift)
                          for w, (s, e) in zip(text.split(), word_frames, strict=False))
            hyps.append(Hypothesis(text, self._tokens(text), float(score) + offset, words))
            if len(hyps) == opts.nbest:
                break
        return hyps

    def _tokens(self, text: str) -> tuple[int, ...]:
        """Token ids of the text for a character vocabulary; () where the text is not spelled by single tokens."""
        ids = [self._encode.get(c) for c in text]
        return () if None in ids else tuple(i for i in ids if i is not None)


def ctc_beam_search(emissions: Emissions, tokenizer: Tokenizer, options: LMDecodeOptions,
                    decoder: CTCBeamDecoder | None = None) -> list[list[Hypothesis]]:
    """N-best lists of a batch of emissions (in this process; see `decode_parallel` for many)."""
    decoder = decoder or CTCBeamDecoder(tokenizer.vocab, options)
    log_probs = emissions.log_probs.detach().float().cpu().numpy()
    return [decoder.decode(log_probs[b, : int(n)], emissions.frame_shift)
            for b, n in enumerate(emissions.lengths.tolist())]


# ------------------------------------------------------------------------------------------------------
# Many utterances: a pool of processes, each holding one decoder (the LM loaded once per process)
# ------------------------------------------------------------------------------------------------------

_WORKER: CTCBeamDecoder | None = None


def _init_worker(decoder: CTCBeamDecoder | None, vocab: list[str], options: LMDecodeOptions) -> None:
    """A forked worker inherits the parent's decoder (LM already loaded); a spawned one builds its own."""
    global _WORKER
    _WORKER = decoder if decoder is not None else CTCBeamDecoder(vocab, options)


def _decode_in_worker(task: tuple[np.ndarray, float, float, float]) -> list[Hypothesis]:
    log_probs, frame_shift, alpha, beta = task
    assert _WORKER is not None, "worker not initialised"
    if (alpha, beta) != (_WORKER.options.alpha, _WORKER.options.beta):
        _WORKER.set_weights(alpha, beta)
    return _WORKER.decode(log_probs, frame_shift)


class DecoderPool:
    """Decode many utterances in parallel. `workers` <= 1 decodes in this process (no start-up cost).

    Use as a context manager; `decode` may be called many times (tuning: the same emissions, other alpha
    and beta), the workers and their LM stay loaded."""

    def __init__(self, vocab: Sequence[str], options: LMDecodeOptions, workers: int = 1) -> None:
        self.options = options
        self.workers = max(1, workers)
        self._local = CTCBeamDecoder(vocab, options)  # also validates the LM before any worker starts
        self._pool: Any = None
        if self.workers > 1:
            import multiprocessing as mp

            fork = "fork" in mp.get_all_start_methods()  # the workers only run numpy and KenLM, never torch
            inherited = self._local if fork else None
            with warnings.catch_warnings():  # Python >= 3.12 warns about fork() beside torch's idle threads
                warnings.filterwarnings("ignore", r".*fork\(\) may lead to deadlocks", DeprecationWarning)
                self._pool = mp.get_context("fork" if fork else "spawn").Pool(
                    self.workers, _init_worker, (inherited, list(vocab), options))

    def decode(self, log_probs: Sequence[np.ndarray], frame_shift: float, *, alpha: float | None = None,
               beta: float | None = None) -> Iterator[list[Hypothesis]]:
        """N-best lists in input order, yielded as they complete in order."""
        a = self.options.alpha if alpha is None else alpha
        b = self.options.beta if beta is None else beta
        if self._pool is None:
            if (a, b) != (self._local.options.alpha, self._local.options.beta):
                self._local.set_weights(a, b)
            for lp in log_probs:
                yield self._local.decode(lp, frame_shift)
            return
        chunk = max(1, min(16, len(log_probs) // (4 * self.workers)))
        yield from self._pool.imap(_decode_in_worker, ((lp, frame_shift, a, b) for lp in log_probs), chunk)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
