"""The arms of `fibrosis tune`, resolved against their architecture.

Three recipes (``ArmConfig.recipe``):

- ``reference``: what a team would write without this tool -- the backbone's pooled features and
  scikit-learn's ``LogisticRegressionCV`` (fibrosis.train.probe.fit_reference). Shown first, so
  every table says whether the tool's own recipes beat the obvious one.
- ``lp-ft``: the tool's linear probe (``unfreeze: none``), and fine-tuning that starts from it
  (LP-FT, Kumar et al. 2022) for ``unfreeze: lastN | all`` (fibrosis.train.tune.unit).
- ``train``: `fibrosis train`'s own loop with a preset, fold by fold, so the comparison includes
  the model a team would otherwise get (fibrosis.train.tune.train_unit).
"""
from __future__ import annotations

from dataclasses import dataclass

from fibrosis.config import ArmConfig, Config
from fibrosis.model.arch import arch_spec
from fibrosis.train.schedule import preset_stages
from fibrosis.train.stages import ArchOnly, first_trainable, resolve_arm_unfreeze
from fibrosis.words import plural

RANDOM_DEPTH = 1000  # the random-init control ranks as the most-changed arm in the one-SE rule
ALL_DEPTH = 100  # "all": more than any lastN


@dataclass(frozen=True)
class Arm:
    """An arm resolved against its architecture."""

    cfg: ArmConfig
    arch: str
    input_size: int
    groups: tuple[str, ...]  # block groups that fine-tune (recipe train: its last stage's)
    start: int  # index of the first trainable group (n_groups: head only)
    depth: int  # 0 head only, N last N stages, ALL_DEPTH all; random init ranks last
    lr_ratio: float  # head lr / fine-tuning lr, for the one-SE ordering

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def recipe(self) -> str:
        return self.cfg.recipe

    @property
    def base_key(self) -> tuple[str, int, str]:
        return self.arch, self.input_size, self.cfg.init

    @property
    def fine_tunes(self) -> bool:
        """Trains backbone blocks from the frozen-prefix activations (recipe lp-ft)."""
        return self.recipe == "lp-ft" and bool(self.groups)

    @property
    def aux(self) -> bool:
        """Auxiliary heads train with this arm (only fine-tuning moves shared features)."""
        return self.cfg.aux_weight > 0 and self.fine_tunes

    def describe(self, cfg: Config) -> str:
        init = "random init" if self.cfg.init == "random" else "pretrained"
        where = f"{self.arch} @ {self.input_size} px"
        if self.recipe == "reference":
            return (f"{where}: scikit-learn StandardScaler + LogisticRegressionCV on the frozen pooled features "
                    f"(C by inner-CV AUC, balanced classes)")
        if self.recipe == "train":
            t = cfg.train
            preset = self.cfg.preset or t.preset
            return (f"{where}: `fibrosis train` preset {preset!r} ({t.head_epochs} head epochs at {t.head_lr:g}, "
                    f"then {t.finetune_epochs} epochs of {', '.join(self.groups) or 'the head'} at {t.finetune_lr:g}; "
                    f"augmentation; early stopping on an inner validation split)")
        if not self.groups:
            return f"{init}, {where}, head only (linear probe)"
        lr = cfg.tune.lr / self.cfg.lr_ratio
        aux = f", + auxiliary-finding heads (loss weight {self.cfg.aux_weight:g})" if self.aux else ""
        return (f"{init}, {where}, linear probe then unfreeze {self.cfg.unfreeze} ({plural(len(self.groups), 'block group')} "
                f"from {self.groups[0]}) at lr {lr:g}, augmentation{aux}")


def _train_groups(cfg: Config, arm: ArmConfig, arch: str) -> tuple[tuple[str, ...], float]:
    """What a recipe-train arm's last stage unfreezes, and its head/fine-tune lr ratio."""
    tcfg = cfg.train
    stages = (preset_stages(arm.preset, arch, tcfg) if arm.preset
              else tcfg.stages or preset_stages(tcfg.preset or "partial", arch, tcfg))
    last = stages[-1]
    groups = resolve_arm_unfreeze(ArchOnly(arch), "all") if "all" in last.unfreeze else tuple(last.unfreeze)
    return groups, stages[0].lr / last.lr if last.unfreeze else 1.0


def resolve_arms(cfg: Config) -> list[Arm]:
    out = []
    for a in cfg.tune.arms:
        arch, size = a.arch or cfg.model.arch, a.input_size or cfg.model.input_size
        named = ArchOnly(arch)  # block-group names need the architecture only, no network
        lr_ratio = a.lr_ratio
        if a.recipe == "train":
            groups, lr_ratio = _train_groups(cfg, a, arch)
        else:
            groups = resolve_arm_unfreeze(named, a.unfreeze)
        n_all = len(arch_spec(arch).groups)
        depth = ALL_DEPTH if len(groups) == n_all else _stages_deep(named, groups)
        if a.init == "random":
            depth = RANDOM_DEPTH
        out.append(Arm(a, arch, size, groups, first_trainable(named, groups), depth, lr_ratio))
    return out


def _stages_deep(named: ArchOnly, groups: tuple[str, ...]) -> int:
    """How many resolution stages, counted from the last, ``groups`` reach into (0: none)."""
    if not groups:
        return 0
    n = 1
    while set(groups) - set(resolve_arm_unfreeze(named, f"last{n}")):
        n += 1
    return n
