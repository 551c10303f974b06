"""Seconds per stage and peak memory of the CT method on one full-size CT study (issue 17).

A chest-abdomen CT phantom (512 × 512, 0.7 mm pixels, 1 mm slices, T4-L3: about 300 slices)
is written as a DICOM study with a localizer and a thick reformat beside the thin axial
series, in a child process. This process then runs the stages the node will run, each timed:

- ``headers`` and ``selection``: read every header (``stop_before_pixels``) and choose the
  series (`spinexr.pipeline.ct.series.select_series`), as the worker's CT stage does
  (`spinexr.pipeline.ct.stage.CtStage`, which runs every stage below);
- ``volume``: read the chosen series into a HU volume (`spinexr.pipeline.ct.volume.
  load_volume`, highdicom); the reference, measured in the same run, is the plain way:
  ``pydicom.dcmread`` every file, sort by Image Position, ``numpy.stack`` the rescaled pixels;
- ``localisation``, ``straightening``, ``detection``: `spinexr.pipeline.ct.vertebrae.
  analyse_ct_volume` with the given models;
- ``outputs``: the headers the SR references (`spinexr.node.jobs.sources.ct_evidence`) and
  the objects the node sends (`spinexr.node.outputs.build.build_outputs`: Comprehensive 3D SR,
  the reformat's Secondary Capture and its GSPS).

The study's assembly in the node (the completion timer, the job) is measured by
``benchmarks/ct_ingest.py``. Figures: min / median / max over ``--repeats`` runs, the volume
stage as a ratio to the reference, and the process's peak resident memory (``ru_maxrss``; the
phantom is made in the child, so it is not counted).

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
    import datetime as dt

    from spinexr.node.jobs.sources import ct_evidence
    from spinexr.node.outputs.build import build_outputs
    from spinexr.node.settings import Settings
    from spinexr.pipeline.ct.localise import load_localiser
    from spinexr.pipeline.ct.stage import CtStage
    from spinexr.pipeline.fusion import summarise_study
    from spinexr.pipeline.results import FusionMode, Provenance, StudyResult
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
        slices = found = objects = 0
        stage = CtStage(localiser, model, model_name="benchmark")
        provenance = Provenance(
            bundle_name="benchmark",
            bundle_version="0",
            device_uid="2.25.1",
            weights_digest="0" * 64,
            demo=True,
            software_version="0",
            torch_device="cpu",
        )
        for repeat in range(args.repeats):
            outcome = stage.analyse(files)
            ct = outcome.analysis
            if not ct.analysed or outcome.reformat is None:
                print(f"the CT was not analysed: {ct.reason}: {ct.message}", file=sys.stderr)
                return 1
            for step, seconds in ct.timings.items():
                times.setdefault(step, []).append(seconds)
            chosen = [
                f
                for f in files
                if str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
                == ct.series_instance_uid
            ]
            t = time.perf_counter()
            _plain_stack(chosen)
            times.setdefault("volume reference (pydicom + numpy.stack)", []).append(
                time.perf_counter() - t
            )
            t = time.perf_counter()
            summary = summarise_study([], 0.5, ct)
            result = StudyResult(
                study_instance_uid=str(pydicom.dcmread(files[0]).StudyInstanceUID),
                outcome=summary.outcome,
                threshold=0.5,
                display_threshold=0.3,
                fusion_mode=FusionMode.PAPER,
                ct=ct,
                provenance=provenance,
                analysed_at=dt.datetime.now(dt.UTC),
            )
            built = build_outputs(
                ct_evidence(files, result),
                result,
                Settings(),
                job_key=f"bench-{repeat}",
                ct_reformat=outcome.reformat,
            )
            times.setdefault("outputs", []).append(time.perf_counter() - t)
            slices, found, objects = ct.slices or 0, len(ct.vertebrae), len(built)
            print(f"[ct-bench] repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"CT study: {len(files)} files, chosen series {slices} slices of 512 x 512; "
        f"{found} vertebrae found; {objects} output objects"
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
