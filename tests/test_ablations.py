"""Every row of the README's TransOSS ablation table, as the README writes it (one override of the recipe),
trains from the recipe's kind of pretrained backbone: the official contrastive backbone layout
(`vit_b512_pre.pth`: TransOSS names, no prefix) and the official raw pretraining checkpoint (`base.*`). An
initialisation load leaves out the file's parts of modules that the row switches off, and says so."""
from __future__ import annotations

import os
import re

import pytest
import timm
import torch

from conftest import REPO, TINY_MODEL

import train as train_entry
from configs.loader import load_config
from model import build_model
from model.weights import WeightsError, load_weights

ONE_TINY_EPOCH = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
                  "SOLVER.AMP", "off", "SOLVER.MAX_EPOCHS", "1", "SOLVER.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "0",
                  "INPUT.SIZE_TRAIN", "[128,64]", "INPUT.SIZE_TEST", "[128,64]", "DATASETS.PROTOCOLS", "['ALL']"]
IMAGENET_FILE = "weights/vit_base_p16_224-4e355ebd.pth"


def readme_ablation_rows() -> list[tuple[str, list[str]]]:
    """(ablation, override as KEY VALUE words) for each row of the README's ablation table."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    table = text[text.index("| ablation | override |"):].split("\n\n")[0].splitlines()[2:]
    rows = [re.fullmatch(r"\| (.+) \| `(.+)` \|", line).groups() for line in table]
    return [(name, override.split()) for name, override in rows]


ROWS = readme_ablation_rows()


@pytest.fixture(scope="module")
def pretrained_files(tmp_path_factory) -> dict[str, str]:
    """Tiny stand-ins for the recipe's backbones: the golden official checkpoint as a raw pretraining file and
    its backbone in the official contrastive layout; a timm ImageNet ViT for the ImageNet row."""
    folder = tmp_path_factory.mktemp("weights")
    official = torch.load(os.path.join(REPO, "tests", "data", "golden", "transoss_tiny",
                                       "transoss_tiny_official_format.pth"), weights_only=True)
    backbone = {k[len("base."):]: v for k, v in official.items() if k.startswith("base.")}
    torch.manual_seed(0)
    imagenet = timm.create_model("vit_base_patch16_224", pretrained=False, embed_dim=48, depth=2, num_heads=3)
    files = {"raw_pretraining": official, "contrastive_backbone": backbone, "imagenet": imagenet.state_dict()}
    for name, state in files.items():
        torch.save(state, folder / f"{name}.pth")
    return {name: str(folder / f"{name}.pth") for name in files}


def test_the_readme_table_is_read():
    assert len(ROWS) == 6 and ["MODEL.SSE", "False"] in [override for _, override in ROWS]


@pytest.mark.parametrize("init", ["contrastive_backbone"])  # the raw checkpoint: the test below
@pytest.mark.parametrize("ablation,override", ROWS, ids=[name for name, _ in ROWS])
def test_every_ablation_row_trains_from_the_pretrained_backbone(hoss_root, pretrained_files, tmp_path, ablation,
                                                                override, init):
    override = [pretrained_files["imagenet"] if word == IMAGENET_FILE else word for word in override]
    out = tmp_path / "out"
    trainer = train_entry.main(["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root,
                                *ONE_TINY_EPOCH, "MODEL.PRETRAIN_PATH", pretrained_files[init], *override,
                                "OUTPUT_DIR", str(out)])
    assert trainer.epoch == 2 and (out / "model_final.pth").is_file()
    switch = " ".join(override)
    log = (out / "train.log").read_text()
    if switch in ("MODEL.DUAL_PATCH_EMBED False", "MODEL.MIE False", "MODEL.SSE False"):
        assert f"switched off by {switch}" in log


@pytest.mark.parametrize("override,left_out", [
    (["MODEL.DUAL_PATCH_EMBED", "False"], ["backbone.patch_embed.sar.weight", "backbone.patch_embed.sar.bias"]),
    (["MODEL.MIE", "False"], ["backbone.mie_embed"]),
    (["MODEL.SSE", "False"], ["backbone.size_embed.weight", "backbone.size_embed.bias"])])
def test_switched_off_modules_are_left_out_at_init_only(pretrained_files, override, left_out):
    cfg = load_config("configs/hoss/transoss.yml", [*TINY_MODEL, *override])
    model = build_model(cfg)
    report = load_weights(model, pretrained_files["contrastive_backbone"], mode="init")
    assert set(left_out) <= set(report.ignored) and not report.unexpected
    assert f"left out {', '.join(left_out)}: switched off by {' '.join(override)}" in report.notes
    # the rest of the backbone is loaded, not left at its initialisation
    file_state = torch.load(pretrained_files["contrastive_backbone"], weights_only=True)
    assert torch.equal(model.backbone.blocks[1].mlp.fc2.weight, file_state["blocks.1.mlp.fc2.weight"])
    # a trained model is never adapted silently: evaluation (mode "full") refuses the same file
    with pytest.raises(WeightsError, match="unexpected: " + re.escape(left_out[0])):
        load_weights(build_model(cfg), pretrained_files["raw_pretraining"], mode="full")
    # and anything else unexpected still stops an initialisation load
    state = dict(file_state, **{"blocks.0.extra.weight": torch.ones(1)})
    path = pretrained_files["contrastive_backbone"].replace(".pth", "_extra.pth")
    torch.save(state, path)
    with pytest.raises(WeightsError, match="unexpected: backbone.blocks.0.extra.weight"):
        load_weights(build_model(cfg), path, mode="init")


@pytest.mark.parametrize("trained,evaluated,first_problem,hint", [
    ([], ["MODEL.SSE", "False"], "unexpected: backbone.size_embed.weight, backbone.size_embed.bias",
     "the file has backbone.size_embed.* but this config builds no such module: set MODEL.SSE True"),
    (["MODEL.MIE", "False"], [], "missing: backbone.mie_embed",
     "the model needs backbone.mie_embed* but the file was trained without it: set MODEL.MIE False")])
def test_a_strict_load_failure_leads_with_the_cause(tmp_path, trained, evaluated, first_problem, hint):
    """Evaluating a model with another module switch: the message starts with what does not fit and names the
    switch to set, before any note."""
    path = tmp_path / "trained.pth"
    torch.save(build_model(load_config("configs/hoss/transoss.yml", [*TINY_MODEL, *trained])).state_dict(), path)
    with pytest.raises(WeightsError) as caught:
        load_weights(build_model(load_config("configs/hoss/transoss.yml", [*TINY_MODEL, *evaluated])), str(path),
                     mode="full")
    lines = str(caught.value).splitlines()
    assert lines[0].endswith("trained.pth does not fit the model:")
    assert lines[1].strip() == first_problem and lines[2].strip() == hint + " as the file's model was trained"
    assert "keeps its initialisation" not in str(caught.value)


def test_the_load_report_names_the_ignored_keys(pretrained_files):
    model = build_model(load_config("configs/hoss/transoss.yml", [*TINY_MODEL, "MODEL.SSE", "False"]))
    report = load_weights(model, pretrained_files["raw_pretraining"], mode="init")
    assert "ignored: " in report.summary() and "base.fc.weight" in report.summary().split("ignored: ")[1]
