"""Every configuration key of shipreid, with its default and what reads it.

Keys are grouped as in the official TransOSS code so that its YAML recipes read the same, but every
key here is used somewhere (`tests/test_config.py` checks the source tree for a reader of each key).
"""
from yacs.config import CfgNode as CN

_C = CN()
# Where logs, the resolved config, results and checkpoints go. Created if missing.
_C.OUTPUT_DIR = "./logs/default"
# Global seed for python, numpy and torch.
_C.SEED = 1234

# --------------------------------------------------------------------------------------------- MODEL
_C.MODEL = CN()
# "auto" (cuda when available, else cpu), "cuda", "cuda:N" or "cpu".
_C.MODEL.DEVICE = "auto"
# Architecture registry key (see model/build.py).
_C.MODEL.NAME = "transoss"
# Vision transformer size. Defaults are ViT-B/16 as in the paper; tests and demos shrink them.
_C.MODEL.EMBED_DIM = 768
_C.MODEL.DEPTH = 12
_C.MODEL.NUM_HEADS = 12
_C.MODEL.MLP_RATIO = 4.0
# Patch size of both patch projections, and their stride (H, W): [16, 16] is non-overlapping,
# [12, 12] the overlapping TransReID variant.
_C.MODEL.PATCH_SIZE = 16
_C.MODEL.STRIDE_SIZE = [16, 16]
# Stochastic depth at the last block (linearly spaced from 0), token dropout, attention dropout.
_C.MODEL.DROP_PATH = 0.1
_C.MODEL.DROP_OUT = 0.0
_C.MODEL.ATT_DROP_RATE = 0.0
# One patch projection per modality (TransOSS "dual-head tokenizer"); False shares the optical one.
_C.MODEL.DUAL_PATCH_EMBED = True
# Modality information embedding (MIE): a learned vector per modality added to every token, scaled.
_C.MODEL.MIE = True
_C.MODEL.MIE_COE = 3.0
# Ship size embedding (SSE): the size vector projected to one extra token appended last.
_C.MODEL.SSE = True
# Attention through torch's fused scaled-dot-product kernel (faster, less memory). False computes
# softmax(q k^T / sqrt(d)) v step by step as the official code does: the same maths summed in another order, for
# bit-level parity checks against the official code (docs/parity.md).
_C.MODEL.FUSED_ATTENTION = True
# torch.compile the ReID backbone (train.py, train_pair.py) or the BBDM UNet being trained (train_bbdm.py):
# faster steps on GPU after a compilation warm-up. Compiled in place after the DDP wrap: under torchrun dynamo splits
# the graph at DDP's gradient buckets, so their all-reduces overlap the backward.
_C.MODEL.COMPILE = False
# Initialisation weights (ImageNet ViT, contrastive TransOSS backbone, or a pretraining checkpoint).
# Empty = random initialisation. The layout is detected from the keys; nothing is downloaded.
_C.MODEL.PRETRAIN_PATH = ""
# The BN neck's training statistics over the global batch (summed over DDP ranks): a multi-process run then takes
# the step one process takes on the same global batch, whatever the number of GPUs. False: per-rank statistics,
# as the official code trained (2 GPUs, unsynchronised); with few identities per rank they describe 1-2 ships.
_C.MODEL.SYNC_BN = True
# SDF-Net modules (Chen et al. 2026); both off = TransOSS. See docs/methods.md.
_C.MODEL.SDF = CN()
# Disentangled feature learning: "off"; "tokens" (released code: a shared and a modality-specific class
# token, the position embedding one entry longer); "linear" (paper figure: two linear heads on the class
# token). Pairs with the "orth" loss term.
_C.MODEL.SDF.DFL = "off"
# How f_shared and f_specific become the ReID feature: "sum" (official), "shared", "specific", "concat"
# (twice the width).
_C.MODEL.SDF.FUSION = "sum"
# Structure-aware consistency: the block (counted from 1) whose patch map feeds the structure descriptor
# of the "struct" loss term; 0 = off (official SDF-Net: 6).
_C.MODEL.SDF.STRUCT_LAYER = 0
# Patch grid [rows, cols] that the loaded weights' position embedding was trained on, for when it differs from
# this model's and its entry count does not tell (the load refuses and says so); [0, 0] = infer (square, or
# the factorisation that clearly fits this model's aspect ratio).
_C.MODEL.WEIGHTS_GRID = [0, 0]
# Refuse weights whose keys do not fit the model (unexpected keys, shape mismatches). Set False to
# load what fits and only report the rest.
_C.MODEL.STRICT_LOAD = True

# ---------------------------------------------------------------------------------------------- LOSS
_C.LOSS = CN()
# Loss terms (see loss/terms.py) and their weights, in the same order. Fine-tuning: id + triplet;
# contrastive pretraining: infonce; SDF-Net adds orth and struct, MOS adds cmal. A weight of 0 keeps a
# term logged but out of the total; orth and struct are left out (with a log line) while their SDF-Net
# module is off, so one module switch is one ablation.
_C.LOSS.TERMS = ["id", "triplet"]
_C.LOSS.WEIGHTS = [1.0, 1.0]
# Label smoothing of the identity cross-entropy (official: 0, i.e. IF_LABELSMOOTH off).
_C.LOSS.LABEL_SMOOTH = 0.0
# Batch-hard triplet margin; 0 selects the soft-margin form log(1 + exp(d_ap - d_an)) (official).
_C.LOSS.TRIPLET_MARGIN = 0.0
# Under DDP, compute the triplet and InfoNCE losses on the batch gathered from every rank (hard
# negatives and contrastive negatives from the whole global batch), as one process would.
_C.LOSS.GATHER_ACROSS_RANKS = True
# Symmetric InfoNCE: initial temperature (official 0.07) and the cap on the learned scale exp(logit_scale), kept
# in [1, INFONCE_MAX_SCALE] as in CLIP; 0 = unclamped (the official TransOSS pretraining, docs/parity.md).
_C.LOSS.INFONCE_TEMPERATURE = 0.07
_C.LOSS.INFONCE_MAX_SCALE = 100.0
# MOS CMAL: False = the released code's Euclidean norms of the mean and variance gaps, True = the
# paper's squared norms.
_C.LOSS.CMAL_SQUARED = False

# --------------------------------------------------------------------------------------------- INPUT
_C.INPUT = CN()
# Network input (H, W) for training (also fixes the model's patch grid) and for testing.
_C.INPUT.SIZE_TRAIN = [256, 128]
_C.INPUT.SIZE_TEST = [256, 128]
# Normalisation applied to both modalities after scaling to [0, 1].
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
# Training augmentation: horizontal flip probability, zero padding before the random crop, and the
# probability of random erasing (one box, per-pixel N(0, 1) fill in normalised space).
_C.INPUT.FLIP_PROB = 0.5
_C.INPUT.PADDING = 10
_C.INPUT.RE_PROB = 0.5
# Colour jitter strength for brightness, contrast and saturation (factors drawn from [1 - s, 1 + s], in a
# random order; hue untouched), after the flip. 0 = off (TransOSS, MOS); SDF-Net uses 0.2.
_C.INPUT.COLOR_JITTER = 0.0
# SAR float32 amplitude to 8-bit: "max" (official: x / max(x) * 255, truncated), "percentile" (MOS
# denoising: clip to [p_low, p_high] percentiles, stretch), "db" (20 log10 amplitude in DB_RANGE).
_C.INPUT.SAR_RADIOMETRY = "max"
_C.INPUT.SAR_PERCENTILES = [5.0, 100.0]
_C.INPUT.SAR_DB_RANGE = [-40.0, 20.0]

# Ship size vector for SSE, from the chip's pixel size (W, H) before resizing:
#   w, h = W * GSD, H * GSD (metres);  s = ((w / WIDTH_SCALE - WIDTH_MEAN) / SPREAD,
#                                          (h / LENGTH_SCALE - LENGTH_MEAN) / SPREAD,  h / w)
# Defaults are the official constants (SPREAD is used for both axes as the official code does).
_C.INPUT.SHIP_SIZE = CN()
_C.INPUT.SHIP_SIZE.OPTICAL_GSD = 0.75
_C.INPUT.SHIP_SIZE.SAR_GSD = 1.0
_C.INPUT.SHIP_SIZE.WIDTH_SCALE = 93.0
_C.INPUT.SHIP_SIZE.LENGTH_SCALE = 427.0
_C.INPUT.SHIP_SIZE.WIDTH_MEAN = 0.434
_C.INPUT.SHIP_SIZE.LENGTH_MEAN = 0.461
_C.INPUT.SHIP_SIZE.SPREAD = 0.031

# ------------------------------------------------------------------------------------------ DATASETS
_C.DATASETS = CN()
# Dataset registry key (see datasets/build.py).
_C.DATASETS.NAMES = "HOSS"
# Folder that contains HOSS/ (and OptiSar_Pair/ for pretraining).
_C.DATASETS.ROOT_DIR = "./data"
# Evaluation protocols, any of ALL, O2S, S2O.
_C.DATASETS.PROTOCOLS = ["ALL", "O2S", "S2O"]
# Validation split (train.py): this many training identities with both optical and SAR images, drawn from SEED, are
# held out of training (and of the classifier) and evaluated like the test set on DATASETS.PROTOCOLS (query: one
# image per identity and modality, drawn from SEED; gallery: the rest). The validation metric then selects
# model_best.pth, and the test set is evaluated for the selected and the last epoch only. 0 = off (official: the
# best epoch is selected on the test set).
_C.DATASETS.VAL_IDS = 0

# ---------------------------------------------------------------------------------------- DATALOADER
_C.DATALOADER = CN()
# Worker processes per DataLoader (0 = load in the main process).
_C.DATALOADER.NUM_WORKERS = 4
# What a training run does with an image that cannot be used (unreadable, wrong format, all-zero SAR...):
# "error" stops before the first step naming the file; "skip" leaves it out and lists it in the log
# (never substitutes another image). Every training and test image is decoded once before work starts.
_C.DATALOADER.ON_BAD_IMAGE = "error"
# Keep the decoded 8-bit chips of that first pass in memory (training and test images, each set up to
# CACHE_MAX_GB of pixels; past it, caching stops with a warning).
_C.DATALOADER.CACHE_IMAGES = True
# Per node: under torchrun the LOCAL_WORLD_SIZE ranks of a node share it evenly (8.0 on 8 GPUs: 1 GB each per
# image set). A rank caches the test images it embeds (its share) and any training image, up to its part.
_C.DATALOADER.CACHE_MAX_GB = 8.0
# Training batches: "pk" (official: P identities x K images) or "pk_modality" (K/2 optical + K/2 SAR
# for identities that have both).
_C.DATALOADER.SAMPLER = "pk"
# K, images per identity in a PK batch (P = SOLVER.IMS_PER_BATCH / K).
_C.DATALOADER.NUM_INSTANCE = 4

# -------------------------------------------------------------------------------------------- SOLVER
_C.SOLVER = CN()
# "SGD" (momentum, official) or "AdamW".
_C.SOLVER.OPTIMIZER_NAME = "SGD"
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.BASE_LR = 5e-4
# Parameters whose name contains "bias" get BASE_LR * BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS (official).
_C.SOLVER.BIAS_LR_FACTOR = 2.0
_C.SOLVER.WEIGHT_DECAY = 1e-4
_C.SOLVER.WEIGHT_DECAY_BIAS = 1e-4
# Parameter-name substrings exempt from weight decay (e.g. ["pos_embed", "cls_token", "norm"]);
# empty = official (decay on everything).
_C.SOLVER.NO_DECAY_KEYS = []
_C.SOLVER.MAX_EPOCHS = 200
# Cosine schedule per epoch with linear warm-up from WARMUP_FACTOR * BASE_LR over WARMUP_EPOCHS,
# down to MIN_LR_FACTOR * BASE_LR at MAX_EPOCHS (official values).
_C.SOLVER.WARMUP_EPOCHS = 5
_C.SOLVER.WARMUP_FACTOR = 0.01
_C.SOLVER.MIN_LR_FACTOR = 0.002
# Global batch in images (pretraining: 2 x pairs). Split evenly across DDP ranks.
_C.SOLVER.IMS_PER_BATCH = 32
# Mixed precision: "off", "bf16" or "fp16" (the official recipes). fp16 scales the loss (GradScaler): a step with
# non-finite gradients is skipped and the scale halved (counted in the log as "skipped steps"); the run stops
# only once the scale falls below 1. fp16 also runs on the CPU, slowly: for checking the GPU recipe.
# off and bf16 stop the run at a non-finite loss.
_C.SOLVER.AMP = "off"
# TF32 (10-bit mantissa) for the fp32 matmuls and convolutions of training steps on Ampere or newer GPUs: several
# times faster where autocast leaves fp32 (SOLVER.AMP off, the losses), at a precision training tolerates as it
# tolerates bf16. Test features are always computed in full fp32, so evaluation and parity are unaffected.
_C.SOLVER.TF32 = True
# Optimizer step every ACCUM_STEPS batches (on the mean gradient of the group; an epoch's last group may be
# shorter); gradient norm clipped to CLIP_GRAD_NORM (0 = off).
_C.SOLVER.ACCUM_STEPS = 1
_C.SOLVER.CLIP_GRAD_NORM = 0.0
# Epochs between checkpoints and between evaluations (0 = only at the end); iterations between logs.
_C.SOLVER.CHECKPOINT_PERIOD = 10
_C.SOLVER.EVAL_PERIOD = 10
# The metric that selects model_best.pth / results_best.json: "<protocol>/<metric>", the protocol one of
# DATASETS.PROTOCOLS, the metric one of mAP, R1, R5, R10, mINP; read on the validation split when DATASETS.VAL_IDS > 0,
# else on the test set.
_C.SOLVER.SELECT_METRIC = "ALL/mAP"
_C.SOLVER.LOG_PERIOD = 50

# ---------------------------------------------------------------------------------------------- TEST
_C.TEST = CN()
# Weights evaluated by test.py (official fine-tuned checkpoint or a shipreid checkpoint).
_C.TEST.WEIGHT = ""
# Images per inference batch.
_C.TEST.IMS_PER_BATCH = 256
# Test feature: "before" the BN neck (official TransOSS, MOS) or "after" it; "auto": what the released code of
# the method evaluates, BN(f) for a disentangled SDF-Net model (MODEL.SDF.DFL on) and the pre-neck f otherwise
# (so the SDF-Net recipe's DFL-off ablation is evaluated as the released code evaluates it). The log names it.
_C.TEST.NECK_FEAT = "before"
# L2-normalise features before the squared Euclidean distance (official: always on).
_C.TEST.FEAT_NORM = True
# Test feature = mean of the image's and its left-right mirror's (flip test).
_C.TEST.FLIP_FEATS = False
# alpha-weighted query expansion (as fast-reid's TEST.AQE; transductive: it reads the whole test set): every
# query and gallery feature of a protocol becomes the similarity^AQE_ALPHA-weighted mean of its AQE_K nearest
# (itself included), AQE_ROUNDS times; applied before re-ranking.
_C.TEST.AQE = False
_C.TEST.AQE_K = 5
_C.TEST.AQE_ALPHA = 3.0
_C.TEST.AQE_ROUNDS = 1
# k-reciprocal re-ranking (Zhong et al. 2017) of the query-gallery distances.
_C.TEST.RE_RANKING = False
_C.TEST.RE_RANKING_K1 = 50
_C.TEST.RE_RANKING_K2 = 15
_C.TEST.RE_RANKING_LAMBDA = 0.3
# Write OUTPUT_DIR/features_<protocol>.npz (feats, pids, camids, names).
_C.TEST.SAVE_FEATS = False
# Write OUTPUT_DIR/ranked_<protocol>.png with this many queries (0 = off), each with its top RANKED_LIST_TOPK.
_C.TEST.RANKED_LIST_QUERIES = 0
_C.TEST.RANKED_LIST_TOPK = 10
# Draw explanation maps in those pictures (docs/explain.md): the query with its attention rollout, and for each
# result the Grad-CAM pair maps of the query and the result (what pulls their features together). Needs the model.
_C.TEST.RANKED_LIST_MAPS = False

# MOS cross-modal fusion (CDGF): each optical test chip's feature becomes
# normalize((1 - TAU) f^ + TAU mean_k p^_k), p_k the features of its first NUM_SAMPLES pseudo-SAR chips
# (generated by BBDM into CACHE_DIR with tools/generate_pseudo_sar.py; they enter the model as SAR with the
# source chip's size vector). Empty CACHE_DIR = no fusion. Released MOS: TAU 0.02, 5 samples.
_C.TEST.FUSION = CN()
_C.TEST.FUSION.CACHE_DIR = ""
_C.TEST.FUSION.TAU = 0.02
_C.TEST.FUSION.NUM_SAMPLES = 5

# ---------------------------------------------------------------------------------------------- BBDM
# Brownian-bridge diffusion optical -> SAR in pixel space (MOS cross-modal synthesis; train_bbdm.py,
# tools/generate_pseudo_sar.py). Images are INPUT.SIZE_TRAIN (H, W); SAR targets use INPUT.SAR_RADIOMETRY.
_C.BBDM = CN()
# Conditional UNet: base width, width multiplier per level (H and W must divide by 2 ** (levels - 1)),
# residual blocks per level, levels (number of downsamplings) with self-attention, channels per attention
# head, dropout. The defaults (the design study's config A: attention at 32 x 16, downsampling 8) give 25.3 M
# parameters and 137 GFLOPs per 256 x 128 forward pass.
_C.BBDM.BASE_CHANNELS = 64
_C.BBDM.CHANNEL_MULT = [1, 2, 4, 4]
_C.BBDM.NUM_RES_BLOCKS = 2
_C.BBDM.ATTENTION_LEVELS = [3]
_C.BBDM.HEAD_CHANNELS = 64
_C.BBDM.DROPOUT = 0.0
# The bridge: T steps, m_t linear from M_MIN to M_MAX, variance 2 * MAX_VAR * (m_t - m_t^2); what the network
# predicts ("grad" = m_t (y - x0) + sqrt(delta_t) noise, "noise", "ysubx") and its loss ("l1", "l2").
_C.BBDM.NUM_TIMESTEPS = 1000
_C.BBDM.M_MIN = 0.001
_C.BBDM.M_MAX = 0.999
_C.BBDM.MAX_VAR = 1.0
_C.BBDM.OBJECTIVE = "grad"
_C.BBDM.LOSS = "l1"
# Exponential moving average of the weights (the weights that sample), updated as the BBDM reference does:
# every EMA_INTERVAL-th optimizer step, a copy of the weights before step EMA_START (HOSS is small: start
# early), from then on ema = EMA_DECAY ema + (1 - EMA_DECAY) weights. 0.995 every 8 steps is 0.995^(1/8) =
# 0.99937 per step: an averaging window (e-folding) of 200 updates, about 1600 optimizer steps. Steps count
# optimizer steps, not batches, under SOLVER.ACCUM_STEPS (the reference's interval is 8 x its accumulation).
_C.BBDM.EMA_DECAY = 0.995
_C.BBDM.EMA_START = 2000
_C.BBDM.EMA_INTERVAL = 8
# Training pairs: "optisar" (co-registered OptiSar_Pair, pretraining) or "hoss_train" (every same-identity
# optical/SAR pair of the HOSS training split, fine-tuning). Test images are never used.
_C.BBDM.PAIRS = "hoss_train"
# A BBDM checkpoint to start from (fine-tuning after pretraining); empty = random initialisation.
_C.BBDM.PRETRAIN_PATH = ""
# Sampling: network evaluations (1..NUM_TIMESTEPS; BBDM's linear skip schedule T-1, ..., 1, 0; NUM_TIMESTEPS =
# every step), eta (scales the posterior noise only, as BBDM does: 1 = BBDM's stochastic sampler, 0 =
# deterministic), the precision the UNet samples in ("fp32": caches bit-stable; "bf16" / "fp16": autocast,
# faster on GPUs; tools/generate_pseudo_sar.py and tools/benchmark_bbdm.py --mode sample), and the BBDM
# weights that tools/generate_pseudo_sar.py samples with.
_C.BBDM.SAMPLE_STEPS = 200
_C.BBDM.SAMPLE_ETA = 1.0
_C.BBDM.SAMPLE_PRECISION = "fp32"
_C.BBDM.WEIGHTS = ""

# ---------------------------------------------------------------------------------------------- DIST
_C.DIST = CN()
# Seconds a collective may wait for the other ranks before the job fails (torchrun / process group).
_C.DIST.TIMEOUT_S = 1800


def get_cfg_defaults() -> CN:
    """A fresh copy of the defaults (never mutate _C itself)."""
    return _C.clone()
