"""Detector configs: finding ours by name, loading any, and refusing the unsafe ones.

Our MMDetection configs live beside this module in ``configs/`` (package data; the training
code uses them from here too). Serving loads the resolved config saved beside a bundle's
checkpoint instead (:func:`~spinexr.pipeline.detector.checkpoint.save_checkpoint`), so a
bundle needs none of these files. Nothing here downloads anything: :func:`check_config`
refuses a config that names a URL anywhere.
"""

from __future__ import annotations

import copy
import importlib.resources
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spinexr.pipeline.classes import CLASS_NAMES
from spinexr.pipeline.detector.backend import mmdetection

DEFAULT_CONFIG = "sparse-rcnn_r50_fpn_spinexr"
"""The detector the method prescribes (Sparse R-CNN R50-FPN, 100 proposals)."""

ConfigSource = Path | str | Mapping[str, Any]
"""A config file (path), or an already loaded config (a mapping or an mmengine ``Config``)."""


def config_dir() -> Path:
    """Return the folder of our MMDetection configs (``pipeline/detector/configs``)."""
    return Path(str(importlib.resources.files("spinexr.pipeline.detector").joinpath("configs")))


def available_configs() -> list[str]:
    """Return the names of the configs in :func:`config_dir` (file stems), sorted."""
    return sorted(p.stem for p in config_dir().glob("*.py"))


def detector_config_path(name: str = DEFAULT_CONFIG) -> Path:
    """Resolve one of our config names to its file.

    Parameters
    ----------
    name : str
        A file stem in :func:`config_dir`, e.g. ``"sparse-rcnn_r50_fpn_spinexr"`` (a trailing
        ``.py`` is accepted).

    Returns
    -------
    pathlib.Path
        The config file.

    Raises
    ------
    FileNotFoundError
        If there is no such config (the message lists the available ones).
    """
    stem = name.removesuffix(".py")
    path = config_dir() / f"{stem}.py"
    if "/" in stem or not path.is_file():
        raise FileNotFoundError(
            f"no detector config {name!r}; available: {', '.join(available_configs())}"
        )
    return path


def load_config(config: ConfigSource, overrides: Mapping[str, Any] | None = None) -> Any:
    """Load and resolve an MMDetection config.

    Parameters
    ----------
    config : pathlib.Path, str or mapping
        A config file (``_base_`` inheritance, ``mmdet::`` package scope and all), a plain
        mapping, or an mmengine ``Config``. Strings are file paths; use
        :func:`detector_config_path` for our config names.
    overrides : mapping, optional
        Dotted keys to set after loading, as mmdet's ``--cfg-options``, e.g.
        ``{"model.test_cfg.rcnn.score_thr": 0.3}``.

    Returns
    -------
    mmengine.config.Config
        A new, fully resolved config (the input is not modified).

    Raises
    ------
    FileNotFoundError
        If a config file does not exist.
    """
    mm = mmdetection()
    if isinstance(config, mm.Config):
        cfg = mm.Config(copy.deepcopy(config.to_dict()), filename=config.filename)
    elif isinstance(config, Mapping):
        cfg = mm.Config(copy.deepcopy(dict(config)))
    else:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"detector config {path} does not exist")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources", category=UserWarning)
            cfg = mm.Config.fromfile(str(path))
    if overrides:
        cfg.merge_from_dict(dict(overrides))
    return cfg


def find_urls(config: ConfigSource) -> list[str]:
    """Return the dotted keys of every string value in a config that contains ``://``.

    Such values (``torchvision://resnet50`` in an ``init_cfg``, an ``https://`` ``load_from``)
    make MMDetection download at build or training time; our configs have none.

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config.

    Returns
    -------
    list of str
        Keys such as ``model.backbone.init_cfg.checkpoint`` (list items as ``[i]``).
    """
    found: list[str] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list | tuple):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str) and "://" in node:
            found.append(key)

    walk(load_config(config).to_dict(), "")
    return found


def config_class_names(config: ConfigSource) -> tuple[str, ...]:
    """Return the class names a config declares in ``metainfo.classes``.

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config.

    Returns
    -------
    tuple of str
        The names, empty if the config declares none.
    """
    meta = load_config(config).get("metainfo") or {}
    return tuple(meta.get("classes") or ())


def config_num_classes(config: ConfigSource) -> set[int]:
    """Return every ``num_classes`` value under the config's ``model`` (one per head).

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config.

    Returns
    -------
    set of int
        The distinct values; a consistent config has exactly one.
    """
    values: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k == "num_classes":
                    values.add(int(v))
                walk(v)
        elif isinstance(node, list | tuple):
            for v in node:
                walk(v)

    walk(load_config(config).to_dict().get("model", {}))
    return values


def check_config(config: ConfigSource) -> None:
    """Refuse a config that could download, or whose classes are not ours.

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config.

    Raises
    ------
    ValueError
        If any value contains a URL, if ``metainfo.classes`` differs from ``CLASS_NAMES``, or
        if a head's ``num_classes`` differs from their number.
    """
    cfg = load_config(config)
    urls = find_urls(cfg)
    if urls:
        raise ValueError(f"detector config names URLs (nothing may be downloaded): {urls}")
    names = config_class_names(cfg)
    if names != CLASS_NAMES:
        raise ValueError(f"config metainfo.classes {names} differ from {CLASS_NAMES}")
    counts = config_num_classes(cfg)
    if counts != {len(CLASS_NAMES)}:
        raise ValueError(f"config heads have num_classes {sorted(counts)}, not {len(CLASS_NAMES)}")
