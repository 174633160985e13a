"""Shared fixtures: the repository on sys.path, the shared real chips and golden outputs."""
from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHARED = os.environ.get("SHIPREID_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
SAMPLES = os.path.join(SHARED, "data", "hoss_samples")
GOLDEN = os.path.join(SHARED, "data", "golden")

# The tiny ViT of the golden outputs (embed_dim 48, depth 2, 3 heads).
TINY_MODEL = ["MODEL.EMBED_DIM", "48", "MODEL.DEPTH", "2", "MODEL.NUM_HEADS", "3"]


@pytest.fixture
def samples_dir() -> str:
    if not os.path.isdir(SAMPLES):
        pytest.skip("../shared/data/hoss_samples is not present")
    return SAMPLES


@pytest.fixture
def golden_dir() -> str:
    if not os.path.isdir(GOLDEN):
        pytest.skip("../shared/data/golden is not present")
    return GOLDEN


@pytest.fixture
def hoss_root(samples_dir, tmp_path) -> str:
    """A DATASETS.ROOT_DIR whose HOSS/ is the shared real chips (read-only, linked not copied)."""
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(samples_dir, root / "HOSS")
    return str(root)
