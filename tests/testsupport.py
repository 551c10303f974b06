"""Helpers shared by tests (importable as ``testsupport``; ``tests/`` is on pytest's path)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def tools_required() -> bool:
    return os.environ.get("SPINEXR_REQUIRE_TOOLS") == "1"


def require_tool(name: str) -> str:
    """Return the path of an executable, or skip (fail when tools are required)."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (scripts/system-deps.sh installs it)"
        if tools_required():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- dcmtk peers


def start_storescp(
    folder: Path, *, aet: str = "PACS", unique: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a dcmtk ``storescp`` PACS stand-in on a free loopback port, storing into ``folder``.

    With ``unique`` every received object gets a file of its own (``-uf``): a second copy of
    an instance is a second file, so duplicates can be counted.
    Returns the process (the caller terminates it) and its port.
    """
    storescp = require_tool("storescp")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [storescp, "-aet", aet, *(["-uf"] if unique else []), "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, port


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """Start ``redis-server`` on ``127.0.0.1:port`` with no persistence (a restart loses all).

    Returns the process (the caller terminates it) once it answers ``PING``.
    """
    redis = require_tool("redis-server")
    process = subprocess.Popen(
        [redis, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return process
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.1)


def storescu(port: int, files: list[Path] | list[str], *options: str, timeout: float = 60) -> None:
    """Send ``files`` with dcmtk's ``storescu`` to the node's AE ``SPINEXR`` and require success.

    ``options`` go before the address (e.g. ``"-R", "-xv", "-aet", "MODALITY"``).
    """
    sent = subprocess.run(
        [
            require_tool("storescu"),
            *options,
            "-aec",
            "SPINEXR",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr


# --------------------------------------------------------------------------- a live node

EXE = Path(sys.executable).parent / "spinexr-node"


def node_env(data_dir: Path, dicom_port: int, http_port: int, **extra: str) -> dict[str, str]:
    """Environment for a `spinexr-node` process on loopback with its own data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINEXR_")}
    env.update(
        SPINEXR_DICOM__HOST="127.0.0.1",
        SPINEXR_DICOM__PORT=str(dicom_port),
        SPINEXR_HTTP__HOST="127.0.0.1",
        SPINEXR_HTTP__PORT=str(http_port),
        SPINEXR_STORAGE__DATA_DIR=str(data_dir),
        SPINEXR_STORAGE__MIN_FREE_MB="1",
    )
    env.update(extra)
    return env


@dataclass
class NodeProcess:
    """A `spinexr-node serve` subprocess started by a test."""

    data_dir: Path
    dicom_port: int
    http_port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)

    def start(self, timeout: float = 60) -> NodeProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(EXE), "serve"],
            env=self.env,
            cwd=self.data_dir.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                url = f"http://127.0.0.1:{self.http_port}/healthz"
                with urllib.request.urlopen(url, timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"serve did not start:\n{self.log()}") from None
                time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> str:
        """Run a `spinexr-node` command against this node's settings; return its stdout."""
        proc = subprocess.run(
            [str(EXE), *args],
            env=self.env,
            cwd=self.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def make_node(tmp: Path, **extra: str) -> NodeProcess:
    """A node (not yet started) with free ports and its data under ``tmp/var``."""
    data, dport, hport = tmp / "var", free_port(), free_port()
    return NodeProcess(data, dport, hport, node_env(data, dport, hport, **extra), tmp / "serve.log")


# --------------------------------------------------------------------------- Orthanc
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_SERVE_FOLDERS = Path("/usr/share/orthanc/plugins/libServeFolders.so")


@dataclass
class Orthanc:
    """A throw-away Orthanc (with the DICOMweb plugin) on loopback."""

    root: Path
    dicom_port: int
    http_port: int
    aet: str = "ORTHANC"
    proc: subprocess.Popen[bytes] | None = None
    auth: tuple[str, str] | None = None  # HTTP basic auth when the config enables it

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.root / "orthanc.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _request(
        self, path: str, data: bytes | None = None, method: str | None = None, timeout: float = 30
    ):
        import base64

        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        if self.auth is not None:
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        return urllib.request.urlopen(req, timeout=timeout)

    def rest(self, path: str, data: bytes | None = None, method: str | None = None):
        """Call Orthanc's REST API (with ``auth`` when set); return the decoded JSON answer."""
        import json

        with self._request(path, data, method) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def start(
        self,
        lua: str | None = None,
        modalities: dict | None = None,
        config: dict | None = None,
        serve_folders: dict | None = None,
    ) -> Orthanc:
        """Start Orthanc; ``config`` entries (e.g. a site's orthanc.json) replace the defaults,
        except the storage folders, ports, AE title and loopback-only access, which stay the
        test's. ``serve_folders`` (the ServeFolders plugin's section, e.g. ``{"Folders":
        {"/ohif": "/path"}}``) loads that plugin too: it serves the folders on Orthanc's HTTP
        port, the same origin as ``/dicom-web``."""
        import json

        exe = require_tool("Orthanc")
        for plugin in [ORTHANC_DICOMWEB] + ([ORTHANC_SERVE_FOLDERS] if serve_folders else []):
            if not plugin.exists():
                msg = f"{plugin} is missing (scripts/system-deps.sh installs it)"
                if tools_required():
                    pytest.fail(msg)
                pytest.skip(msg)
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "test-pacs",
            "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": modalities or {},
            "Plugins": [str(ORTHANC_DICOMWEB)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
        }
        if serve_folders:
            cfg["Plugins"].append(str(ORTHANC_SERVE_FOLDERS))
            cfg["ServeFolders"] = serve_folders
        if lua is not None:
            (self.root / "route.lua").write_text(lua)
            cfg["LuaScripts"] = [str(self.root / "route.lua")]
        if config:
            cfg.update(config)
            cfg.update(
                StorageDirectory=str(self.root / "db"),
                IndexDirectory=str(self.root / "db"),
                DicomAet=self.aet,
                DicomPort=self.dicom_port,
                HttpPort=self.http_port,
                RemoteAccessAllowed=False,
            )
        (self.root / "orthanc.json").write_text(json.dumps(cfg))
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [exe, str(self.root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with self._request("/system", timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((self.root / "orthanc.log").read_text()) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


def make_orthanc(tmp: Path) -> Orthanc:
    return Orthanc(tmp / "orthanc", free_port(), free_port())


def wait_for(pred, timeout: float, what: str, node: NodeProcess | None = None):
    """Poll ``pred`` until it returns something truthy; fail with the node's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    tail = node.log()[-6000:] if node is not None else ""
    raise AssertionError(f"{what} not reached in {timeout} s\n{tail}")
