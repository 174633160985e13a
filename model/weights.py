"""One weight loader for every checkpoint layout TransOSS users meet.

Layouts (detected from the keys, after unwrapping `model`/`state_dict` and stripping `module.`):
  shipreid          this project's checkpoints: `backbone.*`, `neck.*`, `classifier.*`
  official_full     official fine-tuned model or raw pretraining checkpoint (`transformer_<epoch>.pth`):
                    `base.*`, `bottleneck.*`, `classifier.weight`, `logit_scale`, dead `base.fc.*`;
                    SDF-Net adds `base.cls_token_spe_{rgb,sar}`, a 130-entry `base.pos_embed` and
                    `bottleneck_fuse.*` (the live neck when the specific tokens are present)
  official_backbone official contrastive backbone (`vit_b512_pre.pth`): TransOSS names, no prefix
  imagenet_vit      ImageNet ViT (timm's old `.pth`, the `jx_` file, current timm `.pth`/`.safetensors`)
The mapper (`checkpoint_filter_fn`) turns any of them into this project's names; `to_official` goes back.
The official `logit_scale` (the learned InfoNCE temperature) is mapped to `loss.logit_scale`: `load_weights`
puts it into the loss that has one (contrastive pretraining) and ignores it otherwise.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import torch
from timm.layers import resample_abs_pos_embed

from utils.errors import ShipReIDError

logger = logging.getLogger("shipreid.weights")

# official backbone name -> shipreid backbone name (prefix rewrite)
_OFFICIAL_TO_OURS = [
    ("patch_embed.proj.", "patch_embed.optical."),
    ("patch_embed_SAR.proj.", "patch_embed.sar."),
    ("wh_embed.linear_layer.", "size_embed."),
]
# keys that hold nothing the model uses: ImageNet/official classification heads, distillation head
_DEAD_BACKBONE_PREFIXES = ("fc.", "head.", "head_dist.", "fc_norm.")
# backbone parts a config can switch off, with the switch: an initialisation checkpoint may hold them while the
# model does not (the ablation rows start from the recipe's backbone), or lack them (they keep their own init)
_SWITCHABLE = {  # key prefix: (the switch that leaves it out, the switch that builds it)
    "backbone.patch_embed.sar.": ("MODEL.DUAL_PATCH_EMBED False", "MODEL.DUAL_PATCH_EMBED True"),
    "backbone.mie_embed": ("MODEL.MIE False", "MODEL.MIE True"),
    "backbone.size_embed.": ("MODEL.SSE False", "MODEL.SSE True"),
    "backbone.spec_tokens": ("MODEL.SDF.DFL other than tokens", "MODEL.SDF.DFL tokens"),
}


def _switch(key: str) -> tuple[str, str] | None:
    return next((switches for prefix, switches in _SWITCHABLE.items() if key.startswith(prefix)), None)


def _switch_hints(unexpected: list, missing: list) -> list[str]:
    """Which config switch explains keys the file has and the model lacks, or the reverse."""
    hints = []
    for keys, index, reason in ((unexpected, 1, "the file has {} but this config builds no such module"),
                                (missing, 0, "the model needs {} but the file was trained without it")):
        for switch in dict.fromkeys(_switch(k)[index] for k in keys if _switch(k)):
            prefix = next(p for p, s in _SWITCHABLE.items() if s[index] == switch)
            hints.append(f"{reason.format(prefix + '*')}: set {switch} as the file's model was trained")
    return hints
_OPTIONAL_AT_INIT = (*_SWITCHABLE, "head.")
# SDF-Net's modality-specific class tokens, in modality order (OPTICAL, SAR), and our stacked parameter
_OFFICIAL_SPEC_TOKENS = ("cls_token_spe_rgb", "cls_token_spe_sar")
SPEC_TOKENS_KEY = "backbone.spec_tokens"
# the official contrastive temperature (a parameter of the official model); ours lives in the InfoNCE loss
LOGIT_SCALE_KEY = "loss.logit_scale"


class WeightsError(ShipReIDError):
    """A weight file that does not fit the model."""


@dataclass
class LoadReport:
    path: str
    layout: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    ignored: list = field(default_factory=list)      # known-dead or not needed in this mode
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    hints: list = field(default_factory=list)        # config switches that explain the problems

    def problems(self) -> str:
        """What does not fit, first the unexpected and mismatched keys, with the switches that explain them."""
        lines = [f"{title}: {_key_list(keys)}" for title, keys in (
            ("unexpected", self.unexpected), ("shape mismatch", self.mismatched), ("missing", self.missing)) if keys]
        return "\n  ".join(lines + self.hints)

    def summary(self) -> str:
        text = (f"{os.path.basename(self.path)} ({self.layout}): loaded {len(self.loaded)}, "
                f"missing {len(self.missing)}, ignored {len(self.ignored)}, unexpected {len(self.unexpected)}, "
                f"shape mismatches {len(self.mismatched)}")
        if self.problems():
            text += f"\n  {self.problems()}"
        if self.ignored:
            text += f"\n  ignored: {_key_list(self.ignored)}"
        for note in self.notes:
            text += f"\n  {note}"
        return text


def _key_list(keys: list, shown: int = 8) -> str:
    return ", ".join(map(str, keys[:shown])) + (f" ... ({len(keys)} in all)" if len(keys) > shown else "")


def read_state_dict(path: str) -> dict:
    if not os.path.isfile(path):
        raise WeightsError(f"weight file not found: {path}; check MODEL.PRETRAIN_PATH / TEST.WEIGHT")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise WeightsError(f"{path}: cannot read the weight file ({type(err).__name__}: {err}); it must be a "
                           "PyTorch state dict (.pth/.pt) or a .safetensors file") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def detect_layout(state: dict, path: str = "weights") -> str:
    keys = list(state)
    if any(k.startswith("backbone.") for k in keys):
        return "shipreid"
    if any(k.startswith("base.") for k in keys):
        return "official_full"
    if any(k.startswith(("patch_embed_SAR.", "mie_embed", "wh_embed.")) for k in keys):
        return "official_backbone"
    if "cls_token" in state and any(k.startswith("blocks.") for k in keys):
        return "imagenet_vit"
    raise WeightsError(f"{path}: unrecognised checkpoint layout (first keys: " + ", ".join(keys[:5]) + "); expected "
                       "a shipreid, official TransOSS or ImageNet ViT state dict")


def _official_backbone_key(key: str) -> str:
    for old, new in _OFFICIAL_TO_OURS:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def checkpoint_filter_fn(state: dict, layout: str | None = None) -> tuple[dict, list]:
    """Map any supported layout to shipreid names. Returns (mapped state, ignored keys)."""
    layout = layout or detect_layout(state)
    if layout == "shipreid":
        return dict(state), []
    mapped, ignored = {}, []
    # SDF-Net saves two necks; the fused-feature one is live exactly when the specific tokens exist
    disentangled = any(key.endswith(_OFFICIAL_SPEC_TOKENS[0]) for key in state)
    live_neck, dead_neck = ("bottleneck_fuse.", "bottleneck.") if disentangled else ("bottleneck.", "bottleneck_fuse.")
    for original, value in state.items():
        key = original
        if layout == "official_full":
            if key.startswith("base."):
                key = key[len("base."):]
            elif key.startswith(live_neck):
                mapped["neck." + key[len(live_neck):]] = value
                continue
            elif key.startswith(dead_neck):
                ignored.append(key)
                continue
            elif key.startswith("classifier."):
                mapped[key] = value
                continue
            elif key == "logit_scale":
                mapped[LOGIT_SCALE_KEY] = value
                continue
        if key.startswith(_DEAD_BACKBONE_PREFIXES):
            ignored.append(original)
            continue
        mapped["backbone." + _official_backbone_key(key)] = value
    official_spec = ["backbone." + name for name in _OFFICIAL_SPEC_TOKENS]
    if all(name in mapped for name in official_spec):
        mapped[SPEC_TOKENS_KEY] = torch.cat([mapped.pop(name) for name in official_spec], dim=0)
    return mapped, ignored


# a non-square grid is taken from the entry count only when the best factorisation fits the model's aspect ratio
# this much better (in ratio) than the next one; otherwise MODEL.WEIGHTS_GRID must say it
_GRID_MARGIN = math.log(1.5)


def old_patch_grid(num_patches: int, target_grid: tuple[int, int],
                   declared: tuple[int, int] | None = None) -> tuple[int, int]:
    """The grid a checkpoint's position embedding was trained on: `declared` (MODEL.WEIGHTS_GRID) if given;
    square if it can be (ImageNet ViTs); otherwise the factorisation closest to the target grid's aspect
    ratio (e.g. 128 -> 16 x 8 for 256 x 128 input), refused when another one fits nearly as well."""
    if declared:
        if declared[0] * declared[1] != num_patches:
            raise WeightsError(f"MODEL.WEIGHTS_GRID {list(declared)} has {declared[0] * declared[1]} cells, but the "
                               f"position embedding holds {num_patches} patch entries")
        return tuple(declared)
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    target_ratio = target_grid[0] / target_grid[1]
    pairs = [(h, num_patches // h) for h in range(1, num_patches + 1) if num_patches % h == 0]
    misfit = sorted(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1] / target_ratio)))
    best, runner_up = (abs(math.log(h / w / target_ratio)) for h, w in misfit[:2])
    if runner_up - best < _GRID_MARGIN:
        raise WeightsError(f"the position embedding holds {num_patches} patch entries, which fit "
                           f"{misfit[0][0]}x{misfit[0][1]} and {misfit[1][0]}x{misfit[1][1]} about equally well "
                           f"for this model's {target_grid[0]}x{target_grid[1]}; set MODEL.WEIGHTS_GRID "
                           "[rows, cols] to the grid the weights were trained on")
    return misfit[0]


def resize_pos_embed(pos_embed: torch.Tensor, target_grid: tuple[int, int], num_prefix: int = 1,
                     file_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Bilinear resize of the patch part (align_corners=False, no antialias: the official behaviour)."""
    grid = old_patch_grid(pos_embed.shape[1] - num_prefix, target_grid, file_grid)
    return resample_abs_pos_embed(pos_embed, new_size=list(target_grid), old_size=list(grid),
                                  num_prefix_tokens=num_prefix, interpolation="bilinear", antialias=False)


def adapt_pos_embed(pos_embed: torch.Tensor, file_prefix: int, own_prefix: int,
                    target_grid: tuple[int, int], file_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Fit a position embedding to the model: the class entry duplicated for SDF-Net's specific token (as the
    released code initialises it) or the specific entry dropped, then the patch grid resized."""
    if file_prefix < own_prefix:
        pos_embed = torch.cat([pos_embed[:, :1]] * (own_prefix - file_prefix) + [pos_embed], dim=1)
    elif file_prefix > own_prefix:
        pos_embed = torch.cat([pos_embed[:, :own_prefix], pos_embed[:, file_prefix:]], dim=1)
    if pos_embed.shape[1] - own_prefix != target_grid[0] * target_grid[1]:
        pos_embed = resize_pos_embed(pos_embed, target_grid, own_prefix, file_grid)
    return pos_embed


def _load_logit_scale(state: dict, loss, report: LoadReport) -> None:
    """The file's contrastive temperature (official `logit_scale`) into `loss`'s own parameter, when the run
    trains with one (an official raw pretraining checkpoint then resumes with its temperature)."""
    value = state.pop(LOGIT_SCALE_KEY, None)
    if value is None:
        return
    target = None if loss is None else next(
        (p for name, p in loss.named_parameters() if name.split(".")[-1] == "logit_scale"), None)
    if target is None:
        report.ignored.append("logit_scale")
        return
    if value.numel() != 1:
        raise WeightsError(f"{report.path}: logit_scale has shape {list(value.shape)}, expected a single value")
    with torch.no_grad():
        target.copy_(value.reshape(target.shape))
    report.notes.append(f"logit_scale {float(value):.6g} loaded into the InfoNCE loss")


def load_weights(model, path: str, mode: str = "full", strict: bool = True,
                 file_grid: tuple[int, int] | list[int] | None = None, loss=None) -> LoadReport:
    """Load `path` into a ReIDModel.

    mode "init": backbone only (classifier and neck are skipped); MIE, the size token and the SAR patch head
    may be absent (the SAR head is then copied from the optical one), and the file's parts of modules that the
    config switches off (SAR head, MIE, size token, SDF-Net tokens) are left out, with the switch in the report.
    Evaluation and resume ("full") stay strict: a trained model is never adapted silently.
    mode "full": a complete trained model (backbone + neck); the classifier loads when its shape fits.
    `loss`: the training loss; a contrastive temperature in the file (`logit_scale`) goes into its InfoNCE
    term, and is ignored when there is no such term (or no loss).
    With `strict`, unexpected keys and shape mismatches raise; otherwise they are reported and skipped.
    `file_grid` (MODEL.WEIGHTS_GRID; empty or 0x0 = infer): the patch grid of the file's position embedding.
    """
    if mode not in ("init", "full"):
        raise ValueError(f"mode must be 'init' or 'full', got {mode!r}")
    raw = read_state_dict(path)
    layout = detect_layout(raw, path)
    state, ignored = checkpoint_filter_fn(raw, layout)
    report = LoadReport(path, layout, ignored=ignored)
    _load_logit_scale(state, loss, report)
    own = model.state_dict()
    backbone = model.backbone

    patch_key = "backbone.patch_embed.optical.weight"
    if (patch_key in state and state[patch_key].dim() == 2 and patch_key in own
            and state[patch_key].numel() == own[patch_key].numel()):
        state[patch_key] = state[patch_key].reshape(own[patch_key].shape)  # pre-conv linear patchify
        report.notes.append("reshaped a linear patch projection to a convolution")
    pos = state.get("backbone.pos_embed")
    # at initialisation another token count at the same width is adapted; another width is a mismatch reported below
    if pos is not None and pos.shape != own["backbone.pos_embed"].shape and pos.shape[-1] == own["backbone.pos_embed"].shape[-1]:
        file_prefix = 2 if SPEC_TOKENS_KEY in state else 1
        declared = tuple(file_grid) if file_grid and all(file_grid) else None
        try:
            patches, (rows, cols) = pos.shape[1] - file_prefix, backbone.grid_size
            if mode == "full" and patches != rows * cols:
                raise WeightsError(
                    f"its position embedding holds {patches} patch entries, this model's grid is {rows}x{cols} "
                    f"({rows * cols}): a trained model is evaluated at the grid it was trained on, never resized. "
                    "Set MODEL.PATCH_SIZE, MODEL.STRIDE_SIZE and INPUT.SIZE_TRAIN / INPUT.SIZE_TEST as the run was "
                    "trained (e.g. --config_file <run folder>/config.yaml)")
            old_grid = (rows, cols) if patches == rows * cols else old_patch_grid(patches, (rows, cols), declared)
            state["backbone.pos_embed"] = adapt_pos_embed(pos, file_prefix, backbone.num_prefix_tokens,
                                                          backbone.grid_size, old_grid)
        except WeightsError as err:
            raise WeightsError(f"{path}: {err}") from None
        report.notes.append(f"adapted position embedding {list(pos.shape)} -> {list(own['backbone.pos_embed'].shape)}"
                            f" ({file_prefix} -> {backbone.num_prefix_tokens} class entries, grid "
                            f"{old_grid[0]}x{old_grid[1]} -> {backbone.grid_size[0]}x{backbone.grid_size[1]})")
    if backbone.patch_embed.sar is not None and "backbone.patch_embed.sar.weight" not in state:
        for name in ("weight", "bias"):
            optical = state.get(f"backbone.patch_embed.optical.{name}")
            if optical is not None:
                state[f"backbone.patch_embed.sar.{name}"] = optical.clone()
        report.notes.append("no SAR patch head in the file: copied from the optical one")

    to_load, switched_off = {}, {}
    for key, value in state.items():
        if (mode == "init" and not key.startswith("backbone.")) or (key.startswith("classifier.") and key not in own):
            report.ignored.append(key)  # heads that this run does not use or rebuilds
        elif key not in own:
            switch = _switch(key) if mode == "init" else None
            if switch is None:
                report.unexpected.append(key)
            else:
                report.ignored.append(key)
                switched_off.setdefault(switch[0], []).append(key)
        elif value.shape != own[key].shape:
            if key.startswith("classifier."):
                report.ignored.append(key)  # trained on other identities; rebuilt for this run
            else:
                report.mismatched.append(f"{key} {list(value.shape)} vs model {list(own[key].shape)}")
        else:
            to_load[key] = value
    for switch, keys in switched_off.items():
        report.notes.append(f"left out {', '.join(keys)}: switched off by {switch}")
    mismatched_keys = {entry.split(" ")[0] for entry in report.mismatched}
    for key in own:
        if key in to_load or key in mismatched_keys:
            continue
        if key.startswith("classifier.") or (mode == "init" and (
                not key.startswith("backbone.") or key.startswith(_OPTIONAL_AT_INIT))):
            if key.startswith("backbone."):
                report.notes.append(f"{key} keeps its initialisation")
            continue
        report.missing.append(key)
    report.loaded = sorted(to_load)

    report.hints = _switch_hints(report.unexpected, report.missing)
    if report.problems() and strict:
        raise WeightsError(f"{path} does not fit the model:\n  {report.problems()}\nCheck MODEL.* sizes and switches "
                           "against the checkpoint, or set MODEL.STRICT_LOAD False to load what fits")
    model.load_state_dict(to_load, strict=False)
    logger.info("loaded weights %s", report.summary())
    return report


def _ours_to_official_backbone_key(key: str) -> str:
    for old, new in _OFFICIAL_TO_OURS:
        if key.startswith(new):
            return old + key[len(new):]
    return key


def has_official_layout(state: dict) -> bool:
    """Whether `to_official` can express this shipreid state (the official code has no linear DFL heads)."""
    return all(key.startswith(("backbone.", "neck.", "classifier.")) or key == LOGIT_SCALE_KEY for key in state)


def to_official(state: dict) -> dict:
    """shipreid state dict -> the official full layout (`base.*`, `bottleneck.*`, `classifier.weight`,
    `logit_scale`); an SDF-Net model (specific tokens) -> SDF-Net's (`cls_token_spe_{rgb,sar}`, `bottleneck_fuse.*`)."""
    out = {}
    neck = "bottleneck_fuse." if SPEC_TOKENS_KEY in state else "bottleneck."
    for key, value in state.items():
        if key == SPEC_TOKENS_KEY:
            for row, name in enumerate(_OFFICIAL_SPEC_TOKENS):
                out["base." + name] = value[row:row + 1].clone()
        elif key.startswith("backbone."):
            out["base." + _ours_to_official_backbone_key(key[len("backbone."):])] = value
        elif key.startswith("neck."):
            out[neck + key[len("neck."):]] = value
        elif key.startswith("classifier."):
            out[key] = value
        elif key == LOGIT_SCALE_KEY:
            out["logit_scale"] = value
        else:
            raise KeyError(f"{key} has no place in the official layout")
    return out
