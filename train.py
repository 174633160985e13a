"""Fine-tune TransOSS on HOSS ReID (identity + triplet losses), evaluating ALL, O2S and S2O.

  python train.py --config_file configs/hoss/transoss.yml DATASETS.ROOT_DIR <dir with HOSS/>
  python train.py --config_file ... --resume        # continue from OUTPUT_DIR's last checkpoint
  python train.py --config_file ... DATASETS.VAL_IDS 30   # select model_best on 30 held-out training identities
"""
from __future__ import annotations

from configs.checks import check_training_config
from datasets import build_dataset, build_train_loader
from datasets.hoss import format_statistics, statistics_rows
from datasets.samplers import check_pk_batch
from datasets.validation import check_selectable, hold_out
from model import build_model, freeze_unreached
from processor.checkpoint import export_weights
from processor.engine import Trainer, unwrap, wrap_ddp
from processor.evaluator import Evaluator
from processor.hooks import CheckpointHook, EvalHook, ProgressHook
from processor.selection import Selection
from processor.setup import log_distribution, prepare_training, run_training
from solver import CosineWarmupScheduler
from utils.cli import describe, run_cli
from utils.distributed import rank, world_size


def build_trainer(cfg, device, logger) -> Trainer:
    # what needs no data is refused before the image scan: model selection, the batch's split into identities and ranks
    check_training_config(cfg)
    check_pk_batch(cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE, world_size(),
                   cfg.DATALOADER.SAMPLER == "pk_modality")
    dataset = build_dataset(cfg)
    dataset.train_labels()  # refuses distractors in the training split
    dataset.check_disjoint_identities()
    protocols = [dataset.protocol(name) for name in cfg.DATASETS.PROTOCOLS]
    train, validation = dataset.train, []
    if cfg.DATASETS.VAL_IDS > 0:
        split = hold_out(dataset.train, cfg.DATASETS.VAL_IDS, cfg.SEED, cfg.DATASETS.PROTOCOLS)
        check_selectable(split, Selection.of(cfg, "validation").protocol)
        train, validation = split.train, split.protocols
        logger.info("validation split: %d training identities held out (DATASETS.VAL_IDS, drawn from SEED %d): %s",
                    len(split.ids), cfg.SEED, split.ids)
    logger.info("data (%s):\n%s", dataset.root, format_statistics(statistics_rows(protocols, train, validation)))

    loader = build_train_loader(cfg, train, rank(), world_size())
    # the identity classifier exists for the "id" term only; what no term reaches is not trained
    model = build_model(cfg, num_classes=loader.dataset.num_classes if "id" in cfg.LOSS.TERMS else 0)
    for reason in freeze_unreached(model, cfg):
        logger.info("not trained: %s", reason)
    log_distribution(cfg, logger)
    model, criterion, optimizer, writer = prepare_training(cfg, model, device, logger)
    evaluation = EvalHook(cfg, Evaluator(cfg, protocols), writer,
                          validation=Evaluator(cfg, validation) if validation else None)
    hooks = [
        ProgressHook(cfg.SOLVER.LOG_PERIOD, writer),
        CheckpointHook(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.OUTPUT_DIR, also_at=evaluation.is_due,
                       final_exports=[lambda t: export_weights(unwrap(t.model), cfg.OUTPUT_DIR, "model_final")]),
        evaluation,
    ]
    compiled = model.backbone if cfg.MODEL.COMPILE else None  # compiled after the DDP wrap (wrap_ddp)
    return Trainer(cfg, wrap_ddp(model, device, compiled), criterion, optimizer, CosineWarmupScheduler(optimizer, cfg),
                   loader, device, hooks)


def main(argv=None):
    return run_training(argv, describe(__doc__), "train.log", build_trainer)


if __name__ == "__main__":
    run_cli(main)
