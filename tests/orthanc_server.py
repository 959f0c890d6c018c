"""A real PACS for tests and the PACS benchmark: Debian's Orthanc with its DICOMweb plugin.

:class:`OrthancServer` writes a JSON configuration into a temporary folder (storage and index there
too), starts ``Orthanc`` on a free loopback HTTP port with the DICOM (DIMSE) port disabled, waits
until DICOMweb answers, and always stops the process (terminate, then kill) on exit, also when the
test fails. Remote access is off (Orthanc then accepts only 127.0.0.1) and HTTP basic auth is on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["ORTHANC_BINARY", "OrthancServer", "dicomweb_plugin", "orthanc_missing_reason"]

ORTHANC_BINARY = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins")
USER, PASSWORD = "llavarad", "test-only-password"


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's shared library (Debian package orthanc-dicomweb), or None."""
    for folder in _PLUGIN_DIRS:
        for path in sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []:
            return path
    return None


def orthanc_missing_reason() -> str | None:
    """Why Orthanc cannot be started here (None when it can)."""
    if ORTHANC_BINARY is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """``with OrthancServer() as pacs: pacs.dicomweb_url`` -- a fresh, empty Orthanc for the block."""

    def __init__(self, workdir: str | Path | None = None, startup_timeout: float = 60.0):
        reason = orthanc_missing_reason()
        if reason:
            raise RuntimeError(reason)
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="llavarad-orthanc-"))
        self.port = _free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.dicomweb_url = f"{self.base_url}/dicom-web"
        self.user, self.password = USER, PASSWORD
        self.log_path = self.workdir / "orthanc.log"

    def config(self) -> dict:
        return {
            "Name": "llavarad-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"), "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.port, "HttpServerEnabled": True, "DicomServerEnabled": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
            "SaveJobs": False, "HttpThreadsCount": 8, "ConcurrentJobs": 1, "StableAge": 1,
            "OverwriteInstances": False, "DeidentifyLogs": True,
        }

    def start(self) -> OrthancServer:
        import httpx

        (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=1), encoding="utf-8")
        log = self.log_path.open("wb")
        self.process = subprocess.Popen([ORTHANC_BINARY, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {self.process.returncode} at start; "
                                   f"log: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                r = httpx.get(f"{self.dicomweb_url}/studies", auth=(USER, PASSWORD), timeout=2.0)
                if r.status_code in (200, 204):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on port {self.port} within {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OrthancServer:  # noqa: PYI034 - a plain class, not meant for subclassing
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self):
        """A ``dicomweb_client.DICOMwebClient`` logged in to this server."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.auth = (USER, PASSWORD)
        return DICOMwebClient(url=self.dicomweb_url, session=session)

    def delete_all(self) -> None:
        """Empty the PACS (Orthanc's REST API), so one server can serve several tests."""
        import httpx

        auth = (USER, PASSWORD)
        for pid in httpx.get(f"{self.base_url}/patients", auth=auth, timeout=30).json():
            httpx.delete(f"{self.base_url}/patients/{pid}", auth=auth, timeout=30).raise_for_status()


if __name__ == "__main__":  # manual check: start one and print its URL until Ctrl-C
    with OrthancServer() as server:
        print(server.dicomweb_url, os.getpid(), flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
