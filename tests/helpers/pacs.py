"""A real PACS for the integration tests: Orthanc (with its DICOMweb plugin) on loopback,
in a network namespace of its own, started and stopped by the test.

Orthanc listens on every address of its namespace; the namespace has loopback only, so
nothing outside this machine (or even outside the test) can reach it, and ports cannot
clash with anything on the host. The calling thread enters the namespace (unshare), so
what the test starts afterwards from that thread (threads, subprocesses: the node,
storescu, findscu) is in it too; leaving puts the thread back (setns).

Tests that use it skip where Orthanc, dcmtk or namespaces are missing (a laptop) and
fail under CI (``CI`` set), where .ci/run installs them.
"""
from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

CLONE_NEWNET = 0x40000000
ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DCMTK = ("storescu", "echoscu", "findscu", "dsrdump")
AET, DICOM_PORT, HTTP_PORT = "ORTHANC", 4242, 8042
USER, PASSWORD = "fibrosis-ci", "not-a-real-secret"


def missing() -> str:
    """Why the PACS tests cannot run here, or ''."""
    if ORTHANC is None:
        return "Orthanc not installed (Debian: orthanc)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} not installed (Debian: orthanc-dicomweb)"
    gone = [t for t in DCMTK if shutil.which(t) is None]
    if gone:
        return f"dcmtk tools missing: {gone} (Debian: dcmtk)"
    if os.geteuid() != 0 or not Path("/proc/thread-self/ns/net").exists() or shutil.which("ip") is None:
        return "needs root and Linux network namespaces (a namespace of its own for Orthanc)"
    return ""


def require() -> None:
    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"PACS integration test cannot run in CI: {why}; .ci/run installs it")
        pytest.skip(why)


@contextlib.contextmanager
def own_network() -> Iterator[None]:
    """Run the calling thread (and what it starts) in a new network namespace, loopback up."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            pytest.skip(f"unshare(CLONE_NEWNET) failed: errno {ctypes.get_errno()}")
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)
        yield
    finally:
        if libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the test's network namespace failed")
        os.close(home)


class Orthanc:
    """An Orthanc process with its own storage folder; REST helpers with basic auth."""

    def __init__(self, root: Path):
        self.root = root
        self.url = f"http://127.0.0.1:{HTTP_PORT}"
        self.log = root / "orthanc.log"
        # No proxy: urlopen's global opener keeps whatever proxy the environment had when it was
        # first used (another test sets an unreachable one on purpose).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        config = {
            "Name": "fibrosis-ci", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
            "DicomAet": AET, "DicomPort": DICOM_PORT, "HttpPort": HTTP_PORT, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
            "DicomScuTimeout": 20, "DicomScpTimeout": 20, "HttpTimeout": 30, "SaveJobs": False,
            "StableAge": 1,
        }
        (root / "orthanc.json").write_text(json.dumps(config, indent=1))
        self.proc = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        with self._opener.open(req, timeout=60) as rsp:
            raw = rsp.read()
        return json.loads(raw) if rsp.headers.get_content_type() == "application/json" else raw

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self._request("PUT", path, body)

    def study_id(self, study_uid: str) -> str:
        found = [r for r in self.post("/tools/lookup", study_uid.encode()) if r["Type"] == "Study"]
        return found[0]["ID"] if found else ""

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        """The study's instances: Orthanc id, modality, SOP UID, InstanceNumber."""
        sid = self.study_id(study_uid)
        if not sid:
            return []
        out = []
        for series in self.get(f"/studies/{sid}/series"):
            for inst in self.get(f"/series/{series['ID']}/instances"):
                tags = inst["MainDicomTags"]
                out.append({"id": inst["ID"], "modality": series["MainDicomTags"].get("Modality", ""),
                            "series_uid": series["MainDicomTags"]["SeriesInstanceUID"],
                            "sop_uid": tags["SOPInstanceUID"], "number": int(tags.get("InstanceNumber", 0) or 0)})
        return out

    def file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
