"""Turn one of our detector configs into a complete MMDetection training config.

The model part comes from ``pipeline/detector/configs/<name>.py`` unchanged; this module
replaces the COCO dataset, pipelines, schedule and hooks of mmdet's base configs with ours:

- data: `SpineXRDetDataset` (the loader's train/val split), images from the display cache;
- augmentation: horizontal flip, scale jitter (shorter side drawn from
  ``[jitter[0], jitter[1]] × shorter``, the paper's 640–800 for 800), and optionally mmdet's
  ``AutoAugment`` with a bounding-box policy (the paper's "bbox AutoAugment");
- rare classes: repeat-factor sampling (mmdet's ``ClassBalancedDataset``, LVIS rule);
- schedule: iterations, linear warm-up, learning rate ×0.1 at 60 % (the paper's 30k of 50k;
  ``lr_drop``);
- checkpoints every ``checkpoint_every`` iterations (``last_checkpoint`` for resume), the best
  by validation mAP@0.5 (`SpineXRMetric`) when validation runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spinexr.pipeline.preprocess import DETECTOR_LONGER_MAX, DETECTOR_SHORTER

#: A bounding-box AutoAugment policy in the spirit of Zoph et al.'s detection policies (one
#: sub-policy drawn per image), from transforms mmdet 3 implements for boxes.
BBOX_AUTOAUGMENT: list[list[dict[str, Any]]] = [
    [dict(type="TranslateX", prob=0.6, level=4), dict(type="Equalize", prob=0.8, level=10)],
    [dict(type="TranslateY", prob=0.2, level=2), dict(type="Contrast", prob=0.6, level=6)],
    [dict(type="ShearX", prob=0.4, level=2), dict(type="Brightness", prob=0.6, level=4)],
    [dict(type="Rotate", prob=0.6, level=2), dict(type="Sharpness", prob=0.4, level=6)],
]


@dataclass
class DetectorTrainConfig:
    """What `train_detector` needs (defaults: the paper's recipe scaled to the batch).

    Attributes
    ----------
    data : pathlib.Path
        Dataset root (VinDr-SpineXR layout).
    out : pathlib.Path
        Work folder: checkpoints, logs, the resolved config, the exported model.
    config : str
        Detector config name in ``pipeline/detector/configs`` or a path to a config file.
    iterations : int
        Training iterations (the paper: 50,000 at batch 16).
    batch_size : int
        Images per iteration.
    lr : float or None
        Base learning rate; None keeps the config's, scaled linearly from batch 16.
    scale : tuple of int
        (shorter side, longer-side bound) at inference; training jitters the shorter side.
    jitter : tuple of float
        Range of the training shorter side as fractions of ``scale[0]``.
    autoaugment : bool
        Add the bounding-box AutoAugment policy.
    oversample_thr : float
        Repeat-factor sampling threshold (0 turns it off).
    val_every : int
        Validate (mAP@0.5 on the validation split) every N iterations; 0 never.
    checkpoint_every : int
        Save a resumable checkpoint every N iterations.
    warmup : int
        Linear warm-up iterations.
    lr_drop : float
        Fraction of the iterations after which the learning rate drops ×0.1 (the paper:
        30k of 50k = 0.6).
    init : pathlib.Path or None
        Local checkpoint to start from (``load_from``): COCO-pretrained weights, say.
    resume : bool
        Continue from the last checkpoint in ``out``.
    seed : int
        Random seed (training and the validation split).
    val_fraction : float
        Validation share of the training studies (by study).
    workers : int
        Dataloader worker processes.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    cache : pathlib.Path or None
        Display-image cache folder (default ``<data>/.spinexr-cache``).
    max_side : int or None
        Longer side of cached images (default: just enough for the largest training scale).
    log_every : int
        Progress line every N iterations.
    overrides : dict
        Dotted config keys to set last (as mmdet's ``--cfg-options``).
    """

    data: Path
    out: Path
    config: str = "sparse-rcnn_r50_fpn_spinexr"
    iterations: int = 50_000
    batch_size: int = 16
    lr: float | None = None
    scale: tuple[int, int] = (DETECTOR_SHORTER, DETECTOR_LONGER_MAX)
    jitter: tuple[float, float] = (0.8, 1.0)
    autoaugment: bool = True
    oversample_thr: float = 0.1
    val_every: int = 5_000
    checkpoint_every: int = 5_000
    warmup: int = 500
    lr_drop: float = 0.6
    init: Path | None = None
    resume: bool = False
    seed: int = 0
    val_fraction: float = 0.2
    workers: int = 2
    device: str = "auto"
    cache: Path | None = None
    max_side: int | None = None
    log_every: int = 50
    overrides: dict[str, Any] = field(default_factory=dict)

    def cache_dir(self) -> Path:
        """Return the display-image cache folder."""
        return self.cache if self.cache is not None else self.data / ".spinexr-cache"

    def cache_side(self) -> int:
        """Longer side of cached images: the largest longer side training can ask for."""
        return self.max_side if self.max_side is not None else self.scale[1]


def _resize_scales(cfg: DetectorTrainConfig) -> list[tuple[int, int]]:
    shorter, longer = cfg.scale
    low, high = (round(shorter * f) for f in cfg.jitter)
    step = max(1, (high - low) // 8)
    sides = sorted({*range(low, high + 1, step), high})
    # mmdet scales are (width, height) bounds with keep_ratio: (longer bound, shorter side).
    return [(longer, s) for s in sides]


def build_training_config(cfg: DetectorTrainConfig) -> Any:
    """Return the resolved mmengine ``Config`` for a training run.

    Parameters
    ----------
    cfg : DetectorTrainConfig
        The run's settings.

    Returns
    -------
    mmengine.config.Config
        Model from the named config; data, schedule and hooks from `cfg`.

    Raises
    ------
    FileNotFoundError
        If the config name or the ``init`` checkpoint does not exist.
    ValueError
        If a setting is out of range or the config would download something.
    """
    from spinexr.pipeline.detector import check_config, detector_config_path, load_config

    if cfg.iterations < 1 or cfg.batch_size < 1:
        raise ValueError("iterations and batch size must be at least 1")
    if not 0.0 < cfg.lr_drop <= 1.0:
        raise ValueError(f"lr_drop must be in (0, 1], got {cfg.lr_drop}")
    if cfg.init is not None and not Path(cfg.init).is_file():
        raise FileNotFoundError(f"initial weights {cfg.init} do not exist (local files only)")
    source = Path(cfg.config) if cfg.config.endswith(".py") else detector_config_path(cfg.config)
    mm = load_config(source)
    cache = dict(
        type="LoadSpineDisplayImage", cache_dir=str(cfg.cache_dir()), max_side=cfg.cache_side()
    )
    shorter, longer = cfg.scale
    train_pipeline: list[dict[str, Any]] = [
        cache,
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="RandomChoiceResize", scales=_resize_scales(cfg), keep_ratio=True),
        dict(type="RandomFlip", prob=0.5),
    ]
    if cfg.autoaugment:
        train_pipeline.append(dict(type="AutoAugment", policies=BBOX_AUTOAUGMENT))
    train_pipeline += [
        dict(type="FilterAnnotations", min_gt_bbox_wh=(1, 1), keep_empty=True),
        dict(type="PackDetInputs"),
    ]
    test_pipeline = [
        cache,
        dict(type="Resize", scale=(longer, shorter), keep_ratio=True),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(
            type="PackDetInputs",
            meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
        ),
    ]
    split = dict(data_root=str(cfg.data), val_fraction=cfg.val_fraction, seed=cfg.seed)
    train_set: dict[str, Any] = dict(
        type="SpineXRDetDataset", split="train", pipeline=train_pipeline, **split
    )
    if cfg.oversample_thr > 0:
        train_set = dict(
            type="ClassBalancedDataset", oversample_thr=cfg.oversample_thr, dataset=train_set
        )
    mm.train_dataloader = dict(
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
        sampler=dict(type="InfiniteSampler", shuffle=True),
        batch_sampler=dict(type="AspectRatioBatchSampler"),
        dataset=train_set,
    )
    mm.train_cfg = dict(
        type="IterBasedTrainLoop",
        max_iters=cfg.iterations,
        val_interval=cfg.val_every if cfg.val_every > 0 else cfg.iterations + 1,
    )
    if cfg.val_every > 0:
        mm.val_dataloader = dict(
            batch_size=1,
            num_workers=min(cfg.workers, 2),
            persistent_workers=False,
            drop_last=False,
            sampler=dict(type="DefaultSampler", shuffle=False),
            dataset=dict(
                type="SpineXRDetDataset",
                split="val",
                pipeline=test_pipeline,
                test_mode=True,
                **split,
            ),
        )
        mm.val_cfg = dict(type="ValLoop")
        mm.val_evaluator = dict(type="SpineXRMetric")
    else:
        mm.val_dataloader = mm.val_cfg = mm.val_evaluator = None
    mm.test_dataloader = mm.test_cfg = mm.test_evaluator = None

    base_lr = _base_lr(mm, cfg)
    mm.optim_wrapper.optimizer.lr = base_lr
    mm.auto_scale_lr = dict(enable=False, base_batch_size=16)
    mm.param_scheduler = [
        dict(
            type="LinearLR",
            start_factor=0.001,
            by_epoch=False,
            begin=0,
            end=max(1, min(cfg.warmup, cfg.iterations // 4)),
        ),
        dict(
            type="MultiStepLR",
            by_epoch=False,
            begin=0,
            end=cfg.iterations,
            milestones=[max(1, int(cfg.iterations * cfg.lr_drop))],
            gamma=0.1,
        ),
    ]
    checkpoint: dict[str, Any] = dict(
        type="CheckpointHook",
        by_epoch=False,
        interval=cfg.checkpoint_every,
        max_keep_ckpts=2,
        save_last=True,
    )
    if cfg.val_every > 0:
        checkpoint.update(save_best="spinexr/mAP50", rule="greater")
    mm.default_hooks = dict(
        timer=dict(type="IterTimerHook"),
        logger=dict(type="LoggerHook", interval=cfg.log_every, log_metric_by_epoch=False),
        param_scheduler=dict(type="ParamSchedulerHook"),
        checkpoint=checkpoint,
        sampler_seed=dict(type="DistSamplerSeedHook"),
        visualization=dict(type="DetVisualizationHook", draw=False),
    )
    mm.log_processor = dict(type="LogProcessor", window_size=cfg.log_every, by_epoch=False)
    # mmdet's default runtime names its visualizer "visualizer"; mmengine then hands a second
    # run in the same process the first run's instance, which writes the scalars (and so the
    # validation mAP) into the first run's folder. Without a name each run gets its own
    # (named after the run's timestamp, like its log folder).
    mm.visualizer = dict(type="DetLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")])
    mm.work_dir = str(cfg.out)
    mm.load_from = str(cfg.init) if cfg.init is not None else None
    mm.resume = bool(cfg.resume)
    mm.randomness = dict(seed=cfg.seed, deterministic=False)
    mm.default_scope = "mmdet"
    mm.env_cfg = dict(
        cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork"), dist_cfg=dict(backend="nccl")
    )
    mm.launcher = "none"
    mm.spinexr = dict(
        scale=list(cfg.scale), data=str(cfg.data), seed=cfg.seed, val_fraction=cfg.val_fraction
    )
    if cfg.overrides:
        mm.merge_from_dict(dict(cfg.overrides))
    check_config(mm)
    return mm


def _base_lr(mm: Any, cfg: DetectorTrainConfig) -> float:
    """Return the run's learning rate: given, or the config's for batch 16 scaled linearly."""
    if cfg.lr is not None:
        if cfg.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {cfg.lr}")
        return cfg.lr
    return float(mm.optim_wrapper.optimizer.lr) * cfg.batch_size / 16
