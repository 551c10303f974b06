"""Per-image latency of each inference stage, against the bare model forwards, and worker RSS.

Usage::

    .venv/bin/python benchmarks/inference.py [--images 8] [--size 2500x2000] [--repeat 2]
        [--threads N] [--device cpu] [--bare-batch study|1] [--seed 0]

Builds, in a temporary folder, a bundle with the production shape and random weights
(DenseNet-121, -169 and -201, seeded, and the default Sparse R-CNN R50-FPN config) and N
phantom radiographs of realistic size (12-bit, MONOCHROME1/2 mixed, half JPEG 2000 Lossless,
studies of two: AP + lateral), written as DICOM files. A worker process, spawned before the
parent imports anything heavy, only serves: it reads the files, loads the bundle, warms up on
a blank image and the first study, then ``--repeat`` times, study by study:

* the whole pipeline: ``Pipeline.analyze_study``; per-image stage times from the results'
  timings (decode+preprocess, each DenseNet, detector, fusion), the study total divided by
  its number of images, and "other" = total − Σ stages;
* the bare model forwards on the same images' ready inputs: each DenseNet on a normalised
  N×3×224×224 tensor, and the detector's ``model.predict`` on a batch that has been through
  its ``data_preprocessor`` (normalised, padded). That is the network plus its own head
  post-processing (Sparse R-CNN's top-k), which any wrapper pays; the adapter's conversions
  and the ``data_preprocessor`` count as plumbing (the latter is also printed apart).

The bare forwards take the same batches as the pipeline (a study's two images per forward:
its chunk holds the study, the detector takes two at a time) and a per-image figure is the
batch's time / 2; ``--bare-batch 1`` times them one image at a time (1×3×224×224) instead.
Whole and bare are timed back to back for each study (alternating which goes first), so
that both see the same load from other processes on the CPU; the ratio reported is the
median over studies × passes of whole ÷ bare, with the ratio of the means and that of the
process CPU times beside it.

It prints a table (median and mean ms per image, share of the whole), the sum of the bare
forwards per image, the ratio whole ÷ bare (target ≤ 1.3), and the worker's memory:
``VmRSS``/``VmHWM`` from ``/proc`` and ``ru_maxrss`` (target: peak ≤ 4 GB).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

ARCHS = ("densenet121", "densenet169", "densenet201")
TARGET_RATIO = 1.3
TARGET_RSS_GB = 4.0
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", flush=True)


def parse_size(text: str) -> tuple[int, int] | str:
    """``ROWSxCOLS`` → (rows, cols); ``full`` (the phantom factory's varying size) as is."""
    if text == "full":
        return text
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be ROWSxCOLS or 'full', not {text!r}") from exc
    return rows, cols


def memory() -> tuple[float, float, float]:
    """(VmRSS, VmHWM, ru_maxrss) of this process in GB (10^9 bytes); VmRSS/VmHWM 0 off Linux.

    ``ru_maxrss`` survives ``exec`` (Linux folds the pre-exec peak into it), so in a spawned
    child it is at least the parent's RSS at spawn time; ``VmHWM`` is this process image's own
    peak. The worker is spawned before the parent imports anything heavy, so both agree.
    """
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss_gb = maxrss * (1 if sys.platform == "darwin" else 1024) / 1e9
    fields = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0]) * 1024 / 1e9
    except OSError:
        pass
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0), maxrss_gb


# ------------------------------------------------------------------------------------ setup


def build_bundle(directory: Path, seed: int) -> Path:
    """Random-initialised DenseNet-121/169/201 + Sparse R-CNN R50-FPN, written as a bundle."""
    import torch

    from spinexr.pipeline.bundle import write_bundle
    from spinexr.pipeline.classifier import build_classifier
    from spinexr.pipeline.detector import (
        build_detector_model,
        detector_config_path,
        save_checkpoint,
    )

    src = directory / "src"
    src.mkdir(parents=True)
    torch.manual_seed(seed)
    files: dict[str, Path] = {}
    members = []
    for arch in ARCHS:
        t = time.perf_counter()
        path = src / f"{arch}.pt"
        torch.save(build_classifier(arch).state_dict(), path)
        files[f"classifier/{arch}.pt"] = path
        members.append({"arch": arch, "weights": f"classifier/{arch}.pt"})
        log(f"bundle: {arch} built and saved in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    config = detector_config_path()
    model = build_detector_model(config)
    checkpoint, resolved = save_checkpoint(model, src / "detector.pth", config)
    del model
    log(f"bundle: detector {config.stem} built and saved in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    bundle = write_bundle(
        directory / "bundle",
        {
            "name": "bench-random",
            "version": "0.0.0",
            "classifier": members,
            "detector": {
                "model": "sparse-rcnn",
                "config": "detector/detector.py",
                "checkpoint": "detector/detector.pth",
            },
            "threshold": 0.5,
            "threshold_method": "none (random weights, benchmark)",
            "display_threshold": 0.3,
            "training_data": {"kind": "none", "note": "benchmarks/inference.py"},
            "demo": True,
        },
        {**files, "detector/detector.py": resolved, "detector/detector.pth": checkpoint},
    )
    size_mb = sum(p.stat().st_size for p in bundle.directory.rglob("*") if p.is_file()) / 1e6
    log(f"bundle: written and verified ({size_mb:.0f} MB) in {time.perf_counter() - t:.1f} s")
    return bundle.directory


def make_studies(
    directory: Path, n: int, size: tuple[int, int] | str, seed: int
) -> list[list[Path]]:
    """N phantom DICOM files in studies of two (AP, LAT); photometric and syntax alternate.

    Image i: view AP for even i, LAT for odd; MONOCHROME1 in every other study; JPEG 2000
    Lossless for i % 4 in (1, 2) (half the images, both photometrics, both views).
    """
    from pydicom.uid import generate_uid

    from spinexr.training.phantoms import make_phantom_image, write

    directory.mkdir(parents=True)
    studies: list[list[Path]] = []
    for i in range(n):
        if i % 2 == 0:
            studies.append([])
        study = generate_uid(entropy_srcs=["bench-inference", str(seed), str(i // 2)])
        t = time.perf_counter()
        ds, _ = make_phantom_image(
            seed * 1000 + i,
            view="AP" if i % 2 == 0 else "LAT",
            photometric="MONOCHROME1" if (i // 2) % 2 else "MONOCHROME2",
            compressed=i % 4 in (1, 2),
            size=size,  # type: ignore[arg-type]
            region="LSPINE",
            study_uid=study,
            series_uid=generate_uid(entropy_srcs=[study, str(i)]),
            instance_number=1,
        )
        path = directory / f"{i:03d}.dcm"
        write(ds, path)
        studies[-1].append(path)
        log(
            f"image {i + 1}/{n}: {ds.Rows}x{ds.Columns} {ds.BitsStored}-bit "
            f"{ds.PhotometricInterpretation} {ds.file_meta.TransferSyntaxUID.name}, "
            f"{path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t:.1f} s"
        )
    return studies


# ------------------------------------------------------------------------------ the worker


def measure(
    bundle_dir: Path,
    studies: list[list[Path]],
    device: str,
    threads: int | None,
    repeat: int,
    bare_batch: str,
) -> dict[str, Any]:
    """In the worker: load, warm up, then ``repeat`` × (pipeline pass, bare-forward pass)."""
    mem = {"worker started": memory()}
    load_before = os.getloadavg()
    import pydicom
    import torch

    if threads:
        torch.set_num_threads(threads)
    from mmdet.structures import DetDataSample  # the bare forward goes below the adapter

    from spinexr.pipeline.classifier import images_to_batch
    from spinexr.pipeline.engine import Pipeline
    from spinexr.pipeline.geometry import detector_size
    from spinexr.pipeline.preprocess import (
        DETECTOR_LONGER_MAX,
        DETECTOR_SHORTER,
        decode_pixels,
        display_image,
        prepare_image,
    )
    from spinexr.pipeline.results import Outcome

    mem["after imports"] = memory()
    log(f"worker pid {os.getpid()}: torch {torch.__version__}, {torch.get_num_threads()} threads")
    t = time.perf_counter()
    pipe = Pipeline.from_directory(bundle_dir, device=device)
    load_s = time.perf_counter() - t
    mem["after bundle load"] = memory()
    log(f"worker: bundle verified and models loaded in {load_s:.1f} s on {pipe.device}")
    datasets = [[pydicom.dcmread(p) for p in files] for files in studies]
    flat = [ds for study in datasets for ds in study]
    dev = pipe.device
    model = pipe.detector.model  # type: ignore[attr-defined]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def bare_forwards(group: list[pydicom.Dataset]) -> dict[str, tuple[float, float]]:
        """Each model once on these images' ready inputs (one batch): (wall s, CPU s).

        Input preparation (preprocessing, normalisation) is done first and not counted; the
        detector's ``data_preprocessor`` is timed apart (it is plumbing, not model).
        """
        prepared = [prepare_image(ds) for ds in group]
        x = pipe.classifier.normalise(images_to_batch([p.classifier_input for p in prepared]))
        inputs, samples = [], []
        for p in prepared:
            shape = tuple(int(v) for v in p.detector_input.shape[:2])
            meta = {"img_shape": shape, "ori_shape": shape, "scale_factor": (1.0, 1.0)}
            inputs.append(torch.from_numpy(p.detector_input).permute(2, 0, 1))
            samples.append(DetDataSample(metainfo=meta))
        sync()
        out = {}
        for arch, member in pipe.classifier.members.items():
            t, c = time.perf_counter(), time.process_time()
            member(x)
            sync()
            out[f"classifier.{arch}"] = (time.perf_counter() - t, time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        batch = model.data_preprocessor({"inputs": inputs, "data_samples": samples}, False)
        sync()
        out["data_preprocessor"] = (time.perf_counter() - t, time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        model.predict(batch["inputs"], batch["data_samples"])
        sync()
        out["detector"] = (time.perf_counter() - t, time.process_time() - c)
        return out

    def groups(study: list[pydicom.Dataset]) -> list[list[pydicom.Dataset]]:
        """The bare forwards' batches: the study's images together, as the pipeline runs
        them (its chunk holds a whole study of two; the detector takes two per forward),
        or one by one."""
        return [study] if bare_batch == "study" else [[ds] for ds in study]

    t = time.perf_counter()
    pipe.warm_up()
    warm_up_s = time.perf_counter() - t
    first_study_s = pipe.analyze_study(datasets[0]).timings["total"]
    mem["after warm-up study"] = memory()
    with torch.inference_mode():
        for group in groups(datasets[0]):
            bare_forwards(group)
    log(
        f"worker: warm-up: Pipeline.warm_up() {warm_up_s:.1f} s, then study 1 "
        f"{first_study_s:.1f} s, then bare forwards; {time.perf_counter() - t:.1f} s in all"
    )

    # Whole and bare are interleaved study by study, so that both see the same load from
    # whatever else runs on this CPU. Lists are per image, aligned: pass, study, image.
    per_image: defaultdict[str, list[float]] = defaultdict(list)
    bare: defaultdict[str, list[float]] = defaultdict(list)
    cpu_whole: list[float] = []  # per image: process CPU of analyze_study / images
    cpu_bare: list[float] = []  # per image: process CPU of its bare model forwards
    pair_ratios: list[float] = []  # per study and pass: whole wall / bare wall

    def run_whole(k: int, study: list[pydicom.Dataset]) -> float:
        c = time.process_time()
        result = pipe.analyze_study(study)
        cpu = time.process_time() - c
        if result.outcome is Outcome.FAILED or len(result.analysed_images) != len(study):
            raise RuntimeError(f"study {k + 1} not fully analysed: {result.failure_reason}")
        n = len(study)
        stage_sum = sum(v for key, v in result.timings.items() if key != "total")
        for image in result.images:
            for key, v in image.timings.items():
                per_image[key].append(v)
            per_image["total"].append(result.timings["total"] / n)
            # The study's wall time not inside a timed stage (incl. summarise_study's).
            per_image["other"].append((result.timings["total"] - stage_sum) / n)
            cpu_whole.append(cpu / n)
        return result.timings["total"]

    def run_bare(study: list[pydicom.Dataset]) -> float:
        bare_wall = 0.0
        with torch.inference_mode():
            for group in groups(study):
                times = bare_forwards(group)
                models = [v for key, v in times.items() if key != "data_preprocessor"]
                bare_wall += sum(wall for wall, _ in models)
                for _ in group:  # per image: the batch's time / its size
                    for key, (wall, _) in times.items():
                        bare[key].append(wall / len(group))
                    cpu_bare.append(sum(cpu for _, cpu in models) / len(group))
        return bare_wall

    for r in range(repeat):
        for k, study in enumerate(datasets):
            # Alternate which goes first, so that a trend in the load cancels out.
            if (r * len(datasets) + k) % 2 == 0:
                whole = run_whole(k, study)
                bare_wall = run_bare(study)
            else:
                bare_wall = run_bare(study)
                whole = run_whole(k, study)
            pair_ratios.append(whole / bare_wall)
            log(
                f"pass {r + 1}/{repeat}, study {k + 1}/{len(datasets)} ({len(study)} images): "
                f"whole pipeline {whole:.2f} s, bare forwards {bare_wall:.2f} s, "
                f"ratio {whole / bare_wall:.3f}"
            )
    mem["after the passes"] = memory()
    decode, voi = [], []  # preprocessing's two main parts, once per image
    for ds in flat:
        t = time.perf_counter()
        stored = decode_pixels(ds)
        decode.append(time.perf_counter() - t)
        t = time.perf_counter()
        display_image(ds, stored)
        voi.append(time.perf_counter() - t)
    log("worker: done")
    return {
        "device": str(dev),
        "bare_batch": bare_batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_s": load_s,
        "warm_up_s": warm_up_s,
        "first_study_s": first_study_s,
        "first_study_images": len(datasets[0]),
        "loadavg": (load_before, os.getloadavg()),
        "per_image": dict(per_image),
        "bare": dict(bare),
        "cpu_whole": cpu_whole,
        "cpu_bare": cpu_bare,
        "pair_ratios": pair_ratios,
        "decode": decode,
        "voi": voi,
        "compressed": [ds.file_meta.TransferSyntaxUID.is_compressed for ds in flat],
        "detector_shapes": sorted(
            {
                detector_size(int(ds.Rows), int(ds.Columns), DETECTOR_SHORTER, DETECTOR_LONGER_MAX)
                for ds in flat
            }
        ),
        "sizes": sorted({(int(ds.Rows), int(ds.Columns)) for ds in flat}),
        "memory": mem,
    }


def _worker(conn: Any) -> None:
    """Spawned first, while the parent is small; waits for the job, sends back the result."""
    job = conn.recv()
    if job is None:
        return
    try:
        conn.send(("ok", measure(**job)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))  # printed by the parent
        raise SystemExit(1) from None


# ------------------------------------------------------------------------------ the report


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(res: dict[str, Any], n_images: int, repeat: int) -> None:
    per, bare = res["per_image"], res["bare"]
    med, mean = statistics.median, statistics.fmean
    total_mean = mean(per["total"])
    models = [k for k in bare if k != "data_preprocessor"]
    rows = [("decode+preprocess", "preprocess")]
    rows += [(arch, f"classifier.{arch}") for arch in ARCHS if f"classifier.{arch}" in per]
    rows += [("detector", "detector"), ("fusion", "fusion"), ("other (unattributed)", "other")]
    print()
    print(
        f"{n_images} images ({', '.join(f'{r}x{c}' for r, c in res['sizes'])}; detector input "
        f"{', '.join(f'{h}x{w}' for h, w in res['detector_shapes'])}), {repeat} pass(es), "
        f"device {res['device']}, {res['threads']} torch threads, torch {res['torch']}"
    )
    batch = "a study's images per batch" if res["bare_batch"] == "study" else "batch of 1"
    print(f"bare forwards: {batch}, per image = batch time / images in the batch")
    print(f"CPU: {_cpu_name()} ({os.cpu_count()} logical CPUs)")
    print()
    head = f"{'stage':<22}{'median ms/img':>14}{'mean ms/img':>13}{'share':>8}"
    head += f"{'bare median ms':>16}{'mean stage/bare':>17}"
    print(head)
    print("-" * len(head))
    for label, key in rows:
        values = per.get(key, [0.0])
        line = f"{label:<22}{med(values) * 1e3:>14.0f}{mean(values) * 1e3:>13.0f}"
        line += f"{mean(values) / total_mean:>8.1%}"
        if key in bare:
            line += f"{med(bare[key]) * 1e3:>16.0f}{mean(values) / mean(bare[key]):>17.2f}"
        print(line)
    print("-" * len(head))
    whole_med = med(per["total"]) * 1e3
    print(f"{'whole pipeline':<22}{whole_med:>14.0f}{total_mean * 1e3:>13.0f}{'100%':>8}")
    bare_sum = [sum(v) for v in zip(*(bare[k] for k in models), strict=True)]
    print(f"{'sum of bare forwards':<22}{med(bare_sum) * 1e3:>14.0f}{mean(bare_sum) * 1e3:>13.0f}")
    print()
    ratio = med(res["pair_ratios"])
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(
        f"ratio whole / sum of bare forwards: {ratio:.3f} — {verdict} the target ≤ {TARGET_RATIO}"
    )
    print(
        f"  (median over studies × passes of whole ÷ bare, each pair timed back to back; "
        f"ratio of the means {total_mean / mean(bare_sum):.3f}; "
        f"of process CPU time {mean(res['cpu_whole']) / mean(res['cpu_bare']):.3f})"
    )
    print(f"  plumbing per image: {(total_mean - mean(bare_sum)) * 1e3:.0f} ms (means)")
    comp = res["compressed"]
    for label, flag in (("JPEG 2000", True), ("native", False)):
        d = [v for v, c in zip(res["decode"], comp, strict=True) if c is flag]
        v = [v for v, c in zip(res["voi"], comp, strict=True) if c is flag]
        if d:
            print(
                f"  preprocess parts, {label}: decode {med(d) * 1e3:.0f} ms, "
                f"modality LUT+VOI+min-max {med(v) * 1e3:.0f} ms (medians, one run each)"
            )
    print(
        "  detector data_preprocessor (normalise + pad): "
        f"{med(bare['data_preprocessor']) * 1e3:.0f} ms (median, inside the detector stage)"
    )
    print(f"  bundle load (verify hashes + build models): {res['load_s']:.1f} s")
    print(
        f"  Pipeline.warm_up(): {res['warm_up_s']:.1f} s; the first study after it (untimed "
        f"above): {res['first_study_s'] / res['first_study_images'] * 1e3:.0f} ms per image"
    )
    (b1, b5, b15), (e1, e5, e15) = res["loadavg"]
    print(
        f"  load average at worker start {b1:.2f} {b5:.2f} {b15:.2f}, at its end "
        f"{e1:.2f} {e5:.2f} {e15:.2f} (other processes on this CPU skew the timings)"
    )
    print()
    print("worker memory, GB (10^9 bytes)     VmRSS   VmHWM  ru_maxrss")
    for label, (cur, hwm, maxrss) in res["memory"].items():
        print(f"  {label:<30}{cur:>8.2f}{hwm:>8.2f}{maxrss:>11.2f}")
    _, hwm, maxrss = res["memory"]["after the passes"]
    peak = max(hwm, maxrss)
    verdict = "meets" if peak <= TARGET_RSS_GB else "MISSES"
    print(f"peak RSS of the worker: {peak:.2f} GB — {verdict} the target ≤ {TARGET_RSS_GB:g} GB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="number of images (studies of 2)")
    parser.add_argument(
        "--size", type=parse_size, default=(2500, 2000), help="ROWSxCOLS, or 'full' (varying)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="passes over the studies (whole pipeline + bare forwards)",
    )
    parser.add_argument(
        "--bare-batch",
        choices=("study", "1"),
        default="study",
        help="batches of the bare forwards: a study's images together (as the pipeline) or 1",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.images < 2 or args.repeat < 1:
        parser.error("--images must be ≥ 2 and --repeat ≥ 1")
    # The worker is spawned now, while this process is small: its ru_maxrss then reflects
    # only itself (Linux carries the pre-exec peak across exec).
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    worker = ctx.Process(target=_worker, args=(child_conn,), name="inference-worker")
    worker.start()
    job_sent = False
    try:
        with tempfile.TemporaryDirectory(prefix="spinexr-bench-inference-") as tmp:
            log(f"building the bundle in {tmp}")
            bundle_dir = build_bundle(Path(tmp), args.seed)
            log(f"making {args.images} phantom images")
            studies = make_studies(Path(tmp) / "images", args.images, args.size, args.seed)
            log(f"handing the job to the worker process (pid {worker.pid}, spawned at start)")
            job = {
                "bundle_dir": bundle_dir,
                "studies": studies,
                "device": args.device,
                "threads": args.threads,
                "repeat": args.repeat,
                "bare_batch": args.bare_batch,
            }
            conn.send(job)
            job_sent = True
            try:
                status, res = conn.recv()
            except EOFError:  # killed (out of memory?) before it could answer
                worker.join()
                status, res = "error", f"the worker exited with code {worker.exitcode}"
    finally:
        if not job_sent:
            conn.send(None)
        worker.join()
    if status != "ok":
        print(f"the worker failed:\n{res}", file=sys.stderr)
        return 1
    report(res, args.images, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
