"""Installation checks: Python, the pinned ML stack, mmcv ops, CUDA, tools, ports, TLS.

The ML stack is probed in a child Python process (:func:`ml_stack_report`): importing a
broken mmcv build can crash the interpreter, and the node's own modules never import
mmcv/mmdet/mmengine outside ``spinexr.pipeline.detector``.
"""

from __future__ import annotations

import datetime as dt
import errno
import importlib.metadata
import json
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from spinexr.node.dimse.scu import echo
from spinexr.node.doctor.result import Status, Verdict
from spinexr.node.errors import SpinexrError
from spinexr.node.settings import Settings

DISTRIBUTION = "spinexr-node"
PINNED = ("torch", "torchvision", "mmcv", "mmdet", "mmengine")
"""The ML packages whose versions must match each other (pinned in pyproject.toml)."""

TOOLS = {
    "dcmtk": ("storescu", "echoscu", "dcmdump"),
    "dciodvfy": ("dciodvfy",),
}
"""Optional command-line tools for troubleshooting (missing ones are WARN)."""


def check_python() -> Verdict:
    """Compare the running Python with the project's ``Requires-Python``."""
    running = platform.python_version()
    try:
        meta = importlib.metadata.metadata(DISTRIBUTION)
        wanted = (meta.get_all("Requires-Python") or [""])[0]
    except importlib.metadata.PackageNotFoundError:
        return Status.FAIL, f"Python {running}; {DISTRIBUTION} is not installed in {sys.prefix}"
    if wanted and Version(running) not in SpecifierSet(wanted):
        return Status.FAIL, f"Python {running} does not satisfy {wanted} ({sys.executable})"
    return Status.OK, f"Python {running} ({sys.executable}) satisfies {wanted or 'any'}"


def pins() -> dict[str, SpecifierSet]:
    """Return the version specifiers the installed project declares for :data:`PINNED`."""
    out: dict[str, SpecifierSet] = {}
    for line in importlib.metadata.requires(DISTRIBUTION) or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        name = req.name.lower()
        if name in PINNED and req.marker is None:
            out[name] = req.specifier
    return out


def check_package(name: str, wanted: SpecifierSet | None) -> Verdict:
    """Compare an installed package's version with the project's pin.

    Parameters
    ----------
    name : str
        Distribution name.
    wanted : SpecifierSet or None
        The pin (None when the project does not declare one).

    Returns
    -------
    Verdict
        FAIL when missing or outside the pin (the fix: ``scripts/install.sh``).
    """
    try:
        found = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return Status.FAIL, f"not installed (pin {wanted}): run scripts/install.sh"
    if wanted is None:
        return Status.WARN, f"{found} (no pin found in the installed {DISTRIBUTION} metadata)"
    try:
        matches = wanted.contains(Version(found), prereleases=True)
    except InvalidVersion:
        matches = False
    if not matches:
        return Status.FAIL, f"{found} installed, pin is {wanted}: run scripts/install.sh"
    return Status.OK, f"{found} (pin {wanted})"


# ------------------------------------------------------------------------------ ML stack
_ML_PROBE = r"""
import json, sys
out = {"error": None}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda_available"] = bool(torch.cuda.is_available())
    out["cuda_version"] = torch.version.cuda
    out["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if out["cuda_available"] else []
except Exception as exc:
    out["error"] = f"torch: {type(exc).__name__}: {exc}"
    print(json.dumps(out)); sys.exit(0)
try:
    from mmcv.ops import RoIAlign, nms
    expected = [[4.5, 6.5], [20.5, 22.5]]  # bilinear samples of 0..63 on an 8x8 grid
    devices = ["cpu"] + (["cuda"] if out["cuda_available"] else [])
    out["ops"] = {}
    for device in devices:
        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]],
                             dtype=torch.float32, device=device)
        scores = torch.tensor([0.9, 0.8, 0.7], device=device)
        _, keep = nms(boxes, scores, 0.5)
        feat = torch.arange(64, dtype=torch.float32, device=device).reshape(1, 1, 8, 8)
        rois = torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32, device=device)
        pooled = RoIAlign((2, 2), 1.0, 0)(feat, rois)[0, 0].cpu().tolist()
        ok_nms = keep.cpu().tolist() == [0, 2]
        ok_roi = all(abs(a - b) < 1e-4 for r, e in zip(pooled, expected) for a, b in zip(r, e))
        out["ops"][device] = {"nms": ok_nms, "roi_align": ok_roi, "pooled": pooled}
except Exception as exc:
    out["error"] = f"mmcv.ops: {type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def ml_stack_report(timeout: float) -> dict[str, Any]:
    """Import torch and mmcv.ops in a child process and run nms and RoIAlign on tiny tensors.

    Parameters
    ----------
    timeout : float
        Seconds the child may run.

    Returns
    -------
    dict
        ``torch``, ``cuda_available``, ``cuda_version``, ``devices``, ``ops`` (per device:
        ``nms``, ``roi_align`` booleans) and ``error`` (None, or what failed).
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _ML_PROBE],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"importing torch and mmcv took longer than {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])
        return {"error": f"the probe process died (exit {proc.returncode}): {tail}"[:400]}
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def check_mmcv_ops(report: dict[str, Any]) -> Verdict:
    """Check that mmcv's compiled ops load and compute (CPU, and CUDA when present)."""
    ops: dict[str, dict[str, Any]] = report.get("ops") or {}
    if report.get("error"):
        return Status.FAIL, f"{report['error']}: rebuild mmcv with scripts/install.sh"
    wrong = [
        f"{op} on {device}"
        for device, res in ops.items()
        for op in ("nms", "roi_align")
        if not res.get(op)
    ]
    if wrong:
        return Status.FAIL, f"mmcv.ops computed wrong results: {', '.join(wrong)}"
    return Status.OK, f"nms and RoIAlign run on {', '.join(ops)}"


def check_cuda(report: dict[str, Any], settings: Settings | None) -> Verdict:
    """Report CUDA availability against ``models.device``."""
    if "cuda_available" not in report:
        return Status.FAIL, str(report.get("error") or "torch did not report CUDA")
    device = settings.models.device if settings is not None else "auto"
    if report["cuda_available"]:
        names = ", ".join(report.get("devices") or [])
        return Status.OK, f"CUDA {report.get('cuda_version')}: {names} (models.device = {device})"
    if device == "cuda":
        return Status.FAIL, "models.device = cuda but torch sees no CUDA device"
    if device == "cpu":
        return Status.OK, "no CUDA device; models.device = cpu"
    return Status.WARN, "no CUDA device: models.device = auto runs inference on the CPU (slow)"


# ------------------------------------------------------------------------------ tools
def check_tool(group: str) -> Verdict:
    """Look up an optional troubleshooting tool set on PATH (missing: WARN)."""
    names = TOOLS[group]
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        return (
            Status.WARN,
            f"{', '.join(missing)} not on PATH (optional, for troubleshooting; "
            "scripts/system-deps.sh installs it)",
        )
    return Status.OK, ", ".join(str(shutil.which(n)) for n in names)


# ------------------------------------------------------------------------------ ports
def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _our_serve(settings: Settings, timeout: float) -> str | None:
    """Return our serve's version if its HTTP ``/healthz`` answers, else None."""
    url = f"http://{_local(settings.http.host)}:{settings.http.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = json.loads(response.read())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("status") == "ok" and "version" in data:
        return str(data["version"])
    return None


def _bind_error(host: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def check_dicom_port(settings: Settings, timeout: float) -> Verdict:
    """Check that the SCP's port can be bound, or is held by this node's running serve."""
    host, port = settings.dicom.host, settings.dicom.port
    error = _bind_error(host, port)
    if error is None:
        return Status.OK, f"{host}:{port} is free for the DICOM SCP"
    if error.errno == errno.EACCES:
        return (
            Status.FAIL,
            f"{host}:{port}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)",
        )
    if error.errno != errno.EADDRINUSE:
        return Status.FAIL, f"cannot bind {host}:{port}: {error.strerror or error}"
    ae = settings.dicom.ae_title
    try:
        echo(_local(host), port, calling=ae, called=ae, timeout=timeout)
        answers = True
    except (SpinexrError, OSError, RuntimeError):
        answers = False
    version = _our_serve(settings, timeout)
    if answers and version is not None:
        return (
            Status.OK,
            f"{host}:{port} is in use by this node's serve ({version}, C-ECHO answered)",
        )
    if answers:
        return (
            Status.WARN,
            f"{host}:{port} is in use by an SCP that answers C-ECHO as {ae}, but no spinexr-node "
            f"HTTP server answers on port {settings.http.port}",
        )
    return Status.FAIL, f"{host}:{port} is in use by another program"


def check_http_port(settings: Settings, timeout: float) -> Verdict:
    """Check that the HTTP port can be bound, or is held by this node's running serve."""
    host, port = settings.http.host, settings.http.port
    error = _bind_error(host, port)
    if error is None:
        return Status.OK, f"{host}:{port} is free for the HTTP server"
    if error.errno == errno.EADDRINUSE:
        version = _our_serve(settings, timeout)
        if version is not None:
            return Status.OK, f"{host}:{port} is in use by this node's serve ({version})"
        return Status.FAIL, f"{host}:{port} is in use by another program"
    return Status.FAIL, f"cannot bind {host}:{port}: {error.strerror or error}"


# ------------------------------------------------------------------------------ TLS
def _not_after(path: Path) -> dt.datetime | None:
    # CPython's certificate decoder (used by its own test suite); absent on other builds.
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        info = decode(str(path))
        return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(info["notAfter"]), dt.UTC)
    except (ssl.SSLError, OSError, KeyError, ValueError):
        return None


def check_tls(settings: Settings) -> Verdict:
    """Check the DICOM TLS files: readable, the key matches the certificate, CA loads."""
    tls = settings.dicom.tls
    if not tls.enabled:
        return Status.OK, "DICOM TLS is off (dicom.tls.enabled = false)"
    assert tls.cert_file is not None and tls.key_file is not None
    files = {"cert_file": tls.cert_file, "key_file": tls.key_file}
    if tls.ca_file is not None:
        files["ca_file"] = tls.ca_file
    for key, path in files.items():
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            return Status.FAIL, f"dicom.tls.{key} {path}: {exc.strerror or exc}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as exc:
        return Status.FAIL, f"certificate {tls.cert_file} and key {tls.key_file} do not load: {exc}"
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (ssl.SSLError, OSError) as exc:
            return Status.FAIL, f"CA file {tls.ca_file} does not load: {exc}"
    detail = f"certificate {tls.cert_file} and key load"
    expires = _not_after(tls.cert_file)
    if expires is not None:
        days = (expires - dt.datetime.now(dt.UTC)).days
        if days < 0:
            return Status.FAIL, f"certificate {tls.cert_file} expired on {expires:%Y-%m-%d}"
        detail += f", valid until {expires:%Y-%m-%d}"
        if days < 30:
            return Status.WARN, f"{detail} (expires in {days} days)"
    if tls.require_client_cert:
        detail += "; client certificates required"
    return Status.OK, detail
