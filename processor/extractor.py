"""Embed image files or arrays with a trained model: no dataset folder needed (torchreid-style API).

    extractor = FeatureExtractor("configs/hoss/transoss.yml", "logs/run/model_final.pth", device="cpu")
    feats = extractor(["a_RGB.tif", "b_SAR.tif"])                     # modality from the file names
    feats = extractor([array], modalities=[1], sizes=[(46, 230)])     # arrays: say modality and pixel size
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence, Union

import numpy as np
import torch

from configs import load_config
from datasets.radiometry import ChipDecoder
from datasets.records import MODALITY_TAGS
from datasets.ship_size import ShipSizeEncoder
from datasets.transforms import build_test_transform
from model import build_model
from model.weights import load_weights
from utils.device import resolve_device
from utils.errors import ShipReIDError

_MODALITY_IN_NAME = re.compile(r"_(RGB|SAR)\.[A-Za-z]+$")


def modality_from_name(path: str) -> int:
    match = _MODALITY_IN_NAME.search(os.path.basename(path))
    if match is None:
        raise ShipReIDError(f"{path}: cannot tell the modality from the name (expected ..._RGB.tif or ..._SAR.tif); "
                            "pass modalities=[0 or 1, ...]")
    return MODALITY_TAGS[match[1]]


class FeatureExtractor:
    """Loads a config and weights once; calling it embeds a list of paths or uint8/float arrays in batches.

    Paths are decoded exactly as test.py decodes them (same radiometry, resize and size vector), so the
    features equal test.py's for the same files. Arrays are taken as already decoded 8-bit H x W x 3 chips
    (or a float32 H x W SAR amplitude, converted with the configured radiometry); their original pixel size
    (width, height) must be given for the size token.
    """

    def __init__(self, config_file: str, weights: str, device: str = "auto", opts: Sequence[str] = (),
                 batch_size: Optional[int] = None):
        self.cfg = load_config(config_file, list(opts))
        self.device = resolve_device(device)
        self.model = build_model(self.cfg).to(self.device).eval()
        load_weights(self.model, weights, mode="full", strict=self.cfg.MODEL.STRICT_LOAD,
                     file_grid=self.cfg.MODEL.WEIGHTS_GRID)
        self.decoder = ChipDecoder.from_config(self.cfg)
        self.size_encoder = ShipSizeEncoder.from_config(self.cfg)
        self.transform = build_test_transform(self.cfg)
        self.batch_size = batch_size or self.cfg.TEST.IMS_PER_BATCH

    def _prepare(self, item: Union[str, np.ndarray], modality: Optional[int], size):
        if isinstance(item, str):
            modality = modality_from_name(item) if modality is None else modality
            pixels, (width, height) = self.decoder(item, modality)
        else:
            if modality is None or size is None:
                raise ShipReIDError("arrays need their modality (0 optical, 1 SAR) and original size (width, height)")
            pixels = self.decoder.sar_to_rgb(item) if item.ndim == 2 else np.asarray(item, dtype=np.uint8)
            width, height = size
        return self.transform(pixels), modality, self.size_encoder(width, height, modality)

    @torch.no_grad()
    def __call__(self, items: Sequence[Union[str, np.ndarray]], modalities: Optional[Sequence[int]] = None,
                 sizes: Optional[Sequence[tuple[int, int]]] = None, normalize: bool = False) -> torch.Tensor:
        """(N, D) float32 features on the host, pre-normalisation unless `normalize`."""
        modalities = list(modalities) if modalities is not None else [None] * len(items)
        sizes = list(sizes) if sizes is not None else [None] * len(items)
        feats = []
        for start in range(0, len(items), self.batch_size):
            chunk = [self._prepare(*args) for args in zip(items[start:start + self.batch_size],
                                                           modalities[start:start + self.batch_size],
                                                           sizes[start:start + self.batch_size])]
            batch = {"image": torch.stack([c[0] for c in chunk]).to(self.device),
                     "modality": torch.tensor([c[1] for c in chunk], device=self.device),
                     "size": torch.tensor([c[2] for c in chunk], dtype=torch.float32, device=self.device)}
            feats.append(self.model.embed(batch, self.cfg.TEST.NECK_FEAT, self.cfg.TEST.FLIP_FEATS).float().cpu())
        out = torch.cat(feats) if feats else torch.empty(0, self.cfg.MODEL.EMBED_DIM)
        return torch.nn.functional.normalize(out, dim=1) if normalize else out
