"""Prepare the demo bundle in a child process while the node already runs (staged first start).

`start_preparation` (called by ``spinexr-node serve --demo-bundle`` when the demo bundle is
not complete) writes the preparation file (`spinexr.pipeline.preparation`) and starts
``python -m spinexr.training.bundles.prepare --out <bundle>``, which runs
`spinexr.training.bundles.demo.demo` and keeps the file up to date: the step, and the parts
whose models are ready. The node receives meanwhile; a worker analyses each study as soon as
the models it needs are ready. The file is removed when the preparation ends, whatever the
way (a finished bundle, an error, SIGTERM from a stopping node); an interrupted preparation
continues where it stopped at the next start, as `demo` does.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from spinexr.pipeline.preparation import (
    Preparation,
    clear_preparation,
    preparation_file,
    update_preparation,
    write_preparation,
)

STARTUP_WAIT_SECONDS = 30.0
"""How long the child waits for the preparation file its parent writes."""


def start_preparation(out: Path, identity: str, *, quick: bool = False) -> subprocess.Popen[bytes]:
    """Start preparing the demo bundle in a child process; return it.

    Parameters
    ----------
    out : pathlib.Path
        The demo bundle folder.
    identity : str
        ``name@version`` the bundle will have (`demo.demo_identity`).
    quick : bool
        The quick test recipe (`demo.QUICK_RECIPE`, no CT models) instead of the demo's.

    Returns
    -------
    subprocess.Popen
        The child (its progress lines go to this process's stderr).
    """
    command = [sys.executable, "-m", "spinexr.training.bundles.prepare", "--out", str(out)]
    child = subprocess.Popen([*command, "--quick"] if quick else command, stdin=subprocess.DEVNULL)
    write_preparation(out, Preparation(pid=child.pid, identity=identity))
    return child


def stop_preparation(child: subprocess.Popen[bytes], out: Path, timeout: float = 10.0) -> None:
    """Stop the child (SIGTERM, then SIGKILL) and remove the preparation file."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    clear_preparation(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with the preparation file kept up to date (the child's entry point)."""
    from spinexr.training.bundles.demo import DEMO_RECIPE, QUICK_RECIPE, demo
    from spinexr.training.ct.bundle import DEMO_CT_RECIPE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the demo bundle folder")
    p.add_argument("--quick", action="store_true", help="the quick test recipe, no CT models")
    args = p.parse_args(argv)
    out: Path = args.out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    deadline = time.monotonic() + STARTUP_WAIT_SECONDS
    while not preparation_file(out).is_file() and time.monotonic() < deadline:
        time.sleep(0.1)

    def on_step(step: int, steps: int, text: str) -> None:
        update_preparation(out, step=step, steps=steps, text=text)

    def on_ready(part: str) -> None:
        update_preparation(out, ready=[part])

    try:
        demo(
            out,
            QUICK_RECIPE if args.quick else DEMO_RECIPE,
            ct=None if args.quick else DEMO_CT_RECIPE,
            say=lambda msg: print(msg, file=sys.stderr, flush=True),
            on_step=on_step,
            on_ready=on_ready,
        )
    except Exception as exc:
        print(f"[demo] preparation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        clear_preparation(out)
    print(f"[demo] the demo bundle is ready: {out}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
