"""Counts in words for log lines and messages: "1 study", "2 studies", never "studie(s)"."""
from __future__ import annotations

# English plurals the log uses that are not the noun + "s".
IRREGULAR = {"study": "studies", "batch": "batches", "series": "series", "finding": "findings",
             "analysis": "analyses", "repeat": "repeats", "patient key": "patient keys"}


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``n`` and ``noun`` in the number ``n`` asks for: plural(1, "study") -> "1 study",
    plural(0, "study") -> "0 studies"; ``many`` names a plural the table above does not know."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {many or IRREGULAR.get(noun) or noun + 's'}"
