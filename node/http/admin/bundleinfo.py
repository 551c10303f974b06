"""The model bundle as the web process sees it: ``models.bundle`` verified once, cached.

`spinexr.pipeline.bundle.verify_bundle` hashes every weight file, which takes seconds for a
real bundle, so the outcome is kept until the manifest file changes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from spinexr.pipeline.preparation import PART_NAMES, read_preparation

logger = logging.getLogger(__name__)


class BundleInfo:
    """Cached verification of the configured bundle.

    Parameters
    ----------
    directory : Path or None
        ``models.bundle``; None when the node has no bundle.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._info: dict[str, Any] | None = None

    def _manifest_key(self) -> tuple[int, int] | None:
        assert self.directory is not None
        try:
            st = (self.directory / "manifest.json").stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def get(self) -> dict[str, Any]:
        """Return what is known of the bundle (verifying it on first use or after a change).

        Returns
        -------
        dict
            ``configured``, ``loaded`` (verified), ``error`` and, when verified, ``name``,
            ``version``, ``demo``, ``threshold`` (c*), ``threshold_method``,
            ``display_threshold``, ``fusion``, ``metrics``, ``training_data``,
            ``created``, ``device_uid``, ``classes``, ``directory``; ``preparing`` (None, or
            the step and which analyses are ready and which wait) while the bundle is being
            prepared (`spinexr.pipeline.preparation`).
        """
        if self.directory is None:
            return {"configured": False, "loaded": False, "error": None, "directory": None}
        prep = read_preparation(self.directory)
        preparing = None
        if prep is not None:
            preparing = {
                "step": prep.step,
                "steps": prep.steps,
                "text": prep.text,
                "ready": [PART_NAMES[p] for p in prep.ready],
                "waiting": [PART_NAMES[p] for p in prep.waiting_parts],
            }
        with self._lock:
            key = self._manifest_key()
            if key is None and prep is not None:  # nothing written yet: not an error
                return {
                    "configured": True,
                    "loaded": False,
                    "error": None,
                    "directory": str(self.directory),
                    "preparing": preparing,
                }
            if self._info is None or key is None or key != self._key:
                self._info = self._verify()
                self._key = key
            return {**self._info, "preparing": preparing}

    def _verify(self) -> dict[str, Any]:
        from spinexr.pipeline.bundle import verify_bundle
        from spinexr.pipeline.errors import PipelineError

        assert self.directory is not None
        base: dict[str, Any] = {"configured": True, "directory": str(self.directory)}
        try:
            bundle = verify_bundle(self.directory)
        except (PipelineError, OSError) as exc:
            logger.error("model bundle %s failed verification: %s", self.directory, exc)
            return {**base, "loaded": False, "error": str(exc)}
        m = bundle.manifest
        return {
            **base,
            "loaded": True,
            "error": None,
            "name": m.name,
            "version": m.version,
            "demo": m.demo,
            "threshold": m.threshold,
            "threshold_method": m.threshold_method,
            "display_threshold": m.display_threshold,
            "fusion": m.fusion.value,
            "metrics": m.metrics,
            "training_data": m.training_data,
            "created": m.created,
            "device_uid": bundle.device_uid,
            "classes": list(m.classes),
        }
