"""The networks of a tune run: each backbone built once, and each (fold, arm) model rebuilt from
what its unit kept (the probe, the chosen epoch's trainable weights, or `fibrosis train`'s
checkpoint)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fibrosis import artefacts
from fibrosis.config import Config, config_from_dict, config_to_dict
from fibrosis.data.cache import CacheReader
from fibrosis.data.dataset import build_augment
from fibrosis.model.checkpoint import load_model
from fibrosis.model.net import FibrosisNet, build_model, set_aux_heads
from fibrosis.train.probe import Probe
from fibrosis.train.schedule import block_groups
from fibrosis.train.tune.activations import Activations, estimate_batchnorm
from fibrosis.train.tune.arms import Arm
from fibrosis.train.tune.context import Clock, Context, Cost, load_tensors, probe_from

logger = logging.getLogger(__name__)

TRAIN_RUN = "run"  # a recipe-train unit's `fibrosis train` run directory


def arm_config(cfg: Config, arm: Arm, *, tta: bool = False) -> Config:
    """The resolved config the arm's models were trained with (arch/size/weights of the arm;
    ``model.tta`` on for a "+tta" twin; ``train.aux_weight`` of an arm with auxiliary heads;
    ``train.preset`` of a recipe-train arm)."""
    d = config_to_dict(cfg)
    d["model"].update(arch=arm.arch, input_size=arm.input_size, tta=tta)
    if arm.recipe == "train":
        if arm.cfg.preset:
            d["train"].update(preset=arm.cfg.preset, stages=[])
    else:
        d["train"]["aux_weight"] = arm.cfg.aux_weight if arm.aux else 0.0
    if arm.cfg.init == "random":
        d["model"].update(weights="none", weights_sha256=None)
    return config_from_dict(d)


def _build(ctx: Context, arm: Arm) -> FibrosisNet:
    mcfg = ctx.cfg.model
    # Seeded: the same random backbone (or random head before the probe replaces it) in every
    # fold and in a resumed run, whatever consumed the global RNG before.
    torch.manual_seed(ctx.cfg.tune.seed)
    shape: dict[str, Any] = {"input_size": arm.input_size, "dropout": mcfg.dropout, "resize": mcfg.resize}
    if arm.cfg.init == "random":
        return build_model(arm.arch, "none", **shape)
    return build_model(arm.arch, mcfg.weights, weights_sha256=mcfg.weights_sha256,
                       allow_random_init=mcfg.allow_random_init, **shape)


def base_model(ctx: Context, arm: Arm, reader: CacheReader | None = None) -> FibrosisNet:
    """The arm's initial backbone + head, built once per (arch, size, init) with its state kept.
    A random backbone gets BatchNorm statistics estimated on the development images."""
    if arm.base_key not in ctx.bases:
        model = _build(ctx, arm)
        if arm.cfg.init == "pretrained" and not model.pretrained:
            logger.warning("arm %s: the backbone is NOT pretrained (%s)", arm.name, model.weights_info["source"])
        if arm.cfg.init == "random":
            estimate_batchnorm(model, reader or CacheReader(ctx.cache_dir, ctx.rows), ctx.dev)
        if ctx.cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        ctx.bases[arm.base_key] = (model.eval(), {k: v.clone() for k, v in model.state_dict().items()})
    return ctx.bases[arm.base_key][0]


def prepare_base(ctx: Context, arm: Arm, arms: Sequence[Arm], reader: CacheReader) -> Cost:
    """Build the arm's backbone and its frozen activations (and augmented views) once, shared by
    the arms with the same base; returns what that cost. Recipe-train arms run `fibrosis train`
    on images instead."""
    if arm.recipe == "train" or arm.base_key in ctx.acts:
        return Cost()
    clock = Clock()
    model = base_model(ctx, arm, reader)
    model.load_state_dict(ctx.bases[arm.base_key][1])  # units fine-tune the shared model in place
    siblings = [a for a in arms if a.base_key == arm.base_key and a.fine_tunes]
    tcfg = ctx.cfg.tune
    ctx.acts[arm.base_key] = Activations(
        model, reader, ctx.dev, [a.start for a in siblings], tcfg.cache_mb,
        augment=build_augment(ctx.cfg.train.augment) if siblings else None, seed=tcfg.seed,
        epochs=tcfg.max_epochs if siblings else 0, channels_last=ctx.cfg.train.channels_last)
    views = ctx.acts[arm.base_key].build_views()
    cost = Cost(clock.wall_s(), clock.cpu_s())
    logger.info("%s @ %d px (%s): frozen features of %d development images%s in %.1f s (%.1f CPU s)", arm.arch,
                arm.input_size, arm.cfg.init, len(ctx.dev), f" and {views} augmented views" if views else "",
                cost.wall, cost.cpu)
    return cost


def trainable_keys(model: FibrosisNet, groups: Sequence[str]) -> list[str]:
    """State-dict keys (parameters and buffers) of the head and the ``groups`` that train."""
    prefixes = ["head.", "aux_head."] + [m + "." for g in groups for m in block_groups(model)[g]]
    return [k for k in model.state_dict() if any(k.startswith(p) for p in prefixes)]


def set_head(model: FibrosisNet, probe: Probe) -> None:
    linear = model.head[-1]
    assert isinstance(linear, nn.Linear)  # the head is Sequential(Dropout, Linear)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(probe.weight, dtype=linear.weight.dtype).reshape(1, -1))
        linear.bias.fill_(float(probe.bias))


def set_aux_probes(model: FibrosisNet, probes: Sequence[Probe]) -> None:
    """Auxiliary heads start from their linear probes too (LP-FT for every head)."""
    assert model.aux_head is not None  # set_aux_heads came first
    linear = model.aux_head[-1]
    assert isinstance(linear, nn.Linear)  # the heads are Sequential(Dropout, Linear)
    with torch.no_grad():
        for k, p in enumerate(probes):
            linear.weight[k].copy_(torch.as_tensor(p.weight, dtype=linear.weight.dtype))
            linear.bias[k] = float(p.bias)


def member(ctx: Context, arm: Arm, unit_dir: Path, epoch: int) -> FibrosisNet:
    """The (fold, arm) model a unit left behind, at fine-tuning epoch ``epoch``, in eval mode."""
    if arm.recipe == "train":
        model, _ = load_model(unit_dir / TRAIN_RUN / artefacts.BEST)
        return model.eval()
    base = base_model(ctx, arm)
    base_state = ctx.bases[arm.base_key][1]
    model = build_model(arm.arch, "none", input_size=arm.input_size, dropout=ctx.cfg.model.dropout,
                        resize=base.preprocessing.resize, gray_fold=base.preprocessing.gray_fold)
    model.load_state_dict(base_state)
    model.preprocessing, model.weights_info = base.preprocessing, dict(base.weights_info)
    model.pretrained = base.pretrained
    if arm.aux:
        set_aux_heads(model, ctx.aux_names)
    set_head(model, probe_from(load_tensors(unit_dir / artefacts.PROBE)))
    if epoch > 0:
        trained = load_tensors(unit_dir / f"epoch-{epoch}.pt")
        model.load_state_dict({**model.state_dict(), **trained})
    return model.eval()
