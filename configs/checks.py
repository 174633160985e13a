"""Checks that depend on the configuration alone (and on the small generator file of a pseudo-SAR cache). Every
entry point runs them at start-up, before any image is scanned or decoded, so that a wrong setting stops a run in
its first second, not at its first evaluation."""
from __future__ import annotations

from model.embeddings import patch_grid
from processor.optim_step import AMP_MODES
from utils.errors import ShipReIDError


class ConfigCheckError(ShipReIDError):
    """Settings that cannot work together; the message lists every problem found."""


def _grid_problems(cfg) -> list[str]:
    m = cfg.MODEL
    sizes = {"INPUT.SIZE_TRAIN": list(cfg.INPUT.SIZE_TRAIN), "INPUT.SIZE_TEST": list(cfg.INPUT.SIZE_TEST)}
    small = [f"{key} {size} is smaller than MODEL.PATCH_SIZE {m.PATCH_SIZE}" for key, size in sizes.items()
             if min(size) < m.PATCH_SIZE]
    if small:
        return small
    (train_rows, train_cols), (test_rows, test_cols) = (patch_grid(size, m.PATCH_SIZE, m.STRIDE_SIZE)
                                                        for size in sizes.values())
    if (train_rows, train_cols) == (test_rows, test_cols):
        return []
    return [f"INPUT.SIZE_TRAIN {sizes['INPUT.SIZE_TRAIN']} gives a {train_rows}x{train_cols} patch grid and "
            f"INPUT.SIZE_TEST {sizes['INPUT.SIZE_TEST']} a {test_rows}x{test_cols} one (MODEL.PATCH_SIZE "
            f"{m.PATCH_SIZE}, MODEL.STRIDE_SIZE {list(m.STRIDE_SIZE)}); the model has one position embedding: set "
            "both sizes to the same value"]


# the settings each SAR radiometry reads, besides its name
_RADIOMETRY_KEYS = {"max": (), "percentile": ("sar_percentiles",), "db": ("sar_db_range",)}


def _fusion_problems(cfg) -> list[str]:
    """TEST.FUSION against the generator that filled TEST.FUSION.CACHE_DIR: samples per chip, and the SAR
    radiometry its pseudo-SAR chips imitate (fused into features of another SAR domain they would be wrong)."""
    from datasets.pseudo_sar import GENERATOR_FILE, read_generator, sar_domain
    fusion = cfg.TEST.FUSION
    generator = read_generator(fusion.CACHE_DIR) if fusion.CACHE_DIR else {}
    where, problems = f"{fusion.CACHE_DIR}/{GENERATOR_FILE}", []
    generated = generator.get("num_samples")
    if generated is not None and generated < fusion.NUM_SAMPLES:
        problems.append(f"TEST.FUSION.NUM_SAMPLES {fusion.NUM_SAMPLES} asks for more pseudo-SAR chips per optical chip "
                        f"than the {generated} that {where} says were generated: set TEST.FUSION.NUM_SAMPLES "
                        f"{generated} or regenerate the cache with more")
    domain = sar_domain(cfg)
    if "sar_radiometry" not in generator:  # a cache from before the radiometry was recorded
        return problems
    keys = ("sar_radiometry", *_RADIOMETRY_KEYS.get(generator["sar_radiometry"], ()))
    differ = {key: (generator.get(key), domain[key]) for key in keys if generator.get(key) != domain[key]}
    if differ:
        problems.append(f"{where} was generated for another SAR radiometry than this run's ("
                        + ", ".join(f"{k}: cache {v[0]} vs INPUT.{k.upper()} {v[1]}" for k, v in differ.items())
                        + "): set INPUT.SAR_* as for the generation or regenerate the cache")
    return problems


def config_problems(cfg) -> list[str]:
    from loss.build import loss_config_problems  # the loss package knows its terms
    problems = _grid_problems(cfg) + loss_config_problems(cfg) + _fusion_problems(cfg)
    if not 0 <= cfg.MODEL.SDF.STRUCT_LAYER <= cfg.MODEL.DEPTH:
        problems.append(f"MODEL.SDF.STRUCT_LAYER {cfg.MODEL.SDF.STRUCT_LAYER} must be between 0 (off) and "
                        f"MODEL.DEPTH {cfg.MODEL.DEPTH}")
    if "triplet" in cfg.LOSS.TERMS and cfg.SOLVER.IMS_PER_BATCH // max(1, cfg.DATALOADER.NUM_INSTANCE) < 2:
        problems.append(f"the triplet loss needs two identities per batch: SOLVER.IMS_PER_BATCH "
                        f"{cfg.SOLVER.IMS_PER_BATCH} holds {cfg.SOLVER.IMS_PER_BATCH // max(1, cfg.DATALOADER.NUM_INSTANCE)}"
                        f" of DATALOADER.NUM_INSTANCE {cfg.DATALOADER.NUM_INSTANCE} images; use at least "
                        f"{2 * cfg.DATALOADER.NUM_INSTANCE}")
    if cfg.SOLVER.AMP not in AMP_MODES:
        problems.append(f"SOLVER.AMP must be one of {sorted(AMP_MODES)}, got {cfg.SOLVER.AMP!r}")
    return problems


def check_config(cfg) -> None:
    """Raise ConfigCheckError listing every problem of the configuration that needs no data to find."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigCheckError("the configuration cannot run:\n  " + "\n  ".join(problems))


def selection_problems(cfg) -> list[str]:
    """The settings only a training run that evaluates reads: model selection and the validation split."""
    from processor.selection import select_metric_problems
    problems = select_metric_problems(cfg.SOLVER.SELECT_METRIC, cfg.DATASETS.PROTOCOLS)
    if cfg.DATASETS.VAL_IDS < 0:
        problems.append(f"DATASETS.VAL_IDS must be 0 (no validation split) or a number of identities, got "
                        f"{cfg.DATASETS.VAL_IDS}")
    if cfg.DATASETS.VAL_IDS > 0 and cfg.TEST.FUSION.CACHE_DIR:
        problems.append(f"DATASETS.VAL_IDS {cfg.DATASETS.VAL_IDS} with TEST.FUSION.CACHE_DIR: the pseudo-SAR cache "
                        "holds chips of the test images only, not of the held-out training identities; train without "
                        "fusion and evaluate it with test.py, or set DATASETS.VAL_IDS 0")
    return problems


def check_training_config(cfg) -> None:
    """check_config's counterpart for train.py (fine-tuning with evaluation), at its start-up."""
    problems = selection_problems(cfg)
    if problems:
        raise ConfigCheckError("the configuration cannot run:\n  " + "\n  ".join(problems))
