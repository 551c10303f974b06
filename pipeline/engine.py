"""The inference pipeline: DICOM datasets of one study → `StudyResult`.

A `Pipeline` is built once per process from a verified `Bundle`; it loads the classifier
ensemble and the detector once and keeps them warm. `Pipeline.analyze_study` processes the
images in chunks (bounded memory): preprocess each image, one batched forward per classifier
member, the detector on the chunk, then the fusion rule per image. An image that cannot be
analysed (a `UnsupportedImageError`) gets an `ImageResult` with the reason and the rest of
the study proceeds; other exceptions (out of memory, a broken model) propagate to the caller,
which decides whether to retry the job.

Before the lesion models, the spine check (`spinexr.pipeline.anatomy.spine_gate`, on unless
``spine_check=False``) keeps other body parts out: an image whose header names another part,
or whose header says nothing and which the bundle's anatomy model scores ``other`` at or
above its threshold, gets an `ImageResult` with reason ``not_spine`` ("not a spine image")
and its scores. The provenance says which check ran (`SpineCheck`).

The detector adapter (`spinexr.pipeline.detector`, the only module that imports MMDetection)
is imported lazily, when a pipeline is built without an injected detector.

After the lesion models, every analysed image goes through the vertebral fracture stage
(`spinexr.pipeline.vertebrae.stage`, when the bundle has a keypoint model or one is
injected): lateral views get six keypoints per vertebra, heights and Genant grades; other
views say why they were not analysed for fractures. Images whose header names no view are
shown to the bundle's anatomy model, whose lateral/AP scores decide.

A study's CT images are not decoded with the radiographs: `Pipeline.analyze` takes their
files and hands them to the CT stage (`spinexr.pipeline.ct.stage`, when the bundle has CT
models or they are injected), which chooses one series, builds its volume within a memory
bound and grades its vertebrae; the result's ``ct`` says what it found or why not, and the
reformat it read comes back beside the result for the derived-image outputs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pydicom
import torch
from pydicom.dataset import Dataset

from spinexr.pipeline.anatomy import AnatomyClass, AnatomyClassifier, GateDecision, spine_gate
from spinexr.pipeline.bodypart import TagAnatomy, dataset_tag_verdict
from spinexr.pipeline.bundle import Bundle, CtEntry, verify_bundle
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.classifier import ClassifierEnsemble, images_to_batch
from spinexr.pipeline.ct.characterise import MalignancyNet
from spinexr.pipeline.ct.localise import LocaliserNet
from spinexr.pipeline.ct.stage import CtOutcome, CtReformat, CtStage
from spinexr.pipeline.decoding import use_decoding_threads
from spinexr.pipeline.devices import resolve_device
from spinexr.pipeline.errors import ImageRefusal, UnsupportedImageError
from spinexr.pipeline.fusion import fuse_image, summarise_study
from spinexr.pipeline.geometry import ResizeTransform
from spinexr.pipeline.preprocess import MIN_SIZE, PreparedImage, prepare_image
from spinexr.pipeline.results import (
    Box,
    ImageError,
    ImageResult,
    Outcome,
    Provenance,
    SpineCheck,
    StudyResult,
)
from spinexr.pipeline.vertebrae.findings import VertebralAnalysis
from spinexr.pipeline.vertebrae.genant import DEFAULT_CUTOFFS, GenantCutoffs, GenantGrade
from spinexr.pipeline.vertebrae.objects import KeypointModel
from spinexr.pipeline.vertebrae.stage import VertebralStage
from spinexr.pipeline.vertebrae.view import View, view_from_header

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 8
"""Images decoded and held in memory at once."""


class DetectionsLike(Protocol):
    """What a detector returns per image (`spinexr.pipeline.detector.Detections`)."""

    @property
    def boxes(self) -> npt.NDArray[Any]:
        """``(N, 4)`` xyxy in original pixels."""
        ...

    @property
    def labels(self) -> npt.NDArray[Any]:
        """``(N,)`` class ids."""
        ...

    @property
    def scores(self) -> npt.NDArray[Any]:
        """``(N,)`` scores in [0, 1]."""
        ...


class DetectorLike(Protocol):
    """The interface of `spinexr.pipeline.detector.Detector` that the pipeline uses."""

    def predict(
        self, images: Sequence[np.ndarray], transforms: Sequence[ResizeTransform]
    ) -> Sequence[DetectionsLike]:
        """Detect on HxWx3 ``uint8`` detector inputs; boxes in original pixels."""
        ...


@dataclass(frozen=True)
class StudyAnalysis:
    """What `Pipeline.analyze` returns: the result, and the CT reformat it was read on.

    Attributes
    ----------
    result : StudyResult
        The typed, serialisable result.
    ct_reformat : CtReformat or None
        The straightened mid-sagittal image of the CT series analysed (for the Secondary
        Capture and its GSPS); None without an analysed CT series.
    """

    result: StudyResult
    ct_reformat: CtReformat | None = None


class Pipeline:
    """Classifier ensemble + detector + fusion, loaded once.

    Parameters
    ----------
    bundle : Bundle
        A verified bundle (`verify_bundle`).
    device : str
        ``"auto"`` (GPU if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    detector : DetectorLike, optional
        A detector to use instead of building the bundle's (tests, or a shared instance).
    classifier : ClassifierEnsemble, optional
        An ensemble to use instead of loading the bundle's weights.
    chunk_size : int
        Images held in memory at once.
    min_size : int
        Smallest accepted number of rows and of columns.
    display_threshold : float, optional
        Site override of the bundle's display threshold.
    max_detections : int
        Boxes per image kept by the detector.
    spine_check : bool
        Keep images that are not spine radiographs out (header, then the bundle's anatomy
        model); False analyses every image (a site with ``study.body_parts = "any"``).
    anatomy : AnatomyClassifier, optional
        An anatomy model to use instead of the bundle's (tests).
    keypoints : KeypointModel, optional
        A vertebra keypoint model to use instead of the bundle's (tests).
    vertebrae : bool
        Run the vertebral fracture stage (when a keypoint model is available).
    genant_cutoffs : genant.GenantCutoffs, optional
        Site override of the grade bounds.
    ct : bool
        Analyse CT series (when the bundle has CT models or they are injected).
    ct_localiser : LocaliserNet, optional
        A CT localiser to use instead of the bundle's (tests).
    ct_keypoints : KeypointModel, optional
        A CT keypoint model to use instead of the bundle's (tests).
    ct_body_parts : collection of str, optional
        Body Part Examined values a CT series may have (the selection's default otherwise).
    characterise_from : GenantGrade
        The lowest grade that triggers the benign / malignant characterisation (bundles with
        a characterisation model).
    characterise_all : bool
        Characterise every vertebra at or above it, not only the worst.
    characteriser : MalignancyNet, optional
        A characterisation model to use instead of the bundle's (tests).
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str = "auto",
        detector: DetectorLike | None = None,
        classifier: ClassifierEnsemble | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        min_size: int = MIN_SIZE,
        display_threshold: float | None = None,
        max_detections: int = 100,
        spine_check: bool = True,
        anatomy: AnatomyClassifier | None = None,
        keypoints: KeypointModel | None = None,
        vertebrae: bool = True,
        genant_cutoffs: GenantCutoffs | None = None,
        ct: bool = True,
        ct_localiser: LocaliserNet | None = None,
        ct_keypoints: KeypointModel | None = None,
        ct_body_parts: Sequence[str] | None = None,
        characterise_from: GenantGrade = GenantGrade.MILD,
        characterise_all: bool = False,
        characteriser: MalignancyNet | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
        if display_threshold is not None and not 0.0 <= display_threshold <= 1.0:
            raise ValueError(f"display_threshold must be in [0, 1], got {display_threshold}")
        self.bundle = bundle
        self.device = resolve_device(device)
        use_decoding_threads(torch.get_num_threads())  # JPEG 2000 decoding as inference
        self.chunk_size = chunk_size
        self.min_size = min_size
        self.threshold = bundle.threshold
        self.display_threshold = (
            bundle.display_threshold if display_threshold is None else display_threshold
        )
        self.fusion_mode = bundle.fusion
        start = time.perf_counter()
        if classifier is None:
            classifier = ClassifierEnsemble.from_files(bundle.classifier_weights, self.device)
        self.classifier = classifier.to(self.device).eval()
        self.detector = detector if detector is not None else self._build_detector(max_detections)
        self.anatomy: AnatomyClassifier | None = None
        if spine_check:
            self.anatomy = anatomy if anatomy is not None else self._build_anatomy()
        self.vertebral: VertebralStage | None = None
        if vertebrae:
            self.vertebral = self._build_vertebral(keypoints, genant_cutoffs or DEFAULT_CUTOFFS)
            if self.anatomy is None and self.vertebral is not None:
                # The view decision needs the image model even where the spine check is off.
                self.anatomy = anatomy if anatomy is not None else self._build_anatomy()
        self.ct_stage = self._build_ct(
            ct,
            ct_localiser,
            ct_keypoints,
            genant_cutoffs or DEFAULT_CUTOFFS,
            ct_body_parts,
        )
        if ct and self.ct_stage.keypoints is not None:
            if characteriser is None and self.bundle.ct_characteriser is not None:
                from spinexr.pipeline.ct.characterise import load_characteriser

                characteriser = load_characteriser(self.bundle.ct_characteriser, self.device)[0]
            if characteriser is not None:
                entry = self.bundle.ct
                self.ct_stage = dataclasses.replace(
                    self.ct_stage,
                    characteriser=characteriser,
                    characterise_from=characterise_from,
                    characterise_all=characterise_all,
                    malignancy_threshold=0.5 if entry is None else entry.malignancy_threshold,
                    characteriser_trained_on=_trained_on(entry),
                    model_name=f"{self.ct_stage.model_name} + li2021-resnet50",
                )
        self.spine_check = (
            SpineCheck.OFF
            if not spine_check
            else SpineCheck.TAGS_ONLY
            if self.anatomy is None
            else SpineCheck.TAGS_AND_IMAGE
        )
        logger.info(
            "pipeline ready: bundle %s %s on %s in %.1f s (spine check: %s)",
            bundle.name,
            bundle.version,
            self.device,
            time.perf_counter() - start,
            self.spine_check,
        )

    @classmethod
    def from_directory(cls, directory: Path, **kwargs: Any) -> Pipeline:
        """Verify the bundle in `directory` and build a pipeline from it.

        Parameters
        ----------
        directory : pathlib.Path
            The bundle folder.
        **kwargs
            Passed to `Pipeline`.

        Returns
        -------
        Pipeline
            Ready to analyse studies.
        """
        return cls(verify_bundle(directory), **kwargs)

    def _build_detector(self, max_detections: int) -> DetectorLike:
        from spinexr.pipeline.detector import Detector  # imports MMDetection on first use

        return Detector(
            self.bundle.detector_config,
            self.bundle.detector_checkpoint,
            device=str(self.device),
            max_detections=max_detections,
        )

    def _build_anatomy(self) -> AnatomyClassifier | None:
        entry, weights = self.bundle.anatomy, self.bundle.anatomy_weights
        if entry is None or weights is None:
            return None
        return AnatomyClassifier.from_file(weights, entry.other_threshold, self.device)

    def _build_vertebral(
        self, keypoints: KeypointModel | None, cutoffs: GenantCutoffs
    ) -> VertebralStage | None:
        entry, checkpoint = self.bundle.vertebrae, self.bundle.vertebrae_checkpoint
        if keypoints is None and (entry is None or checkpoint is None):
            return None
        if keypoints is None and entry is not None and checkpoint is not None:
            from spinexr.pipeline.vertebrae.loader import load_keypoint_model

            keypoints = load_keypoint_model(entry.model, checkpoint, self.device)
        return VertebralStage(
            model=keypoints,
            score_threshold=0.5 if entry is None else entry.score_threshold,
            sacrum_threshold=0.5 if entry is None else entry.sacrum_threshold,
            cutoffs=cutoffs,
        )

    def _build_ct(
        self,
        enabled: bool,
        localiser: LocaliserNet | None,
        keypoints: KeypointModel | None,
        cutoffs: GenantCutoffs,
        body_parts: Sequence[str] | None,
    ) -> CtStage:
        """Build the CT stage from the bundle's CT models (or injected ones); none: "no model"."""
        entry = self.bundle.ct
        names = []
        if enabled and entry is not None:
            if localiser is None and self.bundle.ct_localiser is not None:
                from spinexr.pipeline.ct.localise import load_localiser

                localiser = load_localiser(self.bundle.ct_localiser)[0].to(self.device)
            if keypoints is None and self.bundle.ct_keypoint_checkpoint is not None:
                from spinexr.pipeline.vertebrae.loader import load_keypoint_model

                keypoints = load_keypoint_model(
                    entry.keypoint_model, self.bundle.ct_keypoint_checkpoint, self.device
                )
        if not enabled:
            localiser = keypoints = None
        if localiser is not None:
            names.append("ct-localiser")
        if keypoints is not None:
            names.append(keypoints.name)
        extra: dict[str, Any] = {}
        if body_parts is not None:
            extra["allowed_body_parts"] = tuple(body_parts)
        return CtStage(
            localiser=localiser,
            keypoints=keypoints,
            model_name=" + ".join(names),
            cutoffs=cutoffs,
            score_threshold=0.5 if entry is None else entry.score_threshold,
            device=self.device,
            **extra,
        )

    @property
    def provenance(self) -> Provenance:
        """Bundle identity, software version and device, as written into results."""
        return Provenance(
            bundle_name=self.bundle.name,
            bundle_version=self.bundle.version,
            device_uid=self.bundle.device_uid,
            weights_digest=self.bundle.weights_digest,
            demo=self.bundle.demo,
            software_version=_software_version(),
            torch_device=str(self.device),
            spine_check=self.spine_check,
        )

    def warm_up(self) -> None:
        """Run the models once on a blank image so the first study is not slowed down."""
        transform = ResizeTransform((256, 256), (800, 800))
        if self.anatomy is not None:
            self.anatomy.predict([np.zeros((256, 256), np.uint8)])
        with torch.inference_mode():
            self.classifier.predict(images_to_batch([np.zeros((224, 224, 3), np.uint8)]))
            self.detector.predict([np.zeros((800, 800, 3), np.uint8)], [transform])

    def analyze_study(
        self, datasets: Sequence[Dataset], *, study_instance_uid: str | None = None
    ) -> StudyResult:
        """Analyse the radiographs of one study (`analyze` without CT files).

        Parameters
        ----------
        datasets : sequence of pydicom.dataset.Dataset
            The study's images (with file meta); order is kept in the result.
        study_instance_uid : str, optional
            Defaults to the datasets' Study Instance UID.

        Returns
        -------
        StudyResult
            As `analyze` returns it.
        """
        return self.analyze(datasets, study_instance_uid=study_instance_uid).result

    def analyze(
        self,
        datasets: Sequence[Dataset],
        *,
        ct_files: Sequence[Path] = (),
        study_instance_uid: str | None = None,
    ) -> StudyAnalysis:
        """Analyse the images of one study: radiographs as datasets, CT images as files.

        Parameters
        ----------
        datasets : sequence of pydicom.dataset.Dataset
            The study's radiographs (with file meta); order is kept in the result.
        ct_files : sequence of pathlib.Path
            The study's CT files (every series; the CT stage reads and chooses).
        study_instance_uid : str, optional
            Defaults to the datasets' (or the CT files') Study Instance UID.

        Returns
        -------
        StudyAnalysis
            The result (per-image results, the CT analysis, the study-level conclusion,
            provenance and timings; ``FAILED`` with the reasons when nothing could be
            analysed) and the CT reformat.
        """
        start = time.perf_counter()
        study_uid = study_instance_uid or _study_uid(datasets) or _ct_study_uid(ct_files)
        timings: defaultdict[str, float] = defaultdict(float)
        results: list[ImageResult] = []
        with torch.inference_mode():
            for first in range(0, len(datasets), self.chunk_size):
                chunk = datasets[first : first + self.chunk_size]
                results.extend(self._analyze_chunk(chunk, timings))
        ct: CtOutcome | None = None
        if ct_files:
            t = time.perf_counter()
            with torch.inference_mode():
                ct = self.ct_stage.analyse(ct_files)
            timings["ct"] = time.perf_counter() - t
        ct_analysis = None if ct is None else ct.analysis
        t = time.perf_counter()
        summary = summarise_study(results, self.threshold, ct_analysis)
        timings["fusion"] += time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        result = StudyResult(
            study_instance_uid=study_uid,
            outcome=summary.outcome,
            failure_reason=summary.failure_reason,
            probability=summary.probability,
            decision=summary.decision,
            threshold=self.threshold,
            display_threshold=self.display_threshold,
            fusion_mode=self.fusion_mode,
            flagged_classes=summary.flagged_classes,
            images=results,
            ct=ct_analysis,
            provenance=self.provenance,
            timings=dict(timings),
            analysed_at=dt.datetime.now(dt.UTC),
        )
        logger.info(
            "study %s: %s (%d/%d images analysed, p=%s) in %.2f s",
            study_uid,
            result.outcome,
            len(result.analysed_images),
            len(results),
            "n/a" if result.probability is None else f"{result.probability:.3f}",
            timings["total"],
        )
        if result.outcome is Outcome.FAILED:
            logger.warning("study %s failed: %s", study_uid, result.failure_reason)
        return StudyAnalysis(result, None if ct is None else ct.reformat)

    def _analyze_chunk(
        self, datasets: Sequence[Dataset], timings: defaultdict[str, float]
    ) -> list[ImageResult]:
        """Analyse up to `chunk_size` images; results in input order."""
        out: list[ImageResult | None] = [None] * len(datasets)
        prepared: list[tuple[int, PreparedImage, float]] = []
        unknown: list[int] = []
        for i, ds in enumerate(datasets):
            t = time.perf_counter()
            anatomy = TagAnatomy.SPINE
            if self.spine_check is not SpineCheck.OFF:
                verdict = dataset_tag_verdict(ds)
                anatomy = verdict.anatomy
                if anatomy is TagAnatomy.OTHER:
                    decision = spine_gate(verdict, None, None)
                    out[i] = _not_spine_result(ds, None, decision, time.perf_counter() - t)
                    logger.info("image %s not analysed: not a spine image", _sop_uid(ds))
                    continue
            try:
                image = prepare_image(
                    ds, min_size=self.min_size, detector_scale=self.bundle.detector_scale
                )
            except UnsupportedImageError as exc:
                seconds = time.perf_counter() - t
                logger.warning("image %s not analysed: %s", _sop_uid(ds), exc)
                out[i] = _failed_result(ds, exc, seconds)
                timings["preprocess"] += seconds
                continue
            seconds = time.perf_counter() - t
            timings["preprocess"] += seconds
            if anatomy is TagAnatomy.UNKNOWN:
                unknown.append(len(prepared))
            prepared.append((i, image, seconds))
        scores = self._check_unknown(datasets, prepared, unknown, out, timings)
        prepared = [p for p in prepared if out[p[0]] is None]
        scores |= self._score_views(datasets, prepared, scores, timings)
        if prepared:
            n = len(prepared)
            images = [p for _, p, _ in prepared]
            ensemble = self.classifier.predict(
                images_to_batch([p.classifier_input for p in images])
            )
            for arch, s in ensemble.seconds.items():
                timings[f"classifier.{arch}"] += s
            t = time.perf_counter()
            detections = list(
                self.detector.predict(
                    [p.detector_input for p in images], [p.detector_transform for p in images]
                )
            )
            _synchronize(self.device)
            detector_seconds = time.perf_counter() - t
            timings["detector"] += detector_seconds
            if len(detections) != n:
                raise RuntimeError(f"detector returned {len(detections)} results for {n} images")
            for k, ((i, image, pre_s), dets) in enumerate(zip(prepared, detections, strict=True)):
                t = time.perf_counter()
                p = float(ensemble.probability[k])
                fused = fuse_image(
                    p,
                    boxes_from_detections(dets, image.original_size),
                    threshold=self.threshold,
                    display_threshold=self.display_threshold,
                    mode=self.fusion_mode,
                )
                fusion_seconds = time.perf_counter() - t
                timings["fusion"] += fusion_seconds
                image_timings = {"preprocess": pre_s, "detector": detector_seconds / n}
                image_timings |= {f"classifier.{a}": s / n for a, s in ensemble.seconds.items()}
                image_timings["fusion"] = fusion_seconds
                t = time.perf_counter()
                vertebral = self._analyse_vertebrae(datasets[i], image, scores.get(i, {}))
                if vertebral is not None:
                    image_timings["vertebrae"] = time.perf_counter() - t
                    timings["vertebrae"] += image_timings["vertebrae"]
                spacing = image.pixel_spacing
                out[i] = ImageResult(
                    sop_instance_uid=image.sop_instance_uid,
                    series_instance_uid=image.series_instance_uid,
                    rows=image.original_size[0],
                    columns=image.original_size[1],
                    photometric=image.photometric,
                    pixel_spacing_basis=spacing.basis,
                    pixel_spacing_mm=(
                        None
                        if spacing.row_mm is None or spacing.column_mm is None
                        else (spacing.row_mm, spacing.column_mm)
                    ),
                    classifier_probability=p,
                    member_logits={a: float(v[k]) for a, v in ensemble.logits.items()},
                    probability=fused.probability,
                    decision=fused.decision,
                    boxes=fused.boxes,
                    timings=image_timings,
                    anatomy_scores=scores.get(i, {}),
                    vertebrae=vertebral,
                )
        return [r for r in out if r is not None]

    def _score_views(
        self,
        datasets: Sequence[Dataset],
        prepared: Sequence[tuple[int, PreparedImage, float]],
        scored: dict[int, dict[str, float]],
        timings: defaultdict[str, float],
    ) -> dict[int, dict[str, float]]:
        """Run the anatomy model on images whose header names no view (for the fracture stage)."""
        if self.vertebral is None or self.anatomy is None:
            return {}
        todo = [
            (i, image)
            for i, image, _ in prepared
            if i not in scored and view_from_header(datasets[i]).view is View.UNKNOWN
        ]
        if not todo:
            return {}
        t = time.perf_counter()
        probabilities = self.anatomy.predict([image.display for _, image in todo])
        timings["anatomy"] += time.perf_counter() - t
        names = [c.value for c in AnatomyClass]
        return {
            i: {n: float(v) for n, v in zip(names, p, strict=True)}
            for (i, _), p in zip(todo, probabilities, strict=True)
        }

    def _analyse_vertebrae(
        self, ds: Dataset, image: PreparedImage, scores: dict[str, float]
    ) -> VertebralAnalysis | None:
        """Run the fracture stage on one image (None without a keypoint model)."""
        if self.vertebral is None:
            return None
        view = self.vertebral.decide_view(ds, scores)
        result = self.vertebral.analyse(ds, image.display, view)
        logger.info(
            "image %s vertebrae: %s (%s, %d found)",
            image.sop_instance_uid,
            result.status,
            view.detail,
            len(result.vertebrae),
        )
        return result

    def _check_unknown(
        self,
        datasets: Sequence[Dataset],
        prepared: Sequence[tuple[int, PreparedImage, float]],
        unknown: Sequence[int],
        out: list[ImageResult | None],
        timings: defaultdict[str, float],
    ) -> dict[int, dict[str, float]]:
        """Run the image check on the prepared images whose header said nothing.

        Refused images get their result in `out`; returns the scores of the others by
        input index.
        """
        if self.anatomy is None or not unknown:
            return {}
        t = time.perf_counter()
        probabilities = self.anatomy.predict([prepared[k][1].display for k in unknown])
        seconds = time.perf_counter() - t
        timings["anatomy"] += seconds
        scores: dict[int, dict[str, float]] = {}
        for k, p in zip(unknown, probabilities, strict=True):
            i, image, pre_s = prepared[k]
            ds = datasets[i]
            decision = spine_gate(dataset_tag_verdict(ds), p, self.anatomy.other_threshold)
            if decision.analyse:
                scores[i] = decision.scores
                continue
            logger.info(
                "image %s not analysed: not a spine image (%s)", _sop_uid(ds), decision.reason
            )
            out[i] = _not_spine_result(ds, image, decision, pre_s + seconds / len(unknown))
        return scores


def boxes_from_detections(detections: DetectionsLike, original_size: tuple[int, int]) -> list[Box]:
    """Convert detector output to `Box` objects, clipped to the image.

    Parameters
    ----------
    detections : DetectionsLike
        Boxes (original pixels), labels and scores of one image.
    original_size : tuple of int
        (rows, columns) of the image.

    Returns
    -------
    list of Box
        One per detection (``displayed`` is set later by the fusion step).
    """
    rows, cols = original_size
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(detections.labels).reshape(-1)
    scores = np.asarray(detections.scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError("detections have different numbers of boxes, labels and scores")
    out = []
    for (x0, y0, x1, y1), label, score in zip(boxes, labels, scores, strict=True):
        out.append(
            Box(
                label=LesionClass(int(label)),
                score=float(np.clip(score, 0.0, 1.0)),
                xmin=float(np.clip(x0, 0, cols)),
                ymin=float(np.clip(y0, 0, rows)),
                xmax=float(np.clip(x1, 0, cols)),
                ymax=float(np.clip(y1, 0, rows)),
            )
        )
    return out


def _failed_result(ds: Dataset, exc: UnsupportedImageError, seconds: float) -> ImageResult:
    series = ds.get("SeriesInstanceUID")
    return ImageResult(
        sop_instance_uid=_sop_uid(ds),
        series_instance_uid=str(series) if series else None,
        rows=_positive_int(ds.get("Rows")),
        columns=_positive_int(ds.get("Columns")),
        photometric=str(ds.get("PhotometricInterpretation") or "") or None,
        timings={"preprocess": seconds},
        error=ImageError(reason=exc.reason, message=exc.message),
    )


def _not_spine_result(
    ds: Dataset, image: PreparedImage | None, decision: GateDecision, seconds: float
) -> ImageResult:
    """Build the result of an image the spine check kept out (reason ``not_spine``)."""
    rows, cols = (None, None) if image is None else image.original_size
    series = ds.get("SeriesInstanceUID")
    return ImageResult(
        sop_instance_uid=_sop_uid(ds),
        series_instance_uid=str(series) if series else None,
        rows=rows if rows is not None else _positive_int(ds.get("Rows")),
        columns=cols if cols is not None else _positive_int(ds.get("Columns")),
        photometric=str(ds.get("PhotometricInterpretation") or "") or None,
        timings={"spine_check": seconds},
        error=ImageError(
            reason=ImageRefusal.NOT_SPINE.value,
            message=f"not a spine image ({decision.reason})",
        ),
        anatomy_scores=decision.scores,
    )


def _study_uid(datasets: Sequence[Dataset]) -> str:
    uids = list(dict.fromkeys(str(ds.get("StudyInstanceUID") or "") for ds in datasets))
    uids = [u for u in uids if u]
    if len(uids) > 1:
        logger.warning(
            "datasets of one analysis belong to %d studies; using %s", len(uids), uids[0]
        )
    return uids[0] if uids else ""


def _ct_study_uid(files: Sequence[Path]) -> str:
    if not files:
        return ""
    ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
    return str(ds.get("StudyInstanceUID") or "")


def _sop_uid(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID") or "")


def _positive_int(value: object) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if number >= 1 else None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _software_version() -> str:
    try:
        return importlib.metadata.version("spinexr-node")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _trained_on(entry: CtEntry | None) -> str | None:
    """Return the bundle's words for what its characterisation model was trained on."""
    if entry is None:
        return None
    said = entry.metrics.get("characteriser", {})
    text = said.get("trained_on") if isinstance(said, dict) else None
    return str(text)[:300] if text else None
