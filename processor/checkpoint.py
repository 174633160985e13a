"""Checkpoint files: full training state with a `last_checkpoint` pointer, and weights-only exports.

Every file is written to a temporary name in the same folder and renamed into place, so a kill during a
save never leaves a partial file under a real name (the pointer is only updated after the rename).
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch

from model.weights import has_official_layout, to_official
from utils.distributed import gather_objects, is_main, world_size
from utils.errors import ShipReIDError

logger = logging.getLogger("shipreid.checkpoint")

LAST_POINTER = "last_checkpoint"
CHECKPOINT_DIR = "checkpoints"


def atomic_save(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_training_state(output_dir: str, name: str, state: dict) -> str:
    path = os.path.join(output_dir, CHECKPOINT_DIR, name)
    atomic_save(state, path)
    pointer = os.path.join(output_dir, CHECKPOINT_DIR, LAST_POINTER)
    with open(pointer + ".tmp", "w") as f:
        f.write(name + "\n")
    os.replace(pointer + ".tmp", pointer)
    return path


def last_checkpoint(output_dir: str) -> str | None:
    pointer = os.path.join(output_dir, CHECKPOINT_DIR, LAST_POINTER)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        path = os.path.join(output_dir, CHECKPOINT_DIR, f.read().strip())
    if not os.path.isfile(path):
        raise ShipReIDError(f"{pointer} names {path}, which does not exist; delete the pointer to start over")
    return path


def resume_checkpoint(output_dir: str) -> str | None:
    """The checkpoint that --resume continues from, the same on every rank (collective under torchrun): rank 0 reads
    the pointer, then every rank must see that file itself. A checkpoint is ~1 GB for ViT-B with its optimizer
    state, so it is not sent over the process group: OUTPUT_DIR must be on a filesystem every node shares."""
    if world_size() == 1:
        return last_checkpoint(output_dir)
    found = [None, None]  # (path or None, rank 0's error)
    if is_main():
        try:
            found[0] = last_checkpoint(output_dir)
        except ShipReIDError as err:
            found[1] = str(err)
    torch.distributed.broadcast_object_list(found, src=0)
    path, error = found
    if error is not None:
        raise ShipReIDError(error)
    if path is None:
        return None
    blind = [r for r, seen in enumerate(gather_objects(os.path.isfile(path))) if not seen]
    if blind:
        raise ShipReIDError(
            f"--resume: rank(s) {', '.join(map(str, blind))} cannot see {path}, the checkpoint that rank 0 found "
            f"in {output_dir}; every rank reads it itself, so OUTPUT_DIR must be on a filesystem that all nodes "
            "share (mounted at the same path), or copy the checkpoints folder to that path on every node")
    return path


def load_training_state(path: str) -> dict:
    # Training states hold RNG states (numpy arrays, tuples), so they are not weights-only files. They are
    # only ever read from this run's own OUTPUT_DIR.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise ShipReIDError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {err})") from None


def export_weights(model, output_dir: str, stem: str) -> tuple[str, str | None]:
    """`<stem>.pth` (shipreid layout, for test.py) and `<stem>_official.pth` (official TransOSS / SDF-Net
    layout), the latter only for models the official code can hold (not SDF-Net's linear heads)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ours = os.path.join(output_dir, f"{stem}.pth")
    atomic_save(state, ours)
    if not has_official_layout(state):
        logger.info("%s: no official layout for this model (MODEL.SDF.DFL linear); only %s written", stem, ours)
        return ours, None
    official = os.path.join(output_dir, f"{stem}_official.pth")
    atomic_save(to_official(state), official)
    return ours, official


@contextlib.contextmanager
def exported_weights(model, path: str):
    """Inside the block `model` holds the weights of the export `path` (export_weights' <stem>.pth), after it its
    own again. Collective under torchrun: rank 0 reads the file (it wrote it) and sends the weights to the others."""
    own = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if is_main():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if world_size() > 1:
        for tensor in model.state_dict().values():  # views of the parameters and buffers: filled in place
            torch.distributed.broadcast(tensor, src=0)
    try:
        yield model
    finally:
        model.load_state_dict(own)


def export_backbone(model, output_dir: str, stem: str) -> str:
    """Backbone-only weights (for MODEL.PRETRAIN_PATH of fine-tuning)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    path = os.path.join(output_dir, f"{stem}.pth")
    atomic_save(state, path)
    return path
