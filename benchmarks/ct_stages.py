"""Seconds per stage and peak memory of the CT method on one full-size CT study (issue 17).

A chest-abdomen CT phantom (512 × 512, 0.7 mm pixels, 1 mm slices, T4-L3: about 300 slices)
is written as a DICOM study with a localizer and a thick reformat beside the thin axial
series, in a child process. This process then runs the stages the node will run, each timed:

- ``assembly``: read every header (``stop_before_pixels``) and choose the series
  (`spinexr.pipeline.ct.series.select_series`);
- ``volume``: read the chosen series into a HU volume (`spinexr.pipeline.ct.volume.
  load_volume`, highdicom); the reference, measured in the same run, is the plain way:
  ``pydicom.dcmread`` every file, sort by Image Position, ``numpy.stack`` the rescaled pixels;
- ``localisation``, ``straightening``, ``detection``: `spinexr.pipeline.ct.vertebrae.
  analyse_ct_volume` with the given models.

Figures: min / median / max over ``--repeats`` runs, the volume stage as a ratio to the
reference, and the process's peak resident memory (``ru_maxrss``; the phantom is made in the
child, so it is not counted). The output objects are not built yet (no CT stage in ``serve``).

    .venv/bin/python benchmarks/ct_stages.py --localiser runs/ct/localiser.pt \\
        --keypoints runs/ct/kp/keypointrcnn.pt --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom


def _write(root: str, seed: int) -> None:
    from spinexr.training.phantoms.ct import CtAcquisition, make_ct_phantom
    from spinexr.training.phantoms.ct_dicom import write_ct_study

    phantom = make_ct_phantom(
        seed,
        size=CtAcquisition(512, 0.7, 1.0, 1.0, "STANDARD"),
        levels=("T4", "L3"),
        body_part="ABDOMEN",
    )
    write_ct_study(Path(root), phantom)


def _plain_stack(paths: list[Path]) -> np.ndarray:
    datasets = [pydicom.dcmread(p) for p in paths]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in datasets
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    from spinexr.pipeline.ct.localise import load_localiser
    from spinexr.pipeline.ct.series import select_series
    from spinexr.pipeline.ct.vertebrae import analyse_ct_volume
    from spinexr.pipeline.ct.volume import load_volume
    from spinexr.pipeline.vertebrae.loader import load_keypoint_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--localiser", type=Path, required=True)
    p.add_argument("--keypoints", type=Path, required=True)
    p.add_argument("--arch", default="keypointrcnn")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=5)
    args = p.parse_args(argv)
    localiser, _ = load_localiser(args.localiser)
    model = load_keypoint_model(args.arch, args.keypoints, "cpu")
    with tempfile.TemporaryDirectory(prefix="ct-bench-") as tmp:
        started = time.monotonic()
        child = multiprocessing.get_context("spawn").Process(target=_write, args=(tmp, args.seed))
        child.start()
        child.join()
        if child.exitcode != 0:
            print("writing the phantom study failed", file=sys.stderr)
            return 1
        files = sorted(f for f in Path(tmp).rglob("*") if f.is_file())
        print(
            f"[ct-bench] study written in {time.monotonic() - started:.0f} s: {len(files)} files",
            file=sys.stderr,
        )
        times: dict[str, list[float]] = {}
        slices = 0
        found = 0
        for repeat in range(args.repeats):
            t = time.perf_counter()
            headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
            choice = select_series(headers).require()
            times.setdefault("assembly", []).append(time.perf_counter() - t)
            chosen = [
                f
                for f, ds in zip(files, headers, strict=True)
                if str(ds.SeriesInstanceUID) == choice
            ]
            t = time.perf_counter()
            volume = load_volume(chosen, max_bytes=4 << 30)
            times.setdefault("volume", []).append(time.perf_counter() - t)
            t = time.perf_counter()
            _plain_stack(chosen)
            times.setdefault("volume reference (pydicom + numpy.stack)", []).append(
                time.perf_counter() - t
            )
            analysis = analyse_ct_volume(volume.array, volume.affine, localiser, model)
            for step, seconds in analysis.seconds.items():
                times.setdefault(step, []).append(seconds)
            slices, found = volume.array.shape[0], len(analysis.vertebrae)
            print(f"[ct-bench] repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"CT study: {len(files)} files, chosen series {slices} slices of 512 x 512; "
        f"{found} vertebrae found"
    )
    print("| stage | min s | median s | max s |")
    print("|---|---|---|---|")
    for stage, values in times.items():
        print(
            f"| {stage} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |"
        )
    method = [k for k in times if "reference" not in k]
    total = [sum(times[k][i] for k in method) for i in range(args.repeats)]
    ratio = [
        a / b
        for a, b in zip(
            times["volume"], times["volume reference (pydicom + numpy.stack)"], strict=True
        )
    ]
    print(
        f"| total (without the reference) | {min(total):.2f} | {statistics.median(total):.2f} | "
        f"{max(total):.2f} |"
    )
    print(
        f"volume / reference: {min(ratio):.2f} / {statistics.median(ratio):.2f} / "
        f"{max(ratio):.2f} (min / median / max)"
    )
    print(f"peak resident memory of this process: {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
