"""Shared fixtures: the repository on sys.path, the real chips and the official code's outputs (tests/data)."""
from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DATA = os.path.join(REPO, "tests", "data")
SAMPLES = os.path.join(DATA, "hoss_samples")
GOLDEN = os.path.join(DATA, "golden")

# The tiny ViT of the golden outputs (embed_dim 48, depth 2, 3 heads).
TINY_MODEL = ["MODEL.EMBED_DIM", "48", "MODEL.DEPTH", "2", "MODEL.NUM_HEADS", "3"]


def fixture_path(path: str) -> str:
    """`path` if it exists; a missing fixture fails the test (it is part of the repository, see tests/data)."""
    if not os.path.exists(path):
        pytest.fail(f"test fixture missing: {path} (tests/data travels with the repository; restore it from git)")
    return path


@pytest.fixture
def samples_dir() -> str:
    return fixture_path(SAMPLES)


@pytest.fixture
def golden_dir() -> str:
    return fixture_path(GOLDEN)


@pytest.fixture
def hoss_root(samples_dir, tmp_path) -> str:
    """A DATASETS.ROOT_DIR whose HOSS/ is the shared real chips (read-only, linked not copied)."""
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(samples_dir, root / "HOSS")
    return str(root)
