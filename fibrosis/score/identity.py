"""Who wrote a DICOM result, and the UIDs it derives: one place for the SR and the SC writers."""
from __future__ import annotations

import uuid

MANUFACTURER = "fibrosis (open-source research software)"


def uid_for(*parts: str) -> str:
    """A UID derived from ``parts``: same inputs, same UID. A name-based (version 5)
    UUID under the 2.25 root (PS3.5 B.2), so no organisation root is needed."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'fibrosis:' + chr(0).join(parts)).int}"
