"""The Transformer attention decoder (asrkit.models.transformer_decoder) and joint CTC/attention decoding: cached
step-by-step decoding equals teacher forcing, padded encoder frames get no attention, and on hand-built scores the
CTC prefix term flips the attention decoder's answer only when its weight is above zero."""

from __future__ import annotations

import pytest
import torch
from test_fusion import attention_text, log_row

from asrkit.models.las_search import CTCScorer
from asrkit.models.transformer_decoder import TransformerDecoder


def decoder() -> TransformerDecoder:
    torch.manual_seed(0)
    return TransformerDecoder(12, 20, dim=16, layers=2, heads=2, ff=32, dropout=0.0).eval()


def test_cached_steps_equal_teacher_forcing() -> None:
    d = decoder()
    enc, lens = torch.randn(3, 9, 20), torch.tensor([9, 5, 7])
    encoded = d.encode(enc, lens)
    inputs = torch.randint(1, 12, (3, 6))
    inputs[:, 0] = 0
    whole, weights = d(inputs, encoded)
    state, steps = d.initial_state(encoded), []
    for i in range(6):
        logits, state = d.step(inputs[:, i], state, encoded)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), whole, atol=1e-5, rtol=1e-5)
    assert torch.all(weights[1, :, :, 5:] == 0)  # utterance 1 has 5 real frames: padding gets no attention
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 6))


def test_padding_of_the_encoder_output_changes_nothing() -> None:
    d = decoder()
    enc = torch.randn(1, 5, 20)
    inputs = torch.tensor([[0, 3, 4, 5]])
    alone, _ = d(inputs, d.encode(enc, torch.tensor([5])))
    padded = torch.cat([enc, torch.randn(1, 4, 20)], dim=1)
    together, _ = d(inputs, d.encode(padded, torch.tensor([5])))
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def ctc_hat_sat() -> torch.Tensor:
    """CTC log-probs (1, T', V) that read "hat sat" clearly (one frame a character, blanks between words)."""
    rows = [{"h": 0.9}, {"a": 0.9}, {"t": 0.9}, {" ": 0.9}, {"s": 0.9}, {"a": 0.9}, {"t": 0.9}, {"": 0.9}]
    return torch.stack([log_row(r) for r in rows])[None]


@pytest.mark.parametrize(("weight", "text"), [(0.0, "cat sat"), (0.5, "hat sat")])
def test_joint_ctc_attention_beam_flips_the_answer(weight: float, text: str) -> None:
    """The attention scores alone read "cat sat" by a little (test_fusion.NEXT); the CTC head reads "hat sat"."""
    ctc = ctc_hat_sat()
    scorers = [CTCScorer(ctc, torch.tensor([ctc.shape[1]]), weight)] if weight else []
    assert attention_text(scorers, att_weight=1.0 - weight) == text
