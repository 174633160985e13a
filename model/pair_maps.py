"""Grad-CAM of a query/gallery pair's similarity over each chip's patch tokens.

The score is minus the distance that ranks the pair, -||f_q - f_g||^2 (features L2-normalised first when the test
normalises them), so a positive map value marks patches that pull the two features together. The tokens are the
input of the last block's attention (its norm1 output): the output class token reads the patches only there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class TokenGradients:
    """`with TokenGradients(backbone) as tg: backbone(...)`: `tg.tokens` is the last block's norm1 output, made a
    leaf that requires grad so that torch.autograd.grad can reach it (same values: the model computes the same)."""

    def __init__(self, backbone):
        self.module = backbone.blocks[-1].norm1
        self.tokens = None
        self.handle = None

    def _hook(self, module, inputs, output):
        self.tokens = output.detach().requires_grad_(True)
        return self.tokens

    def __enter__(self) -> "TokenGradients":
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def pair_score(query: torch.Tensor, gallery: torch.Tensor, feat_norm: bool) -> torch.Tensor:
    """Minus the ranking distance of each row pair, (B,)."""
    if feat_norm:
        query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    return -(query - gallery).pow(2).sum(dim=1)


def grad_cam(tokens: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Signed Grad-CAM over tokens: (B, T, C) activations and gradients -> (B, T),
    cam_i = sum_c alpha_c a_ic with alpha_c = mean_i d score / d a_ic (the mean over these T tokens)."""
    alpha = grads.mean(dim=1, keepdim=True)
    return (tokens * alpha).sum(dim=-1)


def pair_cams(model, batch: dict, num_pairs: int, feature_key: str, feat_norm: bool
              ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """`batch` holds 2 * num_pairs chips: queries first, then their galleries (pair i = rows i and num_pairs + i).

    Returns the signed Grad-CAM of each chip as a (2 * num_pairs, rows, cols) grid, each pair's distance
    (num_pairs,), and the model outputs (detached). Chips never interact in eval mode, so one backward pass of the
    summed scores gives every chip the gradient of its own pair's score.
    """
    backbone = model.backbone
    with torch.enable_grad(), TokenGradients(backbone) as tg:
        outputs = model(batch)
        feats = outputs[feature_key]
        scores = pair_score(feats[:num_pairs], feats[num_pairs:], feat_norm)
        (grads,) = torch.autograd.grad(scores.sum(), tg.tokens)
    patches = [backbone.patch_map(t).flatten(1, 2) for t in (tg.tokens.detach(), grads)]  # (B, rows * cols, C)
    cams = grad_cam(*patches)
    return cams.unflatten(1, backbone.grid_size), -scores.detach(), {k: v.detach() for k, v in outputs.items()}
