"""Feature heads: the token(s) read from the backbone output and how they become the ReID feature.

`ClassTokenHead` is TransOSS (the class token). `DisentangledHead` is SDF-Net's DFL: a modality-shared
feature and a modality-specific one, fused into the feature that the neck, the ID and triplet losses and
the test see.
"""
from __future__ import annotations

import torch
from torch import nn

from utils.errors import ShipReIDError

DFL_MODES = ("off", "tokens", "linear")
FUSIONS = ("sum", "shared", "specific", "concat")


class ClassTokenHead(nn.Module):
    disentangled = False
    feature_name = "the class token"

    def __init__(self, embed_dim: int):
        super().__init__()
        self.out_dim = embed_dim

    def forward(self, tokens: torch.Tensor) -> dict:
        return {"feat": tokens[:, 0]}


class DisentangledHead(nn.Module):
    """f_shared and f_specific from the backbone tokens, then fused.

    mode "tokens" (released code): the shared class token (position 0) and the modality-specific class token
    (position 1) after the final norm; no parameters. mode "linear" (paper figure): two linear projections of
    the class token. Fusion: "sum" (default), "shared" or "specific" alone, or "concat" (twice the width).
    """

    disentangled = True
    _FEATURE_NAMES = {"sum": "f_shared + f_specific", "shared": "f_shared", "specific": "f_specific",
                      "concat": "[f_shared; f_specific]"}

    def __init__(self, embed_dim: int, mode: str = "tokens", fusion: str = "sum"):
        super().__init__()
        if mode not in DFL_MODES[1:]:
            raise ShipReIDError(f"MODEL.SDF.DFL must be one of {DFL_MODES}, got {mode!r}")
        if fusion not in FUSIONS:
            raise ShipReIDError(f"MODEL.SDF.FUSION must be one of {FUSIONS}, got {fusion!r}")
        self.mode, self.fusion = mode, fusion
        self.feature_name = f"{self._FEATURE_NAMES[fusion]} (MODEL.SDF.DFL {mode}, MODEL.SDF.FUSION {fusion})"
        self.out_dim = 2 * embed_dim if fusion == "concat" else embed_dim
        if mode == "linear":
            self.shared = nn.Linear(embed_dim, embed_dim)
            self.specific = nn.Linear(embed_dim, embed_dim)

    def forward(self, tokens: torch.Tensor) -> dict:
        if self.mode == "tokens":
            shared, specific = tokens[:, 0], tokens[:, 1]
        else:
            shared, specific = self.shared(tokens[:, 0]), self.specific(tokens[:, 0])
        if self.fusion == "sum":
            fused = shared + specific
        elif self.fusion == "concat":
            fused = torch.cat([shared, specific], dim=1)
        else:
            fused = shared if self.fusion == "shared" else specific
        return {"feat": fused, "feat_shared": shared, "feat_specific": specific}
