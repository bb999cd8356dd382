"""CTC decoding: greedy (best path) and beam search with a KenLM word n-gram, with word timings and n-best
lists, in this process or a pool of them. Emissions come with blank = 0.

The beam search has three backends, the same objective (alpha = LM weight, beta = word bonus):
    flashlight   flashlight-text's lexicon search in C++ (asrkit.lexicon_search); the default when installed
    asrkit       asrkit's prefix search in Python (asrkit.beam_search): open vocabulary, hotwords, word pieces
    pyctcdecode  pyctcdecode's prefix search (the reference the others are measured against)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from asrkit.beam_search import WORD_START, PrefixBeamSearch
from asrkit.data.tokenizer import Tokenizer
from asrkit.progress import say
from asrkit.records import Emissions, Hypothesis, WordTiming
from asrkit.search import CTC_BEAM, SearchOptions, is_greedy

if TYPE_CHECKING:
    from asrkit import lm as lmlib


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


LMDecodeOptions = SearchOptions  # the CTC beam-search settings are part of SearchOptions ([decode]); old name


def ctc_labels(vocab: Sequence[str]) -> list[str]:
    """pyctcdecode's labels: the blank (id 0) as "", the rest as they are (" " for the char tokenizer's space,
    "▁"-prefixed pieces for sentencepiece, which pyctcdecode recognises as BPE)."""
    return ["", *vocab[1:]]


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



class CTCBeamDecoder:
    """Beam search with a KenLM model on numpy (T, V) log-probs, by the backend the options ask for: flashlight
    where it can serve the request, else asrkit's prefix search (with a one-line notice saying why). A
    hypothesis' score is its acoustic log-prob (flashlight: of its best path; the prefix searches: summed over
    its paths) + alpha * ln p_LM + beta * words.

    Build once (the LM is loaded once and cached per process), decode many; `set_weights` changes alpha and
    beta without reloading (tuning)."""

    def __init__(self, vocab: Sequence[str], options: SearchOptions, lm: lmlib.WordLM | None = None) -> None:
        """`lm`: options.lm already loaded (the asrkit and pyctcdecode backends use it; flashlight loads its own)."""
        from asrkit import lm as lmlib

        if not options.beam_size:
            options = replace(options, beam_size=CTC_BEAM)
        self.vocab = list(vocab)
        self.backend = resolve_backend(self.vocab, options)
        self.options = options
        self._encode: dict[str, int] = {p: i for i, p in enumerate(self.vocab) if i}
        self._hotwords = [h.strip() for h in options.hotwords if h.strip()]
        self._search: Any = None
        self._decoder: Any = None
        if self.backend == "flashlight":
            from asrkit.lexicon_search import LexiconSearch

            self._search = LexiconSearch(self.vocab, options)
            return
        word_lm = lm if lm is not None or not options.lm else lmlib.WordLM(options.lm, self.vocab,
                                                                           options.unk_score_offset)
        if self.backend == "asrkit":
            self._search = PrefixBeamSearch(self.vocab, options, word_lm)
            return
        pyctcdecode = lmlib.require_pyctcdecode()
        language_model = None
        if word_lm is not None:
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


_NOTICES: set[str] = set()  # fallback notices already printed by this process


def resolve_backend(vocab: Sequence[str], options: SearchOptions) -> str:
    """The backend that decodes: the one asked for, except flashlight where it is not installed or cannot serve
    the request (hotwords, n-best lists, no LM, word pieces): asrkit's, with a notice once per process."""
    if options.backend != "flashlight":
        return options.backend
    from asrkit import lm as lmlib
    from asrkit.lexicon_search import unsupported

    reason = unsupported(vocab, options)
    if not reason and not lmlib.flashlight_available():
        reason = f"flashlight-text is not installed ({lmlib.LM_EXTRA_HINT})"
    if not reason:
        return "flashlight"
    notice = "note: beam search with the asrkit backend: " + (
        reason if "installed" in reason else f"the flashlight backend does not do {reason}")
    if notice not in _NOTICES:
        _NOTICES.add(notice)
        say(notice)
    return "asrkit"


def ctc_decode(emissions: Emissions, tokenizer: Tokenizer, search: SearchOptions,
               lm: lmlib.WordLM | None = None) -> list[list[Hypothesis]]:
    """N-best lists of a batch of emissions under a resolved search (asrkit.search.resolve): best path when it is
    greedy, else beam search in this process (`DecoderPool` decodes many in parallel)."""
    if is_greedy(search):
        return [[h] for h in ctc_greedy(emissions, tokenizer)]
    return ctc_beam_search(emissions, tokenizer, search, CTCBeamDecoder(tokenizer.vocab, search, lm))


def ctc_beam_search(emissions: Emissions, tokenizer: Tokenizer, options: SearchOptions,
                    decoder: CTCBeamDecoder | None = None) -> list[list[Hypothesis]]:
    """N-best lists of a batch of emissions (in this process; see `DecoderPool` for many)."""
    decoder = decoder or CTCBeamDecoder(tokenizer.vocab, options)
    log_probs = emissions.log_probs.detach().float().cpu().numpy()
    return [decoder.decode(log_probs[b, : int(n)], emissions.frame_shift)
            for b, n in enumerate(emissions.lengths.tolist())]


# ------------------------------------------------------------------------------------------------------
# Many utterances: a pool of processes, each holding one decoder (the LM loaded once per process)
# ------------------------------------------------------------------------------------------------------

_WORKER: CTCBeamDecoder | None = None


def _init_worker(decoder: CTCBeamDecoder | None, vocab: list[str], options: SearchOptions) -> None:
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

    def __init__(self, vocab: Sequence[str], options: SearchOptions, workers: int = 1) -> None:
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
