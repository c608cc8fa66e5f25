import math

import pytest
import torch
from torch import nn

from fibrosis.config import StageConfig, TrainConfig
from fibrosis.train.schedule import (PARTIAL, WarmupCosine, block_groups, freeze, make_optimizer,
                               param_owner, preset_stages, resolve_stages)
from fibrosis.model.arch import ARCHS
from fibrosis.model.net import build_model


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet18", "none", input_size=32)


def optimizer_param_names(model, opt) -> dict[str, float]:
    """Name -> lr of every parameter the optimizer updates (matched by identity, never by value)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}


def _names(model, prefix):
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def _bn_stats(model, prefix):
    return {n: b.clone() for n, b in model.named_buffers()
            if n.startswith(prefix) and "running" in n}


def _step(model, opt):
    model.train()
    out = model(torch.randn(4, 1, 32, 32))
    loss = nn.functional.binary_cross_entropy_with_logits(out[:, 0], torch.tensor([0.0, 1, 0, 1]))
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "efficientnet_b0", "mobilenet_v2"])
def test_every_parameter_in_exactly_one_group(arch):
    model = build_model(arch, "none", input_size=32)
    owner = param_owner(model)  # raises if a parameter belongs to no group
    assert set(owner.values()) == set(block_groups(model)) | {"head"}
    mods = [m for ms in block_groups(model).values() for m in ms]
    assert len(mods) == len(set(mods))
    assert set(PARTIAL[arch]) <= set(block_groups(model))


def test_partial_presets_cover_the_last_blocks():
    assert set(PARTIAL) == set(ARCHS)
    assert PARTIAL["resnet50"] == ("layer4",) and PARTIAL["densenet121"] == ("denseblock4",)
    assert PARTIAL["mobilenet_v2"][-1] == "features.18"


def test_head_stage_is_frozen(resnet):
    model = resnet
    trainable = freeze(model, ())
    assert set(trainable) == _names(model, "head.")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    opt, _ = make_optimizer(model, StageConfig(lr=1e-3, weight_decay=0.1), steps_per_epoch=2)
    assert set(optimizer_param_names(model, opt)) == _names(model, "head.")
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    stats = _bn_stats(model, "backbone.")
    _step(model, opt)
    # No gradients, no update (AdamW weight decay included), BN statistics unmoved.
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.backbone.named_parameters())
    assert all(torch.equal(b, stats[n]) for n, b in _bn_stats(model, "backbone.").items())
    assert not any(m.training for m in model.backbone.modules())
    assert model.head.training


def test_unfreeze_adds_exactly_layer4_at_its_lr(resnet):
    model = resnet
    freeze(model, ())
    head_opt, _ = make_optimizer(model, StageConfig(lr=1e-3), 2)
    head_names = set(optimizer_param_names(model, head_opt))
    freeze(model, ("layer4",))
    opt, _ = make_optimizer(model, StageConfig(lr=1e-5, unfreeze=("layer4",)), 2)
    lrs = optimizer_param_names(model, opt)
    assert set(lrs) - head_names == _names(model, "backbone.layer4.")
    assert set(lrs.values()) == {1e-5}
    model.train()
    bn3 = [m for n, m in model.named_modules() if n.startswith("backbone.layer3") and isinstance(m, nn.BatchNorm2d)]
    bn4 = [m for n, m in model.named_modules() if n.startswith("backbone.layer4") and isinstance(m, nn.BatchNorm2d)]
    assert bn4 and all(m.training for m in bn4) and not any(m.training for m in bn3)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    stats3, stats4 = _bn_stats(model, "backbone.layer3"), _bn_stats(model, "backbone.layer4")
    _step(model, opt)
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if n in frozen_before)
    assert all(torch.equal(b, stats3[n]) for n, b in _bn_stats(model, "backbone.layer3").items())
    assert any(not torch.equal(b, stats4[n]) for n, b in _bn_stats(model, "backbone.layer4").items())
    assert model.backbone.layer4[0].conv1.weight.grad is not None


def test_frozen_eval_survives_train_calls(resnet):
    freeze(resnet, ("layer4",))
    for _ in range(2):
        resnet.train()
        assert not resnet.backbone.layer1.training and not resnet.backbone.bn1.training
        assert resnet.backbone.layer4.training
    resnet.eval()
    assert not resnet.backbone.layer4.training


def test_layer_decay_and_no_weight_decay_groups(resnet):
    freeze(resnet, ("all",))
    opt, _ = make_optimizer(resnet, StageConfig(lr=1.0, weight_decay=0.01, layer_decay=0.5), 1)
    by = {g["name"]: g for g in opt.param_groups}
    expect = {"head": 1.0, "layer4": 0.5, "layer3": 0.25, "layer2": 0.125, "layer1": 0.0625, "stem": 0.03125}
    for name, lr in expect.items():
        assert by[name]["lr"] == pytest.approx(lr)
        assert by[name]["weight_decay"] == 0.01
    assert by["layer4/no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for p in by["layer4/no_decay"]["params"])
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == len(list(resnet.parameters()))


def test_unknown_block_name_lists_allowed(resnet):
    with pytest.raises(ValueError, match=r"layer5.*allowed.*layer4"):
        freeze(resnet, ("layer5",))


def test_warmup_cosine_hand_checked():
    f = WarmupCosine(warmup_steps=3, total_steps=13)
    assert [f(s) for s in range(3)] == [0.25, 0.5, 0.75]
    assert f(3) == 1.0 and f(8) == pytest.approx(0.5) and f(13) == pytest.approx(0.0)
    assert WarmupCosine(0, 4)(2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_scheduler_state_restores_mid_schedule(resnet):
    freeze(resnet, ())
    stage = StageConfig(lr=1.0, epochs=2, warmup_epochs=1.0)
    opt, sched = make_optimizer(resnet, stage, 4)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2, sched2 = make_optimizer(resnet, stage, 4)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for _ in range(2):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(
        WarmupCosine(4, 8)(7))


def test_presets():
    t = TrainConfig(head_epochs=2, finetune_epochs=3, head_lr=1e-3, finetune_lr=1e-5)
    (only,) = preset_stages("head-only", "resnet50", t)
    assert only.unfreeze == () and only.epochs == 5
    head, tune = preset_stages("partial", "resnet50", t)
    assert head.unfreeze == () and head.lr == 1e-3
    assert tune.unfreeze == ("layer4",) and tune.lr == 1e-5 and tune.epochs == 3
    assert preset_stages("full", "resnet50", t)[1].unfreeze == ("all",)
    with pytest.raises(ValueError, match="head-only"):
        preset_stages("most", "resnet50", t)


def test_auto_rule_and_explicit_stages():
    t = TrainConfig(preset="auto", auto_full_min_train=1000)
    stages, why = resolve_stages(t, "resnet18", 999)
    assert stages[-1].unfreeze == PARTIAL["resnet18"] and "different domain" in why
    stages, why = resolve_stages(t, "resnet18", 1000)
    assert stages[-1].unfreeze == ("all",) and "'full'" in why
    own = (StageConfig(name="x", unfreeze=("layer4",)),)
    stages, why = resolve_stages(TrainConfig(preset="partial", stages=own), "resnet18", 10)
    assert stages == own and "ignored" in why
