"""Detector build time and per-image latency for our configs (random weights, no downloads).

Usage: ``python benchmarks/bench_detector.py [--device cpu] [--runs 3] [CONFIG ...]``.
Prints one line per config: build from config + checkpoint (what the node does), and the
median forward latency of ``Detector.predict`` on one 800×1333 image (landscape, the
largest input) and one 1250×800 image (a 2500×1600 portrait spine radiograph).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spinexr.pipeline.detector import (
    Detector,
    available_configs,
    detector_config_path,
    load_config,
    save_checkpoint,
)
from spinexr.pipeline.geometry import ResizeTransform, detector_size

ORIGINALS = {"800x1333": (1500, 2500), "1250x800": (2500, 1600)}


def image(original: tuple[int, int]) -> tuple[np.ndarray, ResizeTransform]:
    tf = ResizeTransform(original, detector_size(*original))
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, tf.resized_size, dtype=np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), tf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("configs", nargs="*", default=available_configs())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    inputs = {k: image(v) for k, v in ORIGINALS.items()}
    t0 = time.perf_counter()
    load_config(detector_config_path())  # imports mmdet and registers its modules
    print(f"first config load (imports MMDetection): {time.perf_counter() - t0:.2f} s")
    for name in args.configs:
        cfg = detector_config_path(name)
        t0 = time.perf_counter()
        random = Detector(cfg, device=args.device)
        t_random = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            ckpt, cfg_path = save_checkpoint(random.model, Path(tmp) / "d.pth", cfg)
            size_mb = ckpt.stat().st_size / 1e6
            t0 = time.perf_counter()
            det = Detector(cfg_path, ckpt, device=args.device)
            t_load = time.perf_counter() - t0
        lat = {}
        for key, (img, tf) in inputs.items():
            det.predict([img], [tf])  # warm-up
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                det.predict([img], [tf])
                if det.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            lat[key] = statistics.median(times)
        lat_text = ", ".join(f"{k} {v:.2f} s" for k, v in lat.items())
        print(
            f"{name}: build+init {t_random:.2f} s, build+load {t_load:.2f} s "
            f"({size_mb:.0f} MB checkpoint); forward {lat_text}"
        )


if __name__ == "__main__":
    main()
