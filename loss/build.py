"""The weighted sum of the configured loss terms, returned as a named dict."""
from __future__ import annotations

import logging

import torch
from torch import nn

from utils.errors import ShipReIDError

from .terms import LOSS_TERMS

logger = logging.getLogger("shipreid.loss")


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


def loss_config_problems(cfg) -> list[str]:
    """What is wrong with LOSS.TERMS / LOSS.WEIGHTS (empty when nothing); checked at start-up and here."""
    names, weights = list(cfg.LOSS.TERMS), list(cfg.LOSS.WEIGHTS)
    problems = []
    if len(names) != len(weights):
        problems.append(f"LOSS.TERMS {names} and LOSS.WEIGHTS {weights} must have the same length")
    if len(set(names)) != len(names):
        problems.append(f"LOSS.TERMS lists a term twice: {names}")
    unknown = [name for name in names if name not in LOSS_TERMS]
    if unknown:
        problems.append(f"LOSS.TERMS: unknown term(s) {unknown}; registered: {sorted(LOSS_TERMS.names())}")
    return problems


def build_loss(cfg) -> LossComposer:
    problems = loss_config_problems(cfg)
    if problems:
        raise ShipReIDError("; ".join(problems))
    names, weights = list(cfg.LOSS.TERMS), list(cfg.LOSS.WEIGHTS)
    terms, kept = {}, {}
    for name, weight in zip(names, weights):
        term = LOSS_TERMS.get(name, "LOSS.TERMS")
        reason = term.off_reason(cfg) if hasattr(term, "off_reason") else None
        if reason:
            logger.info("loss term %r left out: %s", name, reason)
            continue
        terms[name], kept[name] = term(cfg), weight
    return LossComposer(terms, kept)
