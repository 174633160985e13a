"""alpha-weighted query expansion (Radenovic et al., TPAMI 2018), as fast-reid's TEST.AQE defines it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ShipReIDError

# rows of the similarity matrix computed at once (ROWS x N floats)
ROWS_PER_CHUNK = 1024


def average_query_expansion(query: torch.Tensor, gallery: torch.Tensor, k: int = 5, alpha: float = 3.0,
                            rounds: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Every feature of query ∪ gallery becomes the mean over its k most cosine-similar features (itself
    included) of feature x similarity ** alpha, `rounds` times; returns the new (query, gallery), not
    normalised. Memory: ROWS_PER_CHUNK x N similarities and the k neighbours of a chunk."""
    if k < 1 or rounds < 1:
        raise ShipReIDError(f"TEST.AQE_K ({k}) and TEST.AQE_ROUNDS ({rounds}) must be >= 1")
    feats = torch.cat([query, gallery])
    k = min(k, len(feats))
    for _ in range(rounds):
        normed = F.normalize(feats, dim=1)
        expanded = torch.empty_like(feats)
        for start in range(0, len(feats), ROWS_PER_CHUNK):
            sims, neighbours = (normed[start:start + ROWS_PER_CHUNK] @ normed.t()).topk(k, dim=1)
            expanded[start:start + ROWS_PER_CHUNK] = (feats[neighbours] * sims.pow(alpha).unsqueeze(-1)).mean(1)
        feats = expanded
    return feats[:len(query)], feats[len(query):]
