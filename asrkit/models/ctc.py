"""The CTC objective on any encoder: encoder (B, T', D) -> Linear -> log-softmax (B, T', V), blank = 0.

DeepSpeech2 (deepspeech2.py) is the conv_rnn encoder with its own CTC output layer; `CTCModel` puts a CTC head
on any encoder of encoders.py (the Conformer), so Conformer-CTC is `CTCModel(ConformerEncoder(...), V)`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.data.tokenizer import Tokenizer
from asrkit.decoding import ctc_decode
from asrkit.models.layers import ASRModel, EncoderModule
from asrkit.records import Batch, Emissions, Hypothesis
from asrkit.search import SearchOptions


class CTCObjective(ASRModel):
    """What every CTC model shares: `forward(feats, lens) -> (log_probs (B, T', V), lengths)` is the model's own;
    emissions, the loss and greedy / LM beam-search decoding come from here."""

    zero_infinity: bool = True  # an impossible alignment contributes 0 to the loss instead of inf

    def ctc_emissions(self, feats: torch.Tensor, feat_lens: torch.Tensor, frame_shift: float) -> Emissions:
        """`frame_shift` is the feature hop in seconds; the emissions' is that times the time reduction."""
        log_probs, lengths = self(feats, feat_lens)
        return Emissions(log_probs, lengths, frame_shift * self.time_reduction)

    def loss(self, batch: Batch) -> torch.Tensor:
        """CTC loss summed over each utterance, averaged over the batch."""
        log_probs, lengths = self(batch.feats, batch.feat_lens)
        return F.ctc_loss(log_probs.transpose(0, 1), batch.targets, lengths, batch.target_lens,
                          blank=0, reduction="sum", zero_infinity=self.zero_infinity) / len(batch.ids)

    @torch.no_grad()
    def decode(self, feats: torch.Tensor, feat_lens: torch.Tensor, search: SearchOptions, lm: Any = None, *,
               tokenizer: Tokenizer, frame_shift: float = 0.01) -> list[list[Hypothesis]]:
        """Greedy (best path), or beam search over the emissions with search.lm (`lm`: an asrkit.lm.WordLM of it,
        else loaded here once per process)."""
        search = self.resolve_search(search)
        return ctc_decode(self.ctc_emissions(feats, feat_lens, frame_shift), tokenizer, search, lm)


class CTCModel(CTCObjective):
    """An encoder with a CTC head; `decode` is greedy or a beam search (asrkit.decoding) over `ctc_emissions`."""

    vocab_layers = ("head",)

    def __init__(self, encoder: EncoderModule, vocab_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_dim, vocab_size)
        self.time_reduction = encoder.time_reduction

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> log_probs (B, T', V) in float32, lengths (B,)."""
        enc, lengths = self.encoder(feats, feat_lens)
        return F.log_softmax(self.head(self.dropout(enc)).float(), dim=-1), lengths
