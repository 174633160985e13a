"""Embed every test image once, then score each protocol (ALL, O2S, S2O) from the same features."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from torch.utils.data import DataLoader

from datasets import build_test_loader
from datasets.build import loader_workers, screen
from datasets.hoss import Protocol
from datasets.pseudo_sar import PseudoSarDataset, read_entry
from datasets.radiometry import ChipDecoder
from datasets.records import OPTICAL, ChipRecord
from datasets.ship_size import ShipSizeEncoder
from datasets.transforms import build_test_transform
from utils.device import move_batch
from utils.distributed import gather_objects, is_main, rank, world_size
from utils.errors import ShipReIDError
from utils.metrics import DEFAULT_RANKS, evaluate_features, evaluate_ranking, squared_euclidean
from utils.query_expansion import average_query_expansion
from utils.ranked_list import draw_ranked_lists
from utils.reranking import re_ranking

from .explainer import Explainer, explain_ranked_lists
from .fusion import fuse_with_pseudo_sar

logger = logging.getLogger("shipreid.eval")


def _image_key(record: ChipRecord) -> tuple[str, int]:
    # The release's subset/ folders hold copies of the ALL files: same name and size -> same image.
    return record.name, os.path.getsize(record.path)


def unique_images(protocols: list[Protocol]) -> list[ChipRecord]:
    """One record per image (its first), over every protocol's query and gallery: the rows of the features."""
    images: dict[tuple[str, int], ChipRecord] = {}
    for protocol in protocols:
        for record in protocol.query + protocol.gallery:
            images.setdefault(_image_key(record), record)
    return list(images.values())


def screening_order(protocols: list[Protocol]) -> list[ChipRecord]:
    """Every test file once: the first file of each image (the feature rows, when all decode), then the copies.
    Split over the ranks like the rows, the check then decodes on each rank the chips it embeds and caches."""
    first, copies, images = [], [], set()
    for record in {r.path: r for p in protocols for r in p.query + p.gallery}.values():
        try:
            image = _image_key(record)
        except OSError:  # a missing file: the check names it
            image = record.path
        (copies if image in images else first).append(record)
        images.add(image)
    return first + copies


def keep_only(protocols: list[Protocol], paths: set[str]) -> list[Protocol]:
    return [Protocol(p.name, [r for r in p.query if r.path in paths], [r for r in p.gallery if r.path in paths],
                     p.derived) for p in protocols]


def shard_rows(num_rows: int) -> range:
    """The rows this rank embeds: every world-th from its rank."""
    return range(rank(), num_rows, world_size())


class Evaluator:
    """Test images are checked (decoded) once at construction, so a bad file stops the run before any
    training or embedding; with DATALOADER.ON_BAD_IMAGE skip it leaves the protocols instead. With
    DATALOADER.CACHE_IMAGES the decoded chips of the rows this rank embeds stay in memory (within its share of
    CACHE_MAX_GB) for every evaluation.

    Under torchrun each rank embeds its rows, and rank 0 alone scores the gathered features and hands every
    rank the same results."""

    def __init__(self, cfg, protocols: list[Protocol]):
        self.cfg = cfg
        self.logged_feature = False

        def own_rows(kept: list[ChipRecord]) -> list[ChipRecord]:
            records = unique_images(keep_only(protocols, {r.path for r in kept}))
            return [records[i] for i in shard_rows(len(records))]

        usable, self.cache = screen(cfg, screening_order(protocols), ChipDecoder.from_config(cfg), reads=own_rows)
        self.protocols = keep_only(protocols, {r.path for r in usable})
        self.records = unique_images(self.protocols)
        self.row = {_image_key(r): i for i, r in enumerate(self.records)}

    @torch.no_grad()
    def _embed(self, model, device, loader_for, num_rows: int, desc: str) -> torch.Tensor:
        """Features of rows 0..num_rows-1, float32 on the host; `loader_for(rows)` loads those rows.

        Under DDP each rank embeds every world-th row and all ranks receive the whole matrix.
        """
        was_training = model.training
        model.eval()
        if not self.logged_feature:
            logger.info("test feature: %s (TEST.NECK_FEAT %s), %s", model.test_feature(self.cfg.TEST.NECK_FEAT),
                        self.cfg.TEST.NECK_FEAT, "L2-normalised" if self.cfg.TEST.FEAT_NORM else "not normalised")
            self.logged_feature = True
        rows = list(shard_rows(num_rows))
        feats = []
        for batch in tqdm(loader_for(rows), desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                          disable=not is_main()):
            feats.append(model.embed(move_batch(batch, device), self.cfg.TEST.NECK_FEAT,
                                     self.cfg.TEST.FLIP_FEATS).float().cpu())
        model.train(was_training)
        local = torch.cat(feats) if feats else None  # None: a rank with no rows (fewer images than ranks)
        if world_size() == 1:
            return local if local is not None else torch.empty(0, 0)
        return merge_shards(gather_objects((rows, local)), num_rows)

    def extract(self, model, device) -> torch.Tensor:
        """Features of every unique test image (row order of self.records), fused with their pseudo-SAR
        chips' when TEST.FUSION.CACHE_DIR is set."""
        feats = self._embed(model, device,
                            lambda rows: build_test_loader(self.cfg, [self.records[i] for i in rows], self.cache),
                            len(self.records), "embed")
        if self.cfg.TEST.FUSION.CACHE_DIR:
            feats = self.fuse(model, device, feats)
        return feats

    def fuse(self, model, device, feats: torch.Tensor) -> torch.Tensor:
        """MOS CDGF: every optical test image's feature fused with its K cached pseudo-SAR chips' features.

        The official code fuses the optical side(s) of each protocol (ALL: both, O2S: query, S2O: gallery);
        every other side holds SAR images only, so fusing every optical image once is the same thing.
        """
        fusion = self.cfg.TEST.FUSION
        if not self.cfg.TEST.FEAT_NORM:
            raise ShipReIDError("TEST.FUSION needs TEST.FEAT_NORM True: fused features are L2-normalised")
        optical = [i for i, record in enumerate(self.records) if record.modality == OPTICAL]
        k = fusion.NUM_SAMPLES
        entries = []
        for i in optical:
            paths, width, height = read_entry(fusion.CACHE_DIR, self.records[i], k)
            entries += [(path, width, height) for path in paths]
        dataset = PseudoSarDataset(entries, ShipSizeEncoder.from_config(self.cfg), build_test_transform(self.cfg),
                                   source_modality=OPTICAL)

        def loader_for(rows):
            return DataLoader(torch.utils.data.Subset(dataset, rows), batch_size=self.cfg.TEST.IMS_PER_BATCH,
                              shuffle=False, num_workers=loader_workers(self.cfg))

        pseudo = self._embed(model, device, loader_for, len(entries), "embed pseudo-SAR")
        fused = feats.clone()
        if optical:
            fused[optical] = fuse_with_pseudo_sar(feats[optical], pseudo.view(len(optical), k, -1), fusion.TAU)
        logger.info("fused %d optical test features with %d pseudo-SAR chips each (tau %g)", len(optical), k,
                    fusion.TAU)
        return fused

    def protocol_features(self, feats: torch.Tensor, protocol: Protocol):
        rows = [self.row[_image_key(r)] for r in protocol.query + protocol.gallery]
        return feats[rows]

    def query_gallery(self, feats: torch.Tensor, protocol: Protocol) -> tuple[torch.Tensor, torch.Tensor]:
        """The protocol's query and gallery features as they are ranked (see `features_for_ranking`)."""
        chosen = self.protocol_features(feats, protocol)
        return features_for_ranking(self.cfg.TEST, chosen[:len(protocol.query)], chosen[len(protocol.query):])

    def distances(self, feats: torch.Tensor, protocol: Protocol) -> torch.Tensor:
        chosen = self.protocol_features(feats, protocol)
        return ranking_distances(self.cfg.TEST, chosen[:len(protocol.query)], chosen[len(protocol.query):])

    def score(self, feats: torch.Tensor, protocol: Protocol) -> dict:
        t = self.cfg.TEST
        num_query = len(protocol.query)
        q_pids, g_pids = [r.pid for r in protocol.query], [r.pid for r in protocol.gallery]
        if t.RE_RANKING:
            metrics = evaluate_ranking(self.distances(feats, protocol), q_pids, g_pids)
        else:  # chunked: the full distance matrix never exists
            metrics = evaluate_features(*self.query_gallery(feats, protocol), q_pids, g_pids)
        metrics.update(num_query=num_query, num_gallery=len(protocol.gallery), derived=protocol.derived)
        if metrics["num_skipped_query"]:
            logger.info("%s: %d queries have no positive in the gallery and are skipped", protocol.name,
                        metrics["num_skipped_query"])
        return metrics

    def evaluate(self, model, device) -> tuple[dict, torch.Tensor]:
        """Metrics of every protocol (the same on every rank) and the (fused, when configured) features."""
        feats = self.extract(model, device)
        return on_rank0_for_all(lambda: self.score_all(feats.to(device))), feats

    def score_all(self, feats: torch.Tensor) -> dict:
        return {p.name: self.score(feats, p) for p in self.protocols}

    def save_ranked_lists(self, feats: torch.Tensor, output_dir: str, model=None, device=None) -> list[str]:
        """ranked_<protocol>.png for the first TEST.RANKED_LIST_QUERIES queries of every protocol, ranked as
        the metrics rank them (AQE, re-ranking); with TEST.RANKED_LIST_MAPS, with the maps of `model` on `device`
        (processor/explainer.py)."""
        t = self.cfg.TEST
        if t.RANKED_LIST_MAPS and model is None:
            raise ShipReIDError("TEST.RANKED_LIST_MAPS True draws the model's maps: pass the model to "
                                "save_ranked_lists, or set TEST.RANKED_LIST_MAPS False")
        decoder = ChipDecoder.from_config(self.cfg)
        explainer = Explainer(model, self.cfg, device) if t.RANKED_LIST_MAPS else None
        paths = []
        for protocol in self.protocols:
            dist = self.distances(feats, protocol)
            path = os.path.join(output_dir, f"ranked_{protocol.name}.png")
            if explainer is not None:
                paths.append(explain_ranked_lists(explainer, protocol.query, protocol.gallery, dist, path,
                                                  t.RANKED_LIST_QUERIES, t.RANKED_LIST_TOPK)[0])
            else:
                paths.append(draw_ranked_lists(protocol.query, protocol.gallery, dist,
                                               lambda r: decoder(r.path, r.modality)[0], path,
                                               t.RANKED_LIST_QUERIES, t.RANKED_LIST_TOPK))
        return paths

    def save_features(self, feats: torch.Tensor, output_dir: str) -> list[str]:
        paths = []
        for protocol in self.protocols:
            records = protocol.query + protocol.gallery
            path = os.path.join(output_dir, f"features_{protocol.name}.npz")
            np.savez(path, feats=self.protocol_features(feats, protocol).numpy().astype(np.float32),
                     pids=np.array([r.pid for r in records], dtype=np.int64),
                     camids=np.array([r.modality for r in records], dtype=np.int64),
                     names=np.array([r.name for r in records]),
                     num_query=np.int64(len(protocol.query)))
            paths.append(path)
        return paths


SAVED_FEATURE_KEYS = ("feats", "names", "num_query")


def load_saved_ranking(cfg, path: str, dataset) -> tuple[Protocol, torch.Tensor]:
    """(protocol, query x gallery distances) of a features_<protocol>.npz that `save_features` wrote, ranked as
    test.py ranks (TEST.AQE, TEST.RE_RANKING); the chips are `dataset`'s, checked by name against the file's."""
    name = os.path.basename(path)
    if not (name.startswith("features_") and name.endswith(".npz")):
        raise ShipReIDError(f"{path}: expected a features_<protocol>.npz written by test.py (TEST.SAVE_FEATS True)")
    if not os.path.isfile(path):
        raise ShipReIDError(f"{path}: file not found")
    saved = np.load(path)
    missing = [key for key in SAVED_FEATURE_KEYS if key not in saved]
    if missing:
        raise ShipReIDError(f"{path}: no {', '.join(missing)} in it; not a features file of test.py")
    protocol_name = name[len("features_"):-len(".npz")]
    protocol = dataset.protocol(protocol_name)
    if [r.name for r in protocol.query + protocol.gallery] != list(saved["names"]):
        raise ShipReIDError(f"{path}: its file names do not match protocol {protocol_name} under "
                            f"{cfg.DATASETS.ROOT_DIR}; pass the DATASETS.ROOT_DIR the features were computed on")
    feats, num_query = torch.from_numpy(saved["feats"]), int(saved["num_query"])
    return protocol, ranking_distances(cfg.TEST, feats[:num_query], feats[num_query:])


def merge_shards(shards: list[tuple[list[int], torch.Tensor | None]], num_rows: int) -> torch.Tensor:
    """The num_rows x dim matrix from every rank's (rows, features); a rank without rows sent None."""
    filled = [(rows, feats) for rows, feats in shards if feats is not None]
    if not filled:
        return torch.empty(0, 0)
    merged = torch.empty(num_rows, filled[0][1].shape[1])
    for rows, feats in filled:
        merged[rows] = feats
    return merged


def on_rank0_for_all(compute):
    """compute() on rank 0 only (one process allocates: the re-ranking memory check holds); every rank returns
    its value, or raises its ShipReIDError, received through a broadcast the other ranks wait in."""
    if world_size() == 1:
        return compute()
    outcome = [None]
    if is_main():
        try:
            outcome[0] = (compute(), None)
        except ShipReIDError as err:
            outcome[0] = (None, err)
    dist.broadcast_object_list(outcome, src=0)
    value, error = outcome[0]
    if error is not None:
        raise error
    return value


def features_for_ranking(test_cfg, query: torch.Tensor, gallery: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised when TEST.FEAT_NORM, query-expanded (then normalised again) when TEST.AQE."""
    t = test_cfg
    if t.FEAT_NORM:
        query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    if t.AQE:
        query, gallery = average_query_expansion(query, gallery, t.AQE_K, t.AQE_ALPHA, t.AQE_ROUNDS)
        if t.FEAT_NORM:
            query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    return query, gallery


def ranking_distances(test_cfg, query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """The full query x gallery distance matrix that ranks (re-ranked when TEST.RE_RANKING)."""
    t = test_cfg
    query, gallery = features_for_ranking(t, query, gallery)
    if t.RE_RANKING:
        return re_ranking(query, gallery, t.RE_RANKING_K1, t.RE_RANKING_K2, t.RE_RANKING_LAMBDA)
    return squared_euclidean(query, gallery)


def format_results(results: dict) -> str:
    """Protocol x metric table in percentages."""
    ranks = [f"R{k}" for k in DEFAULT_RANKS]
    header = f"{'protocol':<9}{'mAP':>7}" + "".join(f"{r:>7}" for r in ranks) + f"{'mINP':>7}{'queries':>9}" \
             f"{'gallery':>9}  folders"
    lines = [header, "-" * len(header)]
    for name, m in results.items():
        lines.append(f"{name:<9}{100 * m['mAP']:>7.2f}" + "".join(f"{100 * m[r]:>7.2f}" for r in ranks)
                     + f"{100 * m['mINP']:>7.2f}{m['num_query']:>9}{m['num_gallery']:>9}  "
                     + ("derived" if m["derived"] else "release"))
    return "\n".join(lines)
