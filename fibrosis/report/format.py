"""How the report writes a number: one precision per quantity, intervals as "0.14 (−0.02 to 0.30)".

Every number on the page goes through these functions, so a quantity reads the same in every
section, a negative value has a real minus sign (U+2212) that no reader takes for the dash of a
range, and a quantity that does not exist reads "n/a", never "None" or "nan".
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fibrosis.evaluate.operating import Proportion

MINUS = "\u2212"
NA = "n/a"

# Decimals per quantity, declared once. AUC-like measures to 3 decimals (a difference of 0.01
# matters there); calibration slope and intercept to 2 (their intervals are wide).
DIGITS: dict[str, int] = {
    "auc": 3, "ap": 3, "ece": 3, "brier": 3, "net_benefit": 3, "difference": 3, "probability": 3,
    "slope": 2, "intercept": 2, "logit_sd": 2, "param": 3,
}


def missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def num(v: Any, quantity: str, *, sign: bool = False) -> str:
    """``v`` at the precision declared for ``quantity``; ``sign``: '+' before a positive value."""
    if missing(v):
        return NA
    text = f"{float(v):{'+' if sign else ''}.{DIGITS[quantity]}f}"
    if text.lstrip("+-").strip("0.") == "":
        text = text.lstrip("+-")  # no "-0.000" for a value that rounds to zero
    return text.replace("-", MINUS)


def pct(v: Any, digits: int = 1) -> str:
    """A proportion as a percentage: 0.2069 -> '20.7%'."""
    return NA if missing(v) else f"{100 * float(v):.{digits}f}%".replace("-", MINUS)


def span(ci: Sequence[Any] | None, quantity: str) -> str:
    """'0.453 to 0.953' (or 'n/a' where the interval could not be computed)."""
    if not ci or any(missing(c) for c in ci):
        return NA
    return f"{num(ci[0], quantity)} to {num(ci[1], quantity)}"


def pct_span(ci: Sequence[Any] | None, digits: int = 1) -> str:
    """'61.3% to 93.2%'."""
    if not ci or any(missing(c) for c in ci):
        return NA
    return f"{pct(ci[0], digits)} to {pct(ci[1], digits)}"


def estimate(v: Any, ci: Sequence[Any] | None, quantity: str, *, sign: bool = False) -> str:
    """'0.703 (0.453 to 0.953)'; '0.703 (no CI)' where the interval does not exist."""
    if missing(v):
        return NA
    inner = span(ci, quantity)
    return f"{num(v, quantity, sign=sign)} ({'no CI' if inner == NA else inner})"


def proportion(p: Proportion, digits: int = 1) -> str:
    """An operating-point proportion record (value, k, n, ci): '82.4% (14/17; 61.3% to 93.2%)'."""
    if missing(p.value):
        return f"{NA} ({p.k}/{p.n})"
    return f"{pct(p.value, digits)} ({p.k}/{p.n}; {pct_span(p.ci, digits)})"


def p_value(p: Any) -> str:
    """Two significant figures, '< 0.001' below that."""
    if missing(p):
        return NA
    return "< 0.001" if p < 0.001 else f"{float(p):.2g}"


def threshold_digits(values: Sequence[float]) -> int:
    """Fewest decimals (3..8) that keep distinct thresholds distinct when printed."""
    for d in range(3, 9):
        if len({f"{v:.{d}f}" for v in values}) == len(set(values)):
            return d
    return 8


def ci_label(level: Any) -> str:
    """'95% CI' for evaluate.ci_level 0.95."""
    return f"{100 * float(level):.4g}% CI"
