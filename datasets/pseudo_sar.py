"""The on-disk cache of generated pseudo-SAR chips (MOS cross-modal synthesis), keyed by source file.

    <dir>/generator.json             what generated the cache (BBDM weights hash, steps, eta, sampling
                                     precision, seed, size, samples per chip, the SAR radiometry it imitates)
    <dir>/<source stem>/source.json  the optical source: name, SHA-1 of its bytes, pixel width and height
    <dir>/<source stem>/<k>.png      sample k (8-bit grey, 3 channels)

An entry is written to a temporary folder and renamed into place, so a folder that exists is complete and a
killed generation resumes where it stopped. Entries are found by the source's file name and checked against
its SHA-1, never by position in a sorted list.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.errors import ShipReIDError

from .records import SAR, ChipRecord

GENERATOR_FILE = "generator.json"
SOURCE_FILE = "source.json"


class PseudoSarCacheError(ShipReIDError):
    """A cache that is missing, incomplete or made from other files."""


def file_sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def entry_dir(cache_dir: str, record: ChipRecord) -> str:
    return os.path.join(cache_dir, os.path.splitext(record.name)[0])


def sample_name(k: int) -> str:
    return f"{k}.png"


def check_generator(cache_dir: str, fingerprint: dict) -> None:
    """Write the generator description into a new cache, or refuse a cache made by another generator."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, GENERATOR_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            existing = json.load(f)
        if existing != fingerprint:
            raise PseudoSarCacheError(f"{path} describes another generator ({existing}) than this run "
                                      f"({fingerprint}); use a new TEST.FUSION.CACHE_DIR or delete the old one")
        return
    with open(path + ".tmp", "w") as f:
        json.dump(fingerprint, f, indent=1)
    os.replace(path + ".tmp", path)


def sar_domain(cfg) -> dict:
    """The SAR radiometry the generator's samples imitate (what the SAR gallery of a fused evaluation must use)."""
    return {"sar_radiometry": cfg.INPUT.SAR_RADIOMETRY, "sar_percentiles": list(cfg.INPUT.SAR_PERCENTILES),
            "sar_db_range": list(cfg.INPUT.SAR_DB_RANGE)}


def read_generator(cache_dir: str) -> dict:
    """The cache's generator description ({} before any generation). A small file: read at start-up."""
    path = os.path.join(cache_dir, GENERATOR_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def has_entry(cache_dir: str, record: ChipRecord) -> bool:
    return os.path.isfile(os.path.join(entry_dir(cache_dir, record), SOURCE_FILE))


def write_entry(cache_dir: str, record: ChipRecord, samples: np.ndarray, width: int, height: int) -> str:
    """Store `samples` (K, H, W) uint8 for `record` atomically; returns the entry folder."""
    final = entry_dir(cache_dir, record)
    partial = final + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    for k, sample in enumerate(samples):
        Image.fromarray(np.repeat(sample[..., None], 3, axis=2)).save(os.path.join(partial, sample_name(k)))
    with open(os.path.join(partial, SOURCE_FILE), "w") as f:
        json.dump({"name": record.name, "sha1": file_sha1(record.path), "width": width, "height": height,
                   "num_samples": len(samples)}, f, indent=1)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


def read_entry(cache_dir: str, record: ChipRecord, num_samples: int) -> tuple[list[str], int, int]:
    """The first `num_samples` sample paths of `record` and its pixel (width, height); errors say what to run."""
    folder = entry_dir(cache_dir, record)
    meta_path = os.path.join(folder, SOURCE_FILE)
    if not os.path.isfile(meta_path):
        raise PseudoSarCacheError(f"no pseudo-SAR chips for {record.path} in {cache_dir}; generate them with "
                                  "tools/generate_pseudo_sar.py (same config) or set TEST.FUSION.CACHE_DIR")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta["sha1"] != file_sha1(record.path):
        raise PseudoSarCacheError(f"{folder} was generated from another file named {record.name} than "
                                  f"{record.path}; regenerate the cache for this dataset")
    if meta["num_samples"] < num_samples:
        raise PseudoSarCacheError(f"{folder} holds {meta['num_samples']} samples, TEST.FUSION.NUM_SAMPLES asks "
                                  f"for {num_samples}; lower it or regenerate")
    return [os.path.join(folder, sample_name(k)) for k in range(num_samples)], meta["width"], meta["height"]


class PseudoSarDataset(Dataset):
    """Generated chips as SAR inputs of the ReID model, each with its optical source's size vector."""

    def __init__(self, entries: list[tuple[str, int, int]], size_encoder, transform, source_modality: int):
        """entries: (sample path, source width px, source height px)."""
        self.entries, self.size_encoder, self.transform = entries, size_encoder, transform
        self.source_modality = source_modality

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        path, width, height = self.entries[index]
        try:
            pixels = np.array(Image.open(path).convert("RGB"))
        except OSError as err:
            raise PseudoSarCacheError(f"{path}: cannot read the generated chip ({err}); regenerate it") from None
        return {"image": self.transform(pixels), "modality": SAR,
                "size": torch.tensor(self.size_encoder(width, height, self.source_modality), dtype=torch.float32)}
