"""CTC decoding: greedy (best path) with word timings. Emissions come with blank = 0."""

from __future__ import annotations

from collections.abc import Sequence

from asrkit.data.tokenizer import Tokenizer
from asrkit.records import Emissions, Hypothesis, WordTiming

WORD_START = "\u2581"  # sentencepiece's word-boundary marker


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
