"""Appendices "Reproducibility" (hashes, seeds, versions, the settings that differ from the
defaults) and "Configuration" (the whole configuration in compact form).

A setting that holds a file path shows the file's name only: the report leaves the hospital."""
from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

import yaml

from fibrosis import __version__
from fibrosis.config import Config, config_to_dict
from fibrosis.report.sections.context import Block, Context


def _no_paths(v: Any) -> Any:
    """``v`` with every string that holds a directory part reduced to its last name."""
    if isinstance(v, dict):
        return {k: _no_paths(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_no_paths(x) for x in v]
    if isinstance(v, str) and ("/" in v or "\\" in v) and " " not in v:
        return f"<path>/{PurePath(v.replace(chr(92), '/')).name}"
    return v


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(v: Any) -> str:
    if v is None:
        return "none"
    return v if isinstance(v, str) else json.dumps(v, separators=(", ", ": "))


def non_default(config: dict[str, Any]) -> list[list[str]]:
    """Rows (setting, value, default) for every setting that differs from fibrosis's default."""
    have, default = _flat(_no_paths(config)), _flat(config_to_dict(Config()))
    rows = []
    for key, value in have.items():
        base = default.get(key, "not a setting of this version")
        if key not in default or json.dumps(base, sort_keys=True) != json.dumps(value, sort_keys=True):
            rows.append([key, _show(value), base if key not in default else _show(base)])
    return rows


def compact(config: dict[str, Any]) -> str:
    """One flow-style line per section (the page wraps it): the full configuration in a few lines."""
    return "\n".join(f"{name}: " + yaml.safe_dump(values, default_flow_style=True, width=1 << 20, sort_keys=False).strip()
                     if isinstance(values, dict) else f"{name}: {_show(values)}"
                     for name, values in _no_paths(config).items())


def _config(ctx: Context) -> dict[str, Any]:
    return {**(ctx.m.run.config if ctx.m.run else {}), "evaluate": ctx.m.evaluate_config}


def reproducibility_blocks(ctx: Context) -> list[Block]:
    m = ctx.m
    r = m.run
    vt, ve = (r.versions_training or {}) if r else {}, r.versions_evaluation if r else {}
    boot = m.discrimination.bootstrap
    rows = non_default(_config(ctx))
    blocks: list[Block] = [
        {"type": "kv", "items": [
            ("Training seed / split seed", f"{r.seed if r else 'not recorded'} / {r.split_seed if r else 'not recorded'}"),
            ("Bootstrap", f"{boot.n_resamples} resamples of patients, seed {boot.seed}"),
            ("Manifest sha256 (training)", (r.manifest_sha256 if r else None) or "not recorded"),
            ("Manifest sha256 (evaluated)", m.data.manifest_sha256 or "not recorded"),
            ("Weights sha256", (r.weights.sha256 if r else None) or "none (no weights file)"),
            ("Checkpoint sha256", (r.checkpoint_sha256 if r else None) or "not recorded"),
            ("Evaluated", m.created), ("fibrosis version", __version__)]},
    ]
    if ve:
        blocks.append({"type": "table", "caption": "Package versions", "header": ["package", "training", "evaluation"],
                       "rows": [[k, vt.get(k, "not recorded"), ve[k]] for k in ve]})
    if rows:
        blocks.append({"type": "table", "caption": "Settings that differ from the defaults of this version "
                                                   f"(all settings: {ctx.ref('configuration')})",
                       "header": ["setting", "value", "default"], "rows": rows})
    else:
        blocks.append({"type": "p", "text": "Every setting is at the default of this version."})
    return blocks


def configuration_blocks(ctx: Context) -> list[Block]:
    return [{"type": "p", "text": "The resolved configuration (config.yaml of the run and the evaluation settings), "
                                  "one section per line; metrics.json holds the same in full."},
            {"type": "pre", "text": compact(_config(ctx))}]
