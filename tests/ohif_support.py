"""An OHIF v3 viewer served by a throw-away Orthanc, the way a PACS with OHIF would show it.

The published ``@ohif/app`` build (``scripts/viewer-deps.sh`` caches its ``dist/`` under
``$SPINEXR_CACHE/ohif/<version>/dist``) is served by Orthanc's ServeFolders plugin at
``/ohif/`` on the same origin as Orthanc's ``/dicom-web`` (no CORS), with an ``app-config.js``
of ours that points OHIF's DICOMweb data source there.

The build is made to be served at ``/`` (``window.PUBLIC_URL = "/"``, webpack's public path
``"/"``, ``url(/...)`` in its CSS); OHIF's way to serve it elsewhere is to build it again with
``PUBLIC_URL=/ohif/``. The rig does the same to the built files: a site folder of symbolic
links to the cached build, where ``index.html`` and the few files that hold the public path
are rewritten copies. ServeFolders serves files only, so OHIF's ``/ohif/viewer`` route is a
copy of ``index.html`` named ``viewer``, served as HTML (the ``Extensions`` entry for "no
extension").

Also here: `ohif_ready`, the node's SR re-encoded the way OHIF 3.13 needs it (see
``docs/viewers.md``), and the browser helpers the viewer tests share.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from testsupport import Orthanc, require_tool, tools_required

# Keep in step with scripts/viewer-deps.sh (OHIF_VERSION).
OHIF_VERSION = "3.13.2"
BASE = "/ohif"
# What the build says where the public path goes, and what it becomes under BASE.
_REWRITES = {
    ".js": [('__webpack_require__.p = "/"', f'__webpack_require__.p = "{BASE}/"')],
    ".css": [("url(/", f"url({BASE}/")],
    ".json": [('"/assets/', f'"{BASE}/assets/')],
}


def ohif_dist() -> Path:
    """The cached OHIF build; skip (fail under SPINEXR_REQUIRE_TOOLS=1) when it is missing."""
    cache = Path(os.environ.get("SPINEXR_CACHE", Path.home() / ".cache" / "spinexr"))
    dist = cache / "ohif" / OHIF_VERSION / "dist"
    if not (dist / "index.html").is_file():
        msg = f"OHIF {OHIF_VERSION} is not in {dist}: run scripts/viewer-deps.sh"
        if tools_required():
            pytest.fail(msg)
        pytest.skip(msg)
    return dist


def app_config(base: str = BASE, dicomweb: str = "/dicom-web") -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source on Orthanc, routes under ``base``.

    The keys are OHIF v3's (``platform/app/public/config/default.js``); the data source
    options are the ones Orthanc's own OHIF plugin uses with Orthanc's DICOMweb plugin.
    """
    config = {
        "routerBasename": base,
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "maxNumberOfWebWorkers": 2,
        "investigationalUseDialog": {"option": "never"},
        # No onboarding tour: its overlay takes every click until dismissed.
        "customizationService": {"ohif.tours": {"$set": []}},
        "defaultDataSourceName": "orthanc",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "orthanc",
                "configuration": {
                    "friendlyName": "Orthanc (test PACS)",
                    "name": "orthanc",
                    "qidoRoot": dicomweb,
                    "wadoRoot": dicomweb,
                    "wadoUriRoot": dicomweb,
                    "qidoSupportsIncludeField": False,
                    "supportsReject": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": True,
                    "singlepart": "bulkdata,video",
                    "acceptHeader": [
                        "multipart/related; type=application/octet-stream; transfer-syntax=*"
                    ],
                    "bulkDataURI": {"enabled": True},
                },
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


def build_site(dist: Path, site: Path) -> Path:
    """Lay out ``site``: the OHIF build rewritten to be served at `BASE` (see the module)."""
    site.mkdir(parents=True)
    for entry in dist.iterdir():
        if entry.name in ("index.html", "app-config.js"):
            continue
        text = None
        if entry.is_file() and entry.suffix in _REWRITES:
            text = entry.read_text(encoding="utf-8")
            if not any(old in text for old, _ in _REWRITES[entry.suffix]):
                text = None
        if text is None:
            (site / entry.name).symlink_to(entry)
            continue
        for old, new in _REWRITES[entry.suffix]:
            text = text.replace(old, new)
        (site / entry.name).write_text(text, encoding="utf-8")
    index = (dist / "index.html").read_text(encoding="utf-8")
    assert 'window.PUBLIC_URL="/"' in index, "OHIF's index.html no longer sets PUBLIC_URL"
    index = index.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{BASE}/"')
    index = re.sub(r'(src|href)="/(?!/)', rf'\1="{BASE}/', index)
    (site / "index.html").write_text(index, encoding="utf-8")
    (site / "viewer").write_text(index, encoding="utf-8")
    (site / "app-config.js").write_text(app_config(), encoding="utf-8")
    return site


class OhifRig:
    """Orthanc with DICOMweb and OHIF at ``/ohif/``; `store` what the PACS holds."""

    def __init__(self, orthanc: Orthanc) -> None:
        self.orthanc = orthanc
        dist = ohif_dist()
        # ServeFolders takes a file's MIME type from the text after the last dot of its whole
        # path: the site lives where no folder name has a dot, so "viewer" is HTML.
        self._site_root = Path(tempfile.mkdtemp(prefix="spinexr_ohif_"))
        assert "." not in str(self._site_root), self._site_root
        self.site = build_site(dist, self._site_root / "site")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.orthanc.http_port}"

    def start(self) -> OhifRig:
        self.orthanc.start(
            serve_folders={
                "Folders": {BASE: str(self.site)},
                "Extensions": {"": "text/html", ".wasm": "application/wasm"},
                "AllowCache": True,
            }
        )
        with urllib.request.urlopen(f"{self.base_url}{BASE}/viewer", timeout=10) as answer:
            kind = answer.headers.get("Content-Type", "")
        assert kind.startswith("text/html"), f"{BASE}/viewer served as {kind!r}"
        return self

    def store(self, ds: Dataset) -> None:
        """Store one object in Orthanc (REST ``POST /instances``), as the node's export would."""
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        answer = self.orthanc.rest("/instances", data=buf.getvalue(), method="POST")
        assert answer["Status"] in ("Success", "AlreadyStored"), answer

    def viewer_url(self, study_uid: str) -> str:
        return f"{self.base_url}{BASE}/viewer?StudyInstanceUIDs={study_uid}"

    def stop(self) -> None:
        self.orthanc.stop()
        shutil.rmtree(self._site_root, ignore_errors=True)


# ----------------------------------------------------------------------------- the SR

IMAGING_MEASUREMENTS = "126010"  # DCM: the TID 1500 container of the measurement groups
FINDING = "121071"  # DCM


def plain(ds: Dataset) -> Dataset:
    """The object as the PACS holds it: written and read back (a plain pydicom Dataset)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def measurement_groups(sr: Dataset) -> list[Dataset]:
    """The measurement groups under the SR's Imaging Measurements container."""
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS:
            return list(item.ContentSequence)
    return []


def _scoord(group: Dataset) -> Dataset | None:
    return next((i for i in group.ContentSequence if i.ValueType in ("SCOORD", "SCOORD3D")), None)


def box_findings(sr: Dataset) -> list[tuple[str, str, list[float]]]:
    """Per planar-ROI group, in SR order: (finding name, source SOP Instance UID, points)."""
    out = []
    for group in measurement_groups(sr):
        region = _scoord(group)
        if region is None:
            continue
        finding = next(
            i
            for i in group.ContentSequence
            if i.ConceptNameCodeSequence[0].CodeValue == FINDING and i.ValueType == "CODE"
        )
        source = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        out.append(
            (
                str(finding.ConceptCodeSequence[0].CodeMeaning),
                str(source),
                [float(v) for v in region.GraphicData],
            )
        )
    return out


# ----------------------------------------------------------------------------- the browser


@contextmanager
def headless_chromium(width: int = 1600, height: int = 1000) -> Iterator[Any]:
    """Debian's chromium through chromedriver, console logged; Selenium Manager never runs."""
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
        # WebGL (OHIF renders with it) on the CPU: SwiftShader, as in CI.
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        if offline is None:
            del os.environ["SE_OFFLINE"]
        else:
            os.environ["SE_OFFLINE"] = offline


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that.

    An element replaced by a re-render while it was read counts as "not yet".
    """
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except StaleElementReferenceException:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.2)


def console(driver: Any) -> list[str]:
    """The browser console since the last call (level and message)."""
    return [f"{e['level']} {e['message']}" for e in driver.get_log("browser")]


# ----------------------------------------------------------------------------- pixels


def annotation_mask(png: bytes) -> np.ndarray:
    """Pixels in the colours Cornerstone draws annotations with: yellow or green.

    The radiographs are grey (R = G = B) and OHIF's own chrome is blue and grey, so only
    annotations (and their text) pass.
    """
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (g >= 150) & (b <= 110) & ((r >= 150) | (r <= 110))


def colour_mask(png: bytes, colour: tuple[int, int, int], tolerance: int = 60) -> np.ndarray:
    """Pixels within ``tolerance`` (sum of the channel differences) of ``colour``."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    return np.abs(rgb - np.asarray(colour)).sum(axis=2) < tolerance


def edge_coverage(
    mask: np.ndarray, corners: list[tuple[float, float]], tolerance: int = 4, samples: int = 40
) -> list[float]:
    """For each side of the quadrilateral ``corners`` (screen pixels): the share of points along
    it that have an annotation pixel within ``tolerance`` pixels."""
    out = []
    height, width = mask.shape
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
        hits = 0
        for t in np.linspace(0.05, 0.95, samples):
            x, y = round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))
            window = mask[
                max(0, y - tolerance) : min(height, y + tolerance + 1),
                max(0, x - tolerance) : min(width, x + tolerance + 1),
            ]
            hits += bool(window.any())
        out.append(hits / samples)
    return out


def interior_share(mask: np.ndarray, corners: list[tuple[float, float]]) -> float:
    """The share of annotation pixels in the middle half of the box ``corners`` spans."""
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    dx, dy = (x1 - x0) / 4, (y1 - y0) / 4
    inner = mask[round(y0 + dy) : round(y1 - dy), round(x0 + dx) : round(x1 - dx)]
    return float(inner.mean()) if inner.size else 0.0
