"""The weighted sum of the configured loss terms, returned as a named dict."""
from __future__ import annotations

import torch
from torch import nn

from utils.errors import ShipReIDError

from .terms import LOSS_TERMS


class LossComposer(nn.Module):
    """{term: unweighted value, ..., "total": sum of weight * value}. Holds learnable loss parameters."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)

    def forward(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        losses = {name: term(outputs, batch) for name, term in self.terms.items()}
        losses["total"] = sum(self.weights[name] * value for name, value in losses.items())
        return losses


def build_loss(cfg) -> LossComposer:
    names, weights = list(cfg.LOSS.TERMS), list(cfg.LOSS.WEIGHTS)
    if len(names) != len(weights):
        raise ShipReIDError(f"LOSS.TERMS {names} and LOSS.WEIGHTS {weights} must have the same length")
    if len(set(names)) != len(names):
        raise ShipReIDError(f"LOSS.TERMS lists a term twice: {names}")
    terms = {name: LOSS_TERMS.get(name, "LOSS.TERMS")(cfg) for name in names}
    return LossComposer(terms, dict(zip(names, weights)))
