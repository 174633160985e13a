"""Optimizer groups, the official cosine/warm-up schedule, and the accumulate/clip/AMP optimizer step."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import configs
import model as model_pkg
from conftest import TINY_MODEL
from processor.optim_step import OptimizerStep, accumulation_group, autocast_context
from solver.optimizer import build_optimizer, param_groups
from solver.scheduler import CosineWarmupScheduler, cosine_warmup_lr
from utils.errors import ShipReIDError

CPU = torch.device("cpu")


def lr_at(cfg, epoch: int, group_lr: float | None = None) -> float:
    s = cfg.SOLVER
    return cosine_warmup_lr(epoch, s.BASE_LR if group_lr is None else group_lr, s.BASE_LR, s.MAX_EPOCHS,
                            s.WARMUP_EPOCHS, s.WARMUP_FACTOR, s.MIN_LR_FACTOR)


def test_official_finetune_schedule():
    cfg = configs.load_config(None)  # defaults: 5e-4, 200 epochs, warm-up 5 from 0.01, floor 0.002
    # warm-up: 0.01 * 5e-4 + e * (5e-4 - 5e-6) / 5 = 5e-6 + e * 9.9e-5
    assert lr_at(cfg, 1) == pytest.approx(1.04e-4, rel=1e-9)
    assert lr_at(cfg, 4) == pytest.approx(4.01e-4, rel=1e-9)
    # cosine: 1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + cos(pi e / 200))
    #   e = 5: 1e-6 + 2.495e-4 * 1.996917 = 4.99231e-4 (~4.99e-4)
    assert lr_at(cfg, 5) == pytest.approx(4.99231e-4, rel=1e-5)
    assert lr_at(cfg, 5) == pytest.approx(4.99e-4, rel=1e-3)
    #   e = 100: cos = 0 -> 1e-6 + 2.495e-4 = 2.505e-4
    assert lr_at(cfg, 100) == pytest.approx(2.505e-4, rel=1e-9)
    #   e = 200: cos = -1 -> 1e-6
    assert lr_at(cfg, 200) == pytest.approx(1.0e-6, rel=1e-9)
    # monotone: up during warm-up, down afterwards
    values = [lr_at(cfg, e) for e in range(1, 201)]
    assert all(a < b for a, b in zip(values[:4], values[1:5]))
    assert all(a > b for a, b in zip(values[4:], values[5:]))


def test_official_pretrain_schedule():
    cfg = configs.load_config(None, ["SOLVER.BASE_LR", "3e-3", "SOLVER.MAX_EPOCHS", "60"])
    # e = 1: 3e-5 + (3e-3 - 3e-5) / 5 = 3e-5 + 5.94e-4 = 6.24e-4 (the reference rounds to 6.2e-4)
    assert lr_at(cfg, 1) == pytest.approx(6.24e-4, rel=1e-9)
    # e = 5: 6e-6 + 0.5 * 2.994e-3 * (1 + cos(pi / 12)) = 6e-6 + 1.497e-3 * 1.965926 = 2.94899e-3
    assert lr_at(cfg, 5) == pytest.approx(2.94899e-3, rel=1e-5)
    # e = 60: the floor 0.002 * 3e-3 = 6e-6
    assert lr_at(cfg, 60) == pytest.approx(6e-6, rel=1e-9)


def test_bias_group_follows_the_formula_with_its_own_base():
    cfg = configs.load_config(None)
    b = 5e-4
    # e = 1: 0.01 b + 1 * (2b - 0.01 b) / 5 = 5e-6 + (1e-3 - 5e-6) / 5 = 5e-6 + 1.99e-4 = 2.04e-4
    assert lr_at(cfg, 1, 2 * b) == pytest.approx(2.04e-4, rel=1e-9)
    # e = 100: 0.002 b + 0.5 (2b - 0.002 b) = 1e-6 + 4.995e-4 = 5.005e-4; e = 200: the floor 1e-6
    assert lr_at(cfg, 100, 2 * b) == pytest.approx(5.005e-4, rel=1e-9)
    assert lr_at(cfg, 200, 2 * b) == pytest.approx(1e-6, rel=1e-9)


def two_group_optimizer(cfg):
    layer = nn.Linear(3, 2)
    return torch.optim.SGD(param_groups(layer.named_parameters(), cfg), lr=cfg.SOLVER.BASE_LR, momentum=0.9)


def test_scheduler_sets_group_lrs_and_round_trips():
    cfg = configs.load_config(None)
    optimizer = two_group_optimizer(cfg)
    assert [g["base_lr"] for g in optimizer.param_groups] == [5e-4, 1e-3]  # weight, bias (x2)
    scheduler = CosineWarmupScheduler(optimizer, cfg)
    scheduler.step(1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1.04e-4, 2.04e-4], rel=1e-9)
    scheduler.step(100)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2.505e-4, 5.005e-4], rel=1e-9)
    # base_lr is untouched by stepping
    assert [g["base_lr"] for g in optimizer.param_groups] == [5e-4, 1e-3]
    state = scheduler.state_dict()
    assert state == {"epoch": 100}
    other = two_group_optimizer(cfg)
    restored = CosineWarmupScheduler(other, cfg)
    restored.load_state_dict(state)
    assert restored.epoch == 100
    assert [g["lr"] for g in other.param_groups] == [g["lr"] for g in optimizer.param_groups]


def tiny_cfg(*opts):
    return configs.load_config(None, [*TINY_MODEL, *opts])


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return model_pkg.build_model(tiny_cfg(), num_classes=5)


def group_of(optimizer) -> dict[int, dict]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def test_build_optimizer_groups_on_the_tiny_model(tiny_model):
    cfg = tiny_cfg("SOLVER.WEIGHT_DECAY", "1e-4", "SOLVER.WEIGHT_DECAY_BIAS", "3e-4",
                   "SOLVER.NO_DECAY_KEYS", "['pos_embed', 'norm']")
    optimizer = build_optimizer(cfg, tiny_model)
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)
    groups = group_of(optimizer)
    named = dict(tiny_model.named_parameters())
    # the BNNeck bias is frozen and excluded; every other parameter is in exactly one group
    assert not named["neck.bias"].requires_grad
    assert id(named["neck.bias"]) not in groups
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable) == len(named) - 1
    expected = {
        "backbone.pos_embed": (5e-4, 0.0),                 # no-decay key
        "backbone.cls_token": (5e-4, 1e-4),                # decayed as in the official code
        "backbone.mie_embed": (5e-4, 1e-4),
        "backbone.blocks.0.attn.qkv.weight": (5e-4, 1e-4),
        "backbone.blocks.0.attn.qkv.bias": (1e-3, 3e-4),   # bias: lr x 2, WEIGHT_DECAY_BIAS
        "backbone.patch_embed.sar.bias": (1e-3, 3e-4),
        "backbone.blocks.1.norm1.weight": (5e-4, 0.0),     # 'norm' matches norm1
        "backbone.blocks.1.norm2.bias": (1e-3, 0.0),       # bias LR, but no decay
        "backbone.norm.weight": (5e-4, 0.0),
        "backbone.norm.bias": (1e-3, 0.0),
        "neck.weight": (5e-4, 1e-4),
        "classifier.weight": (5e-4, 1e-4),
    }
    for name, (lr, decay) in expected.items():
        group = groups[id(named[name])]
        assert (group["lr"], group["weight_decay"]) == pytest.approx((lr, decay)), name
        assert group["base_lr"] == group["lr"]
    # the rule, for every parameter
    for name in trainable:
        group = groups[id(named[name])]
        lr = 1e-3 if "bias" in name else 5e-4
        decay = 0.0 if ("pos_embed" in name or "norm" in name) else (3e-4 if "bias" in name else 1e-4)
        assert (group["lr"], group["weight_decay"]) == pytest.approx((lr, decay)), name
    # one group per distinct (lr, decay): 4 here
    assert len(optimizer.param_groups) == len({(g["lr"], g["weight_decay"]) for g in optimizer.param_groups}) == 4


def test_build_optimizer_default_is_official_decay_everywhere(tiny_model):
    optimizer = build_optimizer(tiny_cfg(), tiny_model)
    assert {(g["lr"], g["weight_decay"]) for g in optimizer.param_groups} == {(5e-4, 1e-4), (1e-3, 1e-4)}


def test_build_optimizer_includes_the_loss_parameters(tiny_model):
    from loss.infonce import SymmetricInfoNCE
    loss = SymmetricInfoNCE()
    optimizer = build_optimizer(tiny_cfg(), tiny_model, loss)
    assert id(loss.logit_scale) in group_of(optimizer)
    assert group_of(optimizer)[id(loss.logit_scale)]["weight_decay"] == pytest.approx(1e-4)


def test_build_optimizer_adamw_and_unknown_name(tiny_model):
    optimizer = build_optimizer(tiny_cfg("SOLVER.OPTIMIZER_NAME", "AdamW"), tiny_model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {(g["lr"], g["weight_decay"]) for g in optimizer.param_groups} == {(5e-4, 1e-4), (1e-3, 1e-4)}
    with pytest.raises(ShipReIDError, match="SOLVER.OPTIMIZER_NAME.*'Adam'"):
        build_optimizer(tiny_cfg("SOLVER.OPTIMIZER_NAME", "Adam"), tiny_model)


# ------------------------------------------------------------------------------------------ OptimizerStep

def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)


def linear(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def test_accumulated_half_batches_equal_one_full_batch_step():
    x, y = data()
    full, accum = linear(), linear()
    opt_full = torch.optim.SGD(full.parameters(), lr=0.1, momentum=0.9)
    opt_accum = torch.optim.SGD(accum.parameters(), lr=0.1, momentum=0.9)
    step_full = OptimizerStep(opt_full, full.parameters(), "off", CPU, accum_steps=1)
    step_accum = OptimizerStep(opt_accum, accum.parameters(), "off", CPU, accum_steps=2)
    for _ in range(3):  # three optimizer steps (momentum state included)
        # mean over 8 == (mean over first 4 + mean over last 4) / 2: the wrapper divides by ACCUM_STEPS
        step_full.backward(nn.functional.mse_loss(full(x), y), boundary=True)
        before = accum.weight.detach().clone()
        step_accum.backward(nn.functional.mse_loss(accum(x[:4]), y[:4]), boundary=False)
        # not a boundary: gradient held, weights unchanged
        assert step_accum.pending == 1 and accum.weight.grad is not None
        assert torch.equal(accum.weight, before)
        step_accum.backward(nn.functional.mse_loss(accum(x[4:]), y[4:]), boundary=True)
        assert step_accum.pending == 0 and accum.weight.grad is None  # stepped and zeroed
        assert not torch.equal(accum.weight, before)
        for a, b in zip(full.parameters(), accum.parameters()):
            assert torch.allclose(a, b, atol=1e-6)


def test_step_flushes_pending_gradients_and_is_a_noop_without_them():
    x, y = data()
    layer = linear()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    stepper = OptimizerStep(opt, layer.parameters(), "off", CPU, accum_steps=4)
    before = layer.weight.detach().clone()
    stepper.step()  # nothing pending
    assert torch.equal(layer.weight, before)
    stepper.backward(nn.functional.mse_loss(layer(x), y), boundary=False)
    grad = layer.weight.grad.clone()
    stepper.step()  # end-of-epoch flush of a partial accumulation: loss / 4 was back-propagated
    assert torch.allclose(layer.weight, before - 0.1 * grad, atol=1e-7)


@pytest.mark.parametrize("num_batches,accum,expected", [
    (5, 2, [(2, False), (2, True), (2, False), (2, True), (1, True)]),  # the last group holds the remainder
    (3, 4, [(3, False), (3, False), (3, True)]),                        # one group, shorter than ACCUM_STEPS
    (3, 1, [(1, True)] * 3),
    (6, 3, [(3, False), (3, False), (3, True)] * 2),
])
def test_accumulation_groups_of_an_epoch(num_batches, accum, expected):
    assert [accumulation_group(i, num_batches, accum) for i in range(num_batches)] == expected


def test_a_short_last_group_steps_with_its_own_mean_gradient():
    """ACCUM_STEPS 4 over an epoch of 5 batches: the fifth batch alone makes the last step, which must equal a
    plain step on that batch (dividing its loss by 4 would shrink the step four-fold)."""
    x, y = data()
    alone, accum = linear(), linear()
    step_alone = OptimizerStep(torch.optim.SGD(alone.parameters(), lr=0.1), alone.parameters(), "off", CPU)
    step_accum = OptimizerStep(torch.optim.SGD(accum.parameters(), lr=0.1), accum.parameters(), "off", CPU,
                               accum_steps=4)
    step_alone.backward(nn.functional.mse_loss(alone(x), y), boundary=True)
    size, boundary = accumulation_group(4, 5, 4)
    step_accum.backward(nn.functional.mse_loss(accum(x), y), boundary, size)
    assert (size, boundary) == (1, True)
    for a, b in zip(alone.parameters(), accum.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("clip,expected", [
    # gradient (3, 4) over two parameters: global norm 5; clip 1 -> (3, 4) / 5 = (0.6, 0.8)
    (1.0, (0.6, 0.8)),
    # clip 2.5 -> (3, 4) * 2.5 / 5 = (1.5, 2.0)
    (2.5, (1.5, 2.0)),
    # clip 10 > 5: unchanged
    (10.0, (3.0, 4.0)),
    # off
    (0.0, (3.0, 4.0)),
])
def test_gradient_clipping_caps_the_global_norm(clip, expected):
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([a, b], lr=1.0)
    stepper = OptimizerStep(opt, [a, b], "off", CPU, clip_norm=clip)
    stepper.backward((3 * a + 4 * b).sum(), boundary=True)
    # one SGD step with lr 1 moves each parameter by minus its (clipped) gradient
    assert (-a.item(), -b.item()) == pytest.approx(expected, abs=1e-6)


def test_frozen_parameters_are_skipped():
    a, frozen = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1), requires_grad=False)
    stepper = OptimizerStep(torch.optim.SGD([a], lr=1.0), [a, frozen], "off", CPU)
    assert stepper.params == [a]


def test_amp_modes_and_errors():
    with autocast_context("fp16", CPU):  # the official recipes' precision also runs on the CPU (slowly)
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float16
    with pytest.raises(ShipReIDError, match="SOLVER.AMP"):
        autocast_context("fp32", CPU)
    with autocast_context("bf16", CPU):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.bfloat16
    with autocast_context("off", CPU):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32
    with pytest.raises(ShipReIDError, match="ACCUM_STEPS"):
        OptimizerStep(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), [], "off", CPU, accum_steps=0)


def test_cosine_math_matches_closed_form_everywhere():
    # independent restatement of the reference formula for every epoch of both recipes and a bias group
    for base, epochs in ((5e-4, 200), (3e-3, 60)):
        cfg = configs.load_config(None, ["SOLVER.BASE_LR", str(base), "SOLVER.MAX_EPOCHS", str(epochs)])
        for group in (base, 2 * base):
            for e in range(1, epochs + 1):
                if e < 5:
                    want = 0.01 * base + e * (group - 0.01 * base) / 5
                else:
                    want = 0.002 * base + 0.5 * (group - 0.002 * base) * (1 + math.cos(math.pi * e / epochs))
                assert lr_at(cfg, e, group) == pytest.approx(want, rel=1e-12)
