"""`spinexr-node bundle demo`: a working bundle trained here, on synthetic phantoms.

Nothing can be downloaded, so the demo trains from scratch: it generates a phantom dataset
(VinDr-SpineXR layout), trains one DenseNet-121 at 224 and a light RetinaNet at the phantoms'
native scale, fits c* on the validation split, evaluates on the held-out phantom test split,
trains the image check (`spinexr.training.anatomy`: spine AP / spine lateral / other, on
spine, chest and extremity phantoms), trains the vertebra keypoint model on lateral keypoint
phantoms with fractures of known Genant index and evaluates it on held-out ones
(`spinexr.training.vertebrae`: the Keypoint R-CNN light CPU configuration, the better of the
two detectors on this CPU; Pisov et al.'s detector with ``keypoint_arch="pisov"``), trains
the CT models (`spinexr.training.ct.bundle.DEMO_CT_RECIPE`: the centre-line localiser and the
keypoint model on straightened CT reformats, on CT phantoms) and evaluates the CT method end
to end on held-out CT phantoms (`spinexr.training.ct.evaluate`), trains the benign / malignant
classifier of fractured vertebrae on CT phantom patients
(`spinexr.training.ct.characterise_bundle.DEMO_CHARACTERISER`) and evaluates it end to end
with the CT models choosing the vertebra and its ROI (`spinexr.training.ct.characterise_e2e`),
and writes a bundle named and flagged as a synthetic-phantom demo (its SR, GSPS and admin
pages say "not for clinical use").

The result is cached: the bundle folder's name carries a digest of the recipe, and a folder
that verifies is reused. Each step keeps its output in the work folder and an interrupted run
continues where it stopped (phantoms are regenerated only when incomplete; both trainings
resume from their last checkpoint). A cached bundle that lacks only its CT models or its
characterisation model (built before they existed) gets them added, without training the
rest again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinexr.pipeline.bundle import Bundle, verify_bundle
from spinexr.pipeline.errors import BundleError
from spinexr.pipeline.results import FusionMode
from spinexr.training.ct.bundle import DEMO_CT_RECIPE, CtModelsRecipe
from spinexr.training.ct.characterise_bundle import DEMO_CHARACTERISER, CharacteriserBundleRecipe
from spinexr.training.detection.train import DetectorTrainResult

logger = logging.getLogger(__name__)

DEMO_NAME = "spinexr-demo-phantoms"


@dataclass(frozen=True)
class DemoRecipe:
    """Sizes and settings of the demo training (digested into the cache key).

    Attributes
    ----------
    studies : int
        Phantom studies (two images each).
    size : str
        Phantom size (``small`` = 512×384).
    test_fraction, val_fraction : float
        Held-out test studies; validation share of the rest.
    seed : int
        Seed of phantoms, splits and training.
    classifier_iterations, classifier_batch, classifier_lr : int, int, float
        DenseNet-121 training (SGD, momentum 0.9).
    detector_config : str
        Detector config in ``training/configs``.
    detector_iterations, detector_batch : int
        Detector training length.
    detector_lr : float
        Detector learning rate (AdamW).
    detector_lr_drop : float
        Fraction of the detector iterations after which its learning rate drops ×0.1.
    detector_oversample_thr : float
        Repeat-factor sampling threshold (rare phantom classes are in few images).
    detector_scale : tuple of int
        Detector input (shorter side, longer bound): the phantoms' native scale.
    fusion : str
        Fusion mode of the bundle, or ``auto``: the mode with the higher validation AUROC.
    display_threshold : float
        Lowest displayed box score.
    bootstrap : int
        Resamples of the test evaluation's CIs.
    anatomy_per_class, anatomy_val_per_class, anatomy_epochs : int
        Image check: training and held-out phantoms per class, epochs.
    anatomy_other_threshold : float
        Image check: ``other`` probability at or above which an image is not analysed.
    keypoint_arch : {"keypointrcnn", "pisov"}
        Keypoint model. Keypoint R-CNN (`spinexr.training.vertebrae.krcnn_train.DEMO_RECIPE`,
        the light CPU configuration) grades fractures after 600 steps; Pisov et al.'s
        detector (`spinexr.training.vertebrae.train.DEMO_RECIPE`) finds the vertebrae in a
        CPU budget but does not yet separate fractures (``training/README.md``).
    keypoint_images, keypoint_test_images : int
        Lateral keypoint phantoms for training and for the held-out evaluation.
    keypoint_iterations, keypoint_batch : int
        Its training length (the rest of its demo recipe as it is).
    keypoint_lr : float
        Its peak learning rate.
    """

    studies: int = 400
    size: str = "small"
    test_fraction: float = 0.25
    val_fraction: float = 0.2
    seed: int = 7
    classifier_iterations: int = 200
    classifier_batch: int = 8
    classifier_lr: float = 0.01
    detector_config: str = "retinanet_r18_fpn_demo_spinexr"
    detector_iterations: int = 1000
    detector_batch: int = 4
    detector_lr: float = 0.0014
    detector_lr_drop: float = 0.6
    detector_oversample_thr: float = 3.0
    detector_scale: tuple[int, int] = (384, 512)
    fusion: str = "auto"
    display_threshold: float = 0.3
    bootstrap: int = 10_000
    anatomy_per_class: int = 200
    anatomy_val_per_class: int = 50
    anatomy_epochs: int = 8
    anatomy_other_threshold: float = 0.5
    keypoint_arch: str = "keypointrcnn"
    keypoint_images: int = 400
    keypoint_test_images: int = 80
    keypoint_iterations: int = 600
    keypoint_batch: int = 2
    keypoint_lr: float = 4e-4

    def digest(self) -> str:
        """Short digest of the recipe (the cache key)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


DEMO_RECIPE = DemoRecipe()
"""The recipe `make serve` uses."""

QUICK_RECIPE = DemoRecipe(
    studies=12,
    test_fraction=0.34,
    val_fraction=0.3,
    classifier_iterations=3,
    classifier_batch=4,
    detector_iterations=3,
    detector_batch=2,
    bootstrap=200,
    anatomy_per_class=8,
    anatomy_val_per_class=4,
    anatomy_epochs=1,
    keypoint_images=6,
    keypoint_test_images=3,
    keypoint_iterations=2,
    keypoint_batch=2,
)
"""A recipe that runs in about a minute, for tests (the bundle works; its figures are poor)."""


def demo_identity(recipe: DemoRecipe = DEMO_RECIPE) -> str:
    """Return ``name@version`` the demo bundle of `recipe` has (the job keys' model)."""
    return f"{DEMO_NAME}@demo-{recipe.digest()}"


def default_demo_dir(recipe: DemoRecipe = DEMO_RECIPE) -> Path:
    """``$SPINEXR_CACHE`` or ``~/.cache/spinexr``, then ``demo-bundle-<recipe digest>``."""
    root = Path(os.environ.get("SPINEXR_CACHE", Path.home() / ".cache" / "spinexr"))
    return root / f"demo-bundle-{recipe.digest()}"


def cached_demo(out: Path, *, ct: bool = False, characteriser: bool = False) -> Bundle | None:
    """Return the demo bundle in `out` when it exists, verifies and is complete, else None.

    Complete: it has its image check and its keypoint model and, with ``ct``, its CT models
    and, with ``characteriser``, its benign / malignant classifier, the last things `demo`
    adds.
    """
    if not (out / "manifest.json").is_file():
        return None
    try:
        bundle = verify_bundle(out)
    except BundleError as exc:
        logger.warning("cached demo bundle in %s does not verify (%s); rebuilding", out, exc)
        return None
    complete = bundle.anatomy is not None and bundle.vertebrae is not None
    if ct and bundle.ct is None:
        return None
    if characteriser and (bundle.ct is None or bundle.ct.characteriser is None):
        return None
    return bundle if bundle.demo and complete else None


def demo(
    out: Path,
    recipe: DemoRecipe = DEMO_RECIPE,
    *,
    work: Path | None = None,
    force: bool = False,
    device: str = "auto",
    say: Callable[[str], None] | None = None,
    ct: CtModelsRecipe | None = DEMO_CT_RECIPE,
    characteriser: CharacteriserBundleRecipe | None = DEMO_CHARACTERISER,
    on_step: Callable[[int, int, str], None] | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> Bundle:
    """Build (or reuse) the demo bundle.

    Parameters
    ----------
    out : pathlib.Path
        Bundle folder.
    recipe : DemoRecipe
        Sizes and settings.
    work : pathlib.Path, optional
        Work folder (phantoms, runs, evaluation); default ``<out>.work``.
    force : bool
        Rebuild even if `out` holds a verified demo bundle.
    device : str
        Training and inference device.
    say : callable, optional
        Progress messages.
    ct : CtModelsRecipe or None
        The CT models' recipe (step 7); None leaves them out (the quick test recipe).
    characteriser : CharacteriserBundleRecipe or None
        The benign / malignant classifier's recipe (step 8, with ``ct`` only); None leaves
        it out.
    on_step : callable, optional
        ``on_step(step, steps, text)`` at the start of each step.
    on_ready : callable, optional
        ``on_ready(part)`` when the models of a part (`spinexr.pipeline.preparation.PARTS`)
        are in the bundle: ``radiograph`` after step 6, ``ct`` at the end.

    Returns
    -------
    Bundle
        The verified demo bundle.
    """
    speak = say or (lambda msg: logger.info("%s", msg))
    out = Path(out)
    work = Path(work) if work is not None else out.parent / f"{out.name}.work"
    if ct is None:
        characteriser = None
    steps = 6 + (ct is not None) + (characteriser is not None)
    started = time.monotonic()

    def step(n: int, text: str) -> None:
        speak(f"[demo] step {n}/{steps} ({time.monotonic() - started:.0f} s): {text}")
        if on_step is not None:
            on_step(n, steps, text)

    def ready(part: str) -> None:
        if on_ready is not None:
            on_ready(part)

    def last_steps(bundle: Bundle) -> Bundle:
        ready("radiograph")
        if ct is not None and bundle.ct is None:
            step(
                7,
                f"CT models: localiser ({ct.localiser.steps} steps on {ct.localiser.phantoms} "
                f"CT phantoms) and keypoints ({ct.keypoint_iterations} steps on "
                f"{ct.keypoint_phantoms} reformats), then {CT_TEST_PHANTOMS} held out",
            )
            bundle = _add_ct(out, work, ct, recipe, speak)
        if characteriser is not None and bundle.ct is not None and not bundle.ct.characteriser:
            step(
                8,
                f"benign / malignant classifier (Li et al. 2021): {characteriser.cases} CT "
                f"phantom patients, {characteriser.training.epochs} epochs, then "
                f"{characteriser.test} held out, end to end",
            )
            bundle = _add_characteriser(out, work, characteriser, speak)
        ready("ct")
        return bundle

    if not force:
        cached = cached_demo(out, ct=ct is not None, characteriser=characteriser is not None)
        if cached is not None:
            speak(f"[demo] using the cached demo bundle {out}")
            ready("radiograph")
            ready("ct")
            return cached
        partial = cached_demo(out)
        if partial is not None:
            speak(f"[demo] the cached bundle {out} lacks its last models: adding them")
            work.mkdir(parents=True, exist_ok=True)
            return last_steps(partial)
    work.mkdir(parents=True, exist_ok=True)

    data = work / "phantoms"
    step(1, f"phantom dataset, {recipe.studies} studies")
    _phantoms(data, recipe, speak)

    step(
        2,
        f"training densenet121 ({recipe.classifier_iterations} iterations) and "
        f"{recipe.detector_config} ({recipe.detector_iterations} iterations)"
        + ", one after the other",
    )
    cls_best, det_result = _train_both(data, work, recipe, device)

    step(3, "bundle: c* on the validation split")
    from spinexr.training.bundles.build import BundleSpec, build_bundle, update_metrics

    spec = BundleSpec(
        name=DEMO_NAME,
        version=f"demo-{recipe.digest()}",
        classifiers=[("densenet121", cls_best)],
        detector_checkpoint=det_result.checkpoint,
        detector_config=det_result.config,
        data=data,
        val_fraction=recipe.val_fraction,
        split_seed=recipe.seed,
        detector_scale=recipe.detector_scale,
        fusion=None if recipe.fusion == "auto" else FusionMode(recipe.fusion),
        display_threshold=recipe.display_threshold,
        demo=True,
        training_data={
            "kind": "synthetic phantoms (spinexr.training.phantoms), not patient data",
            "studies": recipe.studies,
            "seed": recipe.seed,
            "recipe": dataclasses.asdict(recipe),
            "note": "DEMO ONLY - trained in minutes on a CPU; not for clinical use",
        },
    )
    bundle = build_bundle(spec, out, device=device, force=True, say=speak)

    step(4, "evaluation on the held-out phantom test split")
    from spinexr.training.evaluation import evaluate_bundle

    result = evaluate_bundle(
        out,
        data,
        work / "evaluation",
        split="test",
        n_resamples=recipe.bootstrap,
        seed=recipe.seed,
        device=device,
        say=speak,
    )
    # The bundle's own image-level rule (the average rule when `auto` chose it), and the
    # classifier ensemble alone for comparison.
    rule = (
        "classifier + detector average"
        if bundle.fusion is FusionMode.PAPER_AVERAGE
        else "classifier ensemble"
    )
    cls = result.report["classification"][rule]
    test = {
        "images": result.report["data"]["images"],
        "image_rule": rule,
        "classifier_auroc": result.report["classification"]["classifier ensemble"]["auroc"][
            "value"
        ],
        "auroc": cls["auroc"]["value"],
        "auroc_ci95": cls["auroc"]["ci95"],
        "sensitivity": cls["sensitivity"]["value"],
        "specificity": cls["specificity"]["value"],
        "f1": cls["f1"]["value"],
        "map50_detector": result.report["detection"]["detector_only"]["map50"],
        "map50_fusion": result.report["detection"]["with_fusion"]["map50"],
    }
    bundle = update_metrics(out, {"test_phantoms": test})
    shutil.copyfile(result.files["markdown"], work / "evaluation.md")

    step(5, f"image check (spine AP / spine lateral / other), {recipe.anatomy_epochs} epochs")
    bundle = _add_anatomy(out, work, recipe, device, speak)

    step(
        6,
        f"vertebral keypoints ({recipe.keypoint_arch}): {recipe.keypoint_images} lateral phantoms, "
        f"{recipe.keypoint_iterations} iterations, then {recipe.keypoint_test_images} held out",
    )
    bundle = last_steps(_add_vertebrae(out, work, recipe, device, speak))
    speak(f"[demo] done in {time.monotonic() - started:.0f} s: {out}")
    speak(result.markdown)
    return bundle


def _train_both(
    data: Path, work: Path, recipe: DemoRecipe, device: str
) -> tuple[Path, DetectorTrainResult]:
    """Train the classifier, then the detector, each with every thread.

    Measured on 2 cores: DenseNet-121 gives 4.8 images/s with 2 threads alone but 2.5 with
    1 thread beside the detector; the light RetinaNet 1.3 s per iteration alone but 2.5
    beside the classifier. One after the other is faster than side by side.
    """
    return _train_classifier(data, work, recipe, device), _train_detector(
        data, work, recipe, device
    )


def _train_classifier(data: Path, work: Path, recipe: DemoRecipe, device: str) -> Path:
    from spinexr.training.classifier import ClassifierTrainConfig, train_classifier

    _logging_to_stderr()
    out = work / "classifier"
    config = ClassifierTrainConfig(
        data=data,
        out=out,
        arch="densenet121",
        iterations=recipe.classifier_iterations,
        batch_size=recipe.classifier_batch,
        lr=recipe.classifier_lr,
        seed=recipe.seed,
        val_fraction=recipe.val_fraction,
        eval_every=max(1, recipe.classifier_iterations // 5),
        workers=0,
        device=device,
        resume=(out / "last.pt").is_file(),
    )
    return Path(train_classifier(config).best_path)


def _train_detector(data: Path, work: Path, recipe: DemoRecipe, device: str) -> DetectorTrainResult:
    from spinexr.training.detection import DetectorTrainConfig, train_detector

    _logging_to_stderr()
    out = work / "detector"
    return train_detector(
        DetectorTrainConfig(
            data=data,
            out=out,
            config=recipe.detector_config,
            iterations=recipe.detector_iterations,
            batch_size=recipe.detector_batch,
            lr=recipe.detector_lr,
            scale=recipe.detector_scale,
            autoaugment=False,
            oversample_thr=recipe.detector_oversample_thr,
            val_every=max(1, recipe.detector_iterations // 4),
            checkpoint_every=max(1, recipe.detector_iterations // 8),
            warmup=min(50, recipe.detector_iterations // 4),
            lr_drop=recipe.detector_lr_drop,
            seed=recipe.seed,
            val_fraction=recipe.val_fraction,
            workers=0,
            device=device,
            log_every=max(1, min(20, recipe.detector_iterations // 10)),
            resume=(out / "last_checkpoint").is_file(),
        ),
        progress=lambda msg: logger.info("%s", msg),
    )


def _add_anatomy(
    out: Path, work: Path, recipe: DemoRecipe, device: str, speak: Callable[[str], None]
) -> Bundle:
    """Train the image check on phantoms and write it into the bundle's manifest."""
    from spinexr.training.anatomy import AnatomyTrainConfig, add_anatomy_to_bundle, train_anatomy

    result = train_anatomy(
        AnatomyTrainConfig(
            per_class=recipe.anatomy_per_class,
            val_per_class=recipe.anatomy_val_per_class,
            epochs=recipe.anatomy_epochs,
            seed=recipe.seed,
            other_threshold=recipe.anatomy_other_threshold,
        ),
        work / "anatomy",
        device=device,
        say=speak,
    )
    return add_anatomy_to_bundle(out, result.weights, result.other_threshold, result.metrics)


def _add_vertebrae(
    out: Path, work: Path, recipe: DemoRecipe, device: str, speak: Callable[[str], None]
) -> Bundle:
    """Train the keypoint model on lateral phantoms, evaluate it, write it into the bundle."""
    from spinexr.pipeline.vertebrae.loader import load_keypoint_model
    from spinexr.training.vertebrae.bundle import add_vertebrae_to_bundle
    from spinexr.training.vertebrae.evaluate import evaluate_keypoints
    from spinexr.training.vertebrae.phantoms import generate_keypoint_records

    t = time.monotonic()
    train = generate_keypoint_records(recipe.keypoint_images, recipe.seed, test_fraction=0.0)
    # Held out: another seed (every image is new), evaluated as a whole.
    test = generate_keypoint_records(
        recipe.keypoint_test_images, recipe.seed + 1000, test_fraction=0.0
    )
    speak(f"[demo] {len(train) + len(test)} keypoint phantoms in {time.monotonic() - t:.0f} s")
    arch = recipe.keypoint_arch
    checkpoint = _train_keypoints(train, work / "vertebrae", recipe, device)
    model = load_keypoint_model(arch, checkpoint, "cpu" if device == "auto" else device)
    report = evaluate_keypoints(
        {arch: model},
        test,
        work / "vertebrae-evaluation",
        seed=recipe.seed,
        n_bootstrap=min(recipe.bootstrap, 1000),
    )
    summary = _keypoint_summary(report["models"][arch], len(test))
    shown = ", ".join(
        f"{name} {summary[key]:.3f}" if isinstance(summary[key], int | float) else f"{name} n/a"
        for name, key in (
            ("recall", "recall"),
            ("precision", "precision"),
            ("centre error mm", "centre_error_mm"),
            ("height MAE mm", "height_mae_mm"),
            ("AUC >= moderate per patient", "auroc_patient_moderate"),
        )
    )
    speak(f"[demo] keypoints ({arch}) on {len(test)} held-out phantoms: {shown}")
    return add_vertebrae_to_bundle(out, checkpoint, arch, {"test_phantoms": summary})


CT_TEST_PHANTOMS = 30
"""Held-out CT phantoms the demo evaluates the CT method on."""


def _add_ct(
    out: Path,
    work: Path,
    ct: CtModelsRecipe,
    recipe: DemoRecipe,
    speak: Callable[[str], None],
) -> Bundle:
    """Train the CT models, evaluate the CT method end to end, write them into the bundle."""
    import numpy as np

    from spinexr.pipeline.ct.localise import load_localiser
    from spinexr.pipeline.vertebrae.loader import load_keypoint_model
    from spinexr.training.ct.bundle import add_ct_to_bundle, train_ct_models
    from spinexr.training.ct.evaluate import evaluate_ct
    from spinexr.training.ct.keypoints import HELD_OUT_SEED_OFFSET
    from spinexr.training.phantoms.ct import make_ct_phantom

    work.mkdir(parents=True, exist_ok=True)
    trained = train_ct_models(work / "ct", ct)
    localiser, _ = load_localiser(trained.localiser)
    model = load_keypoint_model("keypointrcnn", trained.keypoints, "cpu")
    children = np.random.SeedSequence(ct.keypoint_seed + HELD_OUT_SEED_OFFSET).spawn(
        CT_TEST_PHANTOMS
    )
    phantoms = [make_ct_phantom(c.spawn(2)[0], size="small") for c in children]
    report = evaluate_ct(
        localiser,
        model,
        phantoms,
        work / "ct-evaluation",
        seed=recipe.seed,
        n_bootstrap=min(recipe.bootstrap, 1000),
    )
    summary = _keypoint_summary(report["models"]["ct"], len(phantoms))
    summary["seconds_per_phantom"] = report["seconds_per_step"]
    summary["training_seconds"] = trained.seconds
    speak(
        f"[demo] CT method on {len(phantoms)} held-out CT phantoms: "
        + ", ".join(
            f"{name} {summary[key]:.3f}"
            for name, key in (
                ("recall", "recall"),
                ("precision", "precision"),
                ("centre error mm", "centre_error_mm"),
                ("AUC >= moderate per patient", "auroc_patient_moderate"),
            )
            if isinstance(summary.get(key), int | float)
        )
    )
    return add_ct_to_bundle(
        out,
        trained.localiser,
        trained.keypoints,
        {"test_phantoms": summary, "recipe": ct.describe()},
    )


CHARACTERISER_TEST_PATIENTS = 60
"""Held-out CT phantom patients the demo evaluates the characterisation on, end to end."""


def _add_characteriser(
    out: Path, work: Path, recipe: CharacteriserBundleRecipe, speak: Callable[[str], None]
) -> Bundle:
    """Train the classifier, evaluate it end to end with the bundle's CT models, add it."""
    from spinexr.pipeline.ct.characterise import load_characteriser
    from spinexr.pipeline.ct.localise import load_localiser
    from spinexr.pipeline.vertebrae.loader import load_keypoint_model
    from spinexr.training.ct.characterise_bundle import (
        add_characteriser_to_bundle,
        patient_figures,
        shown,
        train_characteriser_for_bundle,
    )
    from spinexr.training.ct.characterise_e2e import evaluate_end_to_end
    from spinexr.training.ct.characterise_train import case_seeds

    bundle = verify_bundle(out)
    assert bundle.ct is not None and bundle.ct_localiser and bundle.ct_keypoint_checkpoint
    trained = train_characteriser_for_bundle(work / "characteriser", recipe)
    model, _ = load_characteriser(trained.checkpoint)
    localiser, _ = load_localiser(bundle.ct_localiser)
    keypoints = load_keypoint_model(bundle.ct.keypoint_model, bundle.ct_keypoint_checkpoint, "cpu")
    report = evaluate_end_to_end(
        model,
        localiser,
        keypoints,
        case_seeds(CHARACTERISER_TEST_PATIENTS, recipe.seed + 1_000),
        score_threshold=bundle.ct.score_threshold,
    )
    (work / "characteriser" / "end-to-end.json").write_text(json.dumps(report, indent=2))
    automatic = patient_figures(report["automatic"])
    automatic |= {k: v for k, v in report["coverage"].items() if k != "patients"}
    automatic["where_called"] = patient_figures(report["automatic_where_called"])
    speak(
        f"[demo] benign / malignant on {automatic['patients']} held-out CT phantom patients, "
        f"end to end: accuracy {shown(automatic['accuracy'])}, ROC AUC "
        f"{shown(automatic['auroc'])}, characterised at the fractured vertebra "
        f"{shown(automatic['right_vertebra'])} (accuracy there "
        f"{shown(automatic['where_called'].get('accuracy'))})"
    )
    metrics = {**trained.metrics, "test_phantoms_end_to_end": automatic}
    return add_characteriser_to_bundle(out, trained.checkpoint, metrics)


def _train_keypoints(records: list[Any], run: Path, recipe: DemoRecipe, device: str) -> Path:
    """Train the recipe's keypoint model; return its checkpoint."""
    if recipe.keypoint_arch == "pisov":
        from spinexr.training.vertebrae.train import DEMO_RECIPE as PISOV_DEMO
        from spinexr.training.vertebrae.train import train_pisov

        return train_pisov(
            records,
            run,
            seed=recipe.seed,
            iterations=recipe.keypoint_iterations,
            batch_size=recipe.keypoint_batch,
            lr=recipe.keypoint_lr,
            device=device,
            recipe=PISOV_DEMO,
        )
    if recipe.keypoint_arch == "keypointrcnn":
        from spinexr.training.vertebrae.krcnn_train import DEMO_RECIPE as KRCNN_DEMO
        from spinexr.training.vertebrae.krcnn_train import train_keypointrcnn

        return train_keypointrcnn(
            records,
            run,
            seed=recipe.seed,
            iterations=recipe.keypoint_iterations,
            batch_size=recipe.keypoint_batch,
            lr=recipe.keypoint_lr,
            device=device,
            config=KRCNN_DEMO.config,
            threads=KRCNN_DEMO.threads,
        )
    raise ValueError(f"unknown keypoint model {recipe.keypoint_arch!r}")


def _keypoint_summary(m: dict[str, Any], images: int) -> dict[str, Any]:
    """Return the held-out figures for the manifest (the full report is in the work folder)."""

    def value(*path: str) -> Any:
        node: Any = m
        for key in path:
            if node is None:  # e.g. no level naming on CT
                return None
            node = node[key]
        return node["value"] if isinstance(node, dict) and "value" in node else node

    return {
        "images": images,
        "recall": value("detection", "recall"),
        "precision": value("detection", "precision"),
        "centre_error_mm": value("localisation", "centre_error_mm"),
        "height_mae_mm": value("height_mae_mm", "overall"),
        "auroc_patient_moderate": value("fractures", "at_least_moderate", "patient", "auroc"),
        "auroc_vertebra_moderate": value("fractures", "at_least_moderate", "vertebra", "auroc"),
        "auroc_patient_mild": value("fractures", "at_least_mild", "patient", "auroc"),
        "grade_accuracy": value("grades", "accuracy"),
        "level_accuracy": value("levels", "accuracy"),
        "seconds_per_image": m["seconds_per_image"],
    }


def _logging_to_stderr() -> None:
    """INFO progress lines (loss, rate, ETA) to stderr unless the caller set up logging."""
    from spinexr.node.logs import configure_logging

    if not logging.getLogger().handlers:
        configure_logging("INFO")


def _phantoms(data: Path, recipe: DemoRecipe, speak: Callable[[str], None]) -> None:
    """Generate the phantom dataset unless a complete one is there."""
    from spinexr.training.phantoms import generate_dataset

    marker = data / ".complete.json"
    expected: dict[str, Any] = {
        "studies": recipe.studies,
        "size": recipe.size,
        "seed": recipe.seed,
        "test_fraction": recipe.test_fraction,
    }
    if marker.is_file() and json.loads(marker.read_text()) == expected:
        speak(f"[demo] phantoms already in {data}")
        return
    shutil.rmtree(data, ignore_errors=True)
    summary = generate_dataset(
        data,
        recipe.studies,
        recipe.seed,
        size=recipe.size,  # type: ignore[arg-type]
        test_fraction=recipe.test_fraction,
        progress=True,
    )
    marker.write_text(json.dumps(expected))
    speak(f"[demo] {summary.total_images} phantom images in {summary.seconds:.0f} s")
