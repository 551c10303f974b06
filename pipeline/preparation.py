"""A model bundle being prepared while the node already runs (the demo's staged first start).

`spinexr-node serve --demo-bundle` on a fresh machine does not wait for the demo's training:
it starts receiving at once and trains the demo bundle in a child process. That process
keeps a **preparation file** beside the bundle folder (``<bundle>.preparing.json``, written
atomically): its process id, the bundle's identity to be (``name@version``, for the job
keys), the current step, and the **parts** whose models are ready:

- ``radiograph``: the lesion models, the image check and the lateral keypoint model (every
  analysis of radiographs);
- ``ct``: the CT models and the benign / malignant classifier.

While the file names a live process, a worker holds each job whose part is not ready in the
queue (`waiting_for`), the dashboard says which analyses are still being prepared, and the
worker reloads the bundle when its manifest changes. The file is removed when the
preparation ends; a file whose process is gone (killed, or the node stopped) counts as no
preparation, so nothing waits for a training that is not running.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from spinexr.pipeline.atomic import write_atomically

PARTS: Final = ("radiograph", "ct")
"""The parts of a bundle a study's analysis needs, in the order the demo prepares them."""

PART_NAMES: Final = {"radiograph": "radiograph analyses", "ct": "CT analyses"}
"""How the dashboard and the timeline name each part."""


@dataclass(frozen=True)
class Preparation:
    """What a bundle preparation has done so far.

    Attributes
    ----------
    pid : int
        The preparing process.
    identity : str
        ``name@version`` the bundle will have.
    step, steps : int
        Current step and their number.
    text : str
        What the current step does.
    ready : tuple of str
        The `PARTS` whose models are in the bundle.
    started, updated : float
        Epoch seconds.
    """

    pid: int
    identity: str
    step: int = 0
    steps: int = 0
    text: str = "starting"
    ready: tuple[str, ...] = ()
    started: float = 0.0
    updated: float = 0.0

    @property
    def waiting_parts(self) -> list[str]:
        """The parts not ready yet."""
        return [p for p in PARTS if p not in self.ready]

    def describe(self) -> str:
        """One line: the step and what waits, e.g. ``step 7/8: CT models (CT analyses wait)``."""
        waiting = ", ".join(PART_NAMES[p] for p in self.waiting_parts) or "nothing"
        return f"step {self.step}/{self.steps}: {self.text} ({waiting} wait)"


def preparation_file(bundle_dir: Path) -> Path:
    """Return ``<bundle>.preparing.json``, beside the bundle folder."""
    bundle_dir = Path(bundle_dir)
    return bundle_dir.with_name(bundle_dir.name + ".preparing.json")


def write_preparation(bundle_dir: Path, prep: Preparation) -> Preparation:
    """Write (replace) the preparation file atomically; return what was written."""
    now = time.time()
    prep = dataclasses.replace(prep, updated=now, started=prep.started or now)
    data = json.dumps(dataclasses.asdict(prep), indent=2).encode()
    write_atomically(preparation_file(bundle_dir), data, durable=False)
    return prep


def update_preparation(
    bundle_dir: Path,
    *,
    step: int | None = None,
    steps: int | None = None,
    text: str | None = None,
    ready: Iterable[str] = (),
) -> Preparation | None:
    """Change the preparation file, if there is one; None when there is none.

    Parameters
    ----------
    bundle_dir : pathlib.Path
        The bundle being prepared.
    step, steps, text : optional
        The new step.
    ready : iterable of str
        Parts that became ready (added to those already ready).

    Returns
    -------
    Preparation or None
        What was written.
    """
    current = _load(preparation_file(bundle_dir))
    if current is None:
        return None
    now_ready = tuple(p for p in PARTS if p in set(current.ready) | set(ready))
    return write_preparation(
        bundle_dir,
        dataclasses.replace(
            current,
            step=current.step if step is None else step,
            steps=current.steps if steps is None else steps,
            text=current.text if text is None else text,
            ready=now_ready,
        ),
    )


def clear_preparation(bundle_dir: Path) -> None:
    """Remove the preparation file (the preparation ended)."""
    preparation_file(bundle_dir).unlink(missing_ok=True)


def read_preparation(bundle_dir: Path | None) -> Preparation | None:
    """Return the bundle's preparation while its process lives, else None.

    Parameters
    ----------
    bundle_dir : pathlib.Path or None
        The configured bundle.

    Returns
    -------
    Preparation or None
        None when there is no file, it is unreadable, or its process is gone.
    """
    if bundle_dir is None:
        return None
    prep = _load(preparation_file(bundle_dir))
    if prep is None or not _alive(prep.pid):
        return None
    return prep


def waiting_for(bundle_dir: Path | None, *, radiographs: bool, ct: bool) -> str | None:
    """Say what a study's analysis waits for, or None when it can run now.

    Parameters
    ----------
    bundle_dir : pathlib.Path or None
        The configured bundle.
    radiographs, ct : bool
        What the study holds.

    Returns
    -------
    str or None
        E.g. ``"CT models being prepared (step 7/8: ...)"``; None when no preparation is
        running or the parts the study needs are ready.
    """
    prep = read_preparation(bundle_dir)
    if prep is None:
        return None
    needed = [p for p, has in (("radiograph", radiographs), ("ct", ct)) if has]
    missing = [p for p in needed if p not in prep.ready]
    if not missing:
        return None
    names = " and ".join(PART_NAMES[p].replace(" analyses", "") for p in missing)
    return f"{names} models being prepared ({prep.describe()})"


def _load(path: Path) -> Preparation | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["ready"] = tuple(data.get("ready", ()))
        return Preparation(**data)
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
