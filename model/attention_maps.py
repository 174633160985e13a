"""Attention probabilities of the backbone's blocks, read through forward hooks, and attention rollout.

timm's fused attention (torch's scaled_dot_product_attention) never forms the attention matrix, so the recorder
hooks the q/k normalisation modules (identities in these models), which see q and k just before the attention
kernel, and forms softmax(q k^T * scale) itself. The model's own computation is left untouched: its outputs are
the same bit for bit with and without the recorder, fused attention on or off.
"""
from __future__ import annotations

import torch

from utils.errors import ShipReIDError

HEAD_FUSIONS = ("mean", "max", "min")


class AttentionRecorder:
    """`with AttentionRecorder(backbone) as rec: backbone(...)`; then `rec.probabilities()` is one
    (B, heads, N, N) float32 tensor per block, in block order. The hooks are removed when the block ends."""

    def __init__(self, backbone):
        self.attns = [block.attn for block in backbone.blocks]
        self.queries: list = [None] * len(self.attns)
        self.keys: list = [None] * len(self.attns)
        self.handles = []

    def _store(self, store: list, index: int):
        def hook(module, inputs, output):
            store[index] = output.detach()
        return hook

    def __enter__(self) -> "AttentionRecorder":
        for i, attn in enumerate(self.attns):
            self.handles.append(attn.q_norm.register_forward_hook(self._store(self.queries, i)))
            self.handles.append(attn.k_norm.register_forward_hook(self._store(self.keys, i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def probabilities(self) -> list[torch.Tensor]:
        if any(q is None for q in self.queries):
            raise RuntimeError("no forward pass was recorded: call the backbone inside the `with` block")
        return [torch.softmax(q.float() @ k.float().transpose(-2, -1) * attn.scale, dim=-1)
                for q, k, attn in zip(self.queries, self.keys, self.attns)]


def fuse_heads(attn: torch.Tensor, fusion: str = "mean") -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N): the mean, max or min over the heads."""
    if fusion == "mean":
        return attn.mean(dim=1)
    if fusion == "max":
        return attn.amax(dim=1)
    if fusion == "min":
        return attn.amin(dim=1)
    raise ShipReIDError(f"head fusion must be one of {HEAD_FUSIONS}, got {fusion!r}")


def discard_lowest(attn: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, N, N) with, in every row, the floor(ratio * (N - 1)) smallest off-diagonal entries set to 0."""
    if not 0.0 <= ratio < 1.0:
        raise ShipReIDError(f"discard ratio must be in [0, 1), got {ratio}")
    n = attn.shape[-1]
    count = int(ratio * (n - 1))
    if count == 0:
        return attn
    eye = torch.eye(n, dtype=torch.bool, device=attn.device)
    lowest = attn.masked_fill(eye, float("inf")).topk(count, dim=-1, largest=False).indices
    return attn.scatter(-1, lowest, 0.0)


def rollout(attentions: list[torch.Tensor], fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020), (B, N, N): R = Â_L ... Â_1 with, per block,
    Â = (A + I) / rowsum(A + I), A the heads fused (after `discard_lowest`). The identity stands for the residual
    connection. Row t of R: how much each input token reaches output token t through every block."""
    result = None
    for attn in attentions:
        fused = discard_lowest(fuse_heads(attn, fusion), discard_ratio)
        fused = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        fused = fused / fused.sum(dim=-1, keepdim=True)
        result = fused if result is None else fused @ result
    return result


def last_layer(attentions: list[torch.Tensor], fusion: str = "mean") -> torch.Tensor:
    """The last block's attention, heads fused, no residual: (B, N, N)."""
    return fuse_heads(attentions[-1], fusion)


def patch_row(matrix: torch.Tensor, backbone, token: int) -> torch.Tensor:
    """Row `token` of a (B, N, N) token matrix over the patch tokens, as a (B, rows, cols) grid (the class
    token(s) before the patches and the size token after them left out)."""
    return backbone.patch_map(matrix[:, token, :, None])[..., 0]
