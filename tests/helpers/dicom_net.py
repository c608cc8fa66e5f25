"""Loopback DICOM peers for the node tests and benchmark: an SCU that sends files as they
are (one presentation context per SOP class and transfer syntax) and a C-STORE SCP that
collects what it is sent. 127.0.0.1 only, bounded timeouts."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE, evt

LOOPBACK = "127.0.0.1"
TIMEOUT = 15.0


def _bounded(ae: AE) -> AE:
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = TIMEOUT
    return ae


def contexts_of(files: list[Path]) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs of the files' meta headers, in first-seen order."""
    pairs: list[tuple[str, str]] = []
    for f in files:
        meta = pydicom.filereader.read_file_meta_info(f)
        pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def associate(port: int, called: str, calling: str, contexts: list[tuple[str, str]]) -> Any:
    ae = _bounded(AE(ae_title=calling))
    for cls, ts in contexts:
        ae.add_requested_context(cls, ts)
    return ae.associate(LOOPBACK, port, ae_title=called)


class Collector:
    """A C-STORE SCP on an ephemeral loopback port that keeps every dataset it receives."""

    def __init__(self, ae_title: str, sop_classes: tuple[str, ...]):
        self.datasets: list[pydicom.Dataset] = []
        self._lock = threading.Lock()
        ae = _bounded(AE(ae_title=ae_title))
        for cls in sop_classes:
            ae.add_supported_context(cls)
        self.server = ae.start_server((LOOPBACK, 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event: Any) -> int:
        with self._lock:
            self.datasets.append(event.dataset)
        return 0x0000

    def count(self) -> int:
        with self._lock:
            return len(self.datasets)

    def close(self) -> None:
        self.server.shutdown()
