"""Model bundle: a folder with ``manifest.json`` and the weight files it lists.

The manifest plays the role of a torchvision weights entry: it names the classes (in
``method.md`` order), the preprocessing, the classifier members, the detector, the operating
threshold c* and how it was fitted, the display threshold, the metrics the bundle was
validated with, the training data, whether it is a demo bundle (trained on synthetic
phantoms) and the SHA-256 of every file. `verify_bundle` checks all of it against the code's
constants before a model is built, with a distinct error per problem. An optional ``anatomy``
entry adds the image check (`spinexr.pipeline.anatomy`: spine AP, spine lateral or other), an
optional ``vertebrae`` entry the keypoint model of lateral radiographs and an optional ``ct``
entry the CT localiser and CT keypoint model; bundles without them stay valid.

The bundle's DICOM device UID is ``2.25.<int of the first 128 bits of the weights digest>``,
where the weights digest is the SHA-256 of the sorted file hashes: it changes exactly when a
weight or config file changes, whatever the files are called.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import posixpath
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from spinexr.pipeline.anatomy import ANATOMY_ARCH, ANATOMY_CLASSES, ANATOMY_SIZE
from spinexr.pipeline.atomic import write_atomically
from spinexr.pipeline.classes import CLASS_NAMES
from spinexr.pipeline.classifier import Arch
from spinexr.pipeline.errors import (
    BundleHashError,
    ClassListError,
    InvalidManifestError,
    MissingBundleFileError,
    PreprocessingMismatchError,
)
from spinexr.pipeline.preprocess import (
    DETECTOR_SCALE_KEYS,
    DETECTOR_SCALE_RANGE,
    PREPROCESSING,
)
from spinexr.pipeline.results import FusionMode

logger = logging.getLogger(__name__)

MANIFEST_NAME: Final = "manifest.json"
MANIFEST_SCHEMA_VERSION: Final = 1
_CHUNK = 1 << 20


def _relative_path(value: str) -> str:
    """Accept a normalised POSIX path inside the bundle folder."""
    if (
        not value
        or "\\" in value
        or value.startswith("/")
        or posixpath.normpath(value) != value
        or value.split("/")[0] == ".."
        or value == MANIFEST_NAME
    ):
        raise ValueError(f"{value!r} is not a normalised relative path inside the bundle")
    return value


RelPath = Annotated[str, AfterValidator(_relative_path)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClassifierMember(_Model):
    """One DenseNet of the ensemble.

    Attributes
    ----------
    arch : {"densenet121", "densenet169", "densenet201"}
        Architecture.
    weights : str
        State dict file, relative to the bundle folder.
    """

    arch: Arch
    weights: RelPath


class DetectorEntry(_Model):
    """The MMDetection detector.

    Attributes
    ----------
    model : str
        Model type, e.g. ``"sparse-rcnn"``.
    config : str
        Resolved MMDetection config file, relative to the bundle folder.
    checkpoint : str
        Checkpoint file, relative to the bundle folder.
    """

    model: str = Field(min_length=1)
    config: RelPath
    checkpoint: RelPath


class AnatomyEntry(_Model):
    """The optional image check (`spinexr.pipeline.anatomy`): spine AP, spine lateral or other.

    Attributes
    ----------
    model : str
        Architecture; `spinexr.pipeline.anatomy.ANATOMY_ARCH`.
    weights : str
        State dict file, relative to the bundle folder.
    classes : list of str
        Output names in logit order; must equal `ANATOMY_CLASSES`.
    input_size : tuple of int
        (rows, columns) of the input; must equal `ANATOMY_SIZE`.
    other_threshold : float
        ``other`` probability at or above which an image whose header says nothing about
        its anatomy is not analysed.
    metrics : dict
        How it was validated (free form).
    """

    model: str
    weights: RelPath
    classes: list[str]
    input_size: tuple[int, int]
    other_threshold: float = Field(gt=0.0, le=1.0, allow_inf_nan=False)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _matches_code(self) -> Self:
        if self.model != ANATOMY_ARCH:
            raise ValueError(f"anatomy model {self.model!r} is not {ANATOMY_ARCH!r}")
        if list(self.classes) != list(ANATOMY_CLASSES):
            raise ValueError(
                f"anatomy classes {self.classes} differ from the code's {list(ANATOMY_CLASSES)}"
            )
        if tuple(self.input_size) != tuple(ANATOMY_SIZE):
            raise ValueError(
                f"anatomy input size {self.input_size} differs from the code's {ANATOMY_SIZE}"
            )
        return self


class VertebraeEntry(_Model):
    """The optional vertebral fracture analysis (`spinexr.pipeline.vertebrae`).

    Attributes
    ----------
    model : str
        Architecture of the keypoint model: ``"pisov"`` (Pisov et al.'s single-stage
        detector) or ``"keypointrcnn"`` (torchvision's baseline).
    checkpoint : str
        Checkpoint file, relative to the bundle folder.
    score_threshold : float
        Lowest detection score of a vertebra that is reported.
    sacrum_threshold : float
        Lowest score of a first-sacral-segment detection that fixes the level names.
    metrics : dict
        How it was validated (free form: held-out recall, precision, errors...).
    """

    model: Literal["pisov", "keypointrcnn"]
    checkpoint: RelPath
    score_threshold: float = Field(default=0.5, gt=0.0, lt=1.0, allow_inf_nan=False)
    sacrum_threshold: float = Field(default=0.5, gt=0.0, lt=1.0, allow_inf_nan=False)
    metrics: dict[str, Any] = Field(default_factory=dict)


class CtEntry(_Model):
    """The optional vertebral fracture analysis of CT series (`spinexr.pipeline.ct`).

    Attributes
    ----------
    localiser : str
        Checkpoint of the centre-line network (`spinexr.pipeline.ct.localise`), relative to
        the bundle folder.
    keypoint_model : str
        Architecture of the keypoint model trained on straightened CT reformats:
        ``"pisov"`` or ``"keypointrcnn"``.
    keypoint_checkpoint : str
        Its checkpoint, relative to the bundle folder.
    score_threshold : float
        Lowest detection score of a vertebra that is reported.
    characteriser : str or None
        Li et al.'s benign / malignant classifier (`spinexr.pipeline.ct.characterise`),
        relative to the bundle folder; optional.
    malignancy_threshold : float
        Malignant at or above this probability (the paper: 0.5).
    metrics : dict
        How they were validated (free form: held-out localisation error, recall...).
    """

    localiser: RelPath
    keypoint_model: Literal["pisov", "keypointrcnn"]
    keypoint_checkpoint: RelPath
    score_threshold: float = Field(default=0.5, gt=0.0, lt=1.0, allow_inf_nan=False)
    characteriser: RelPath | None = None
    malignancy_threshold: float = Field(default=0.5, gt=0.0, lt=1.0, allow_inf_nan=False)
    metrics: dict[str, Any] = Field(default_factory=dict)


class Manifest(_Model):
    """Contents of ``manifest.json`` (validated on construction).

    Attributes
    ----------
    schema_version : int
        `MANIFEST_SCHEMA_VERSION`.
    name, version : str
        Bundle identity (the version goes into every output object).
    created : datetime.datetime
        When the bundle was built.
    classes : list of str
        Display names in class-id order; must equal `CLASS_NAMES`.
    preprocessing : dict
        Must equal `spinexr.pipeline.preprocess.PREPROCESSING`, except for the detector
        scale the bundle's detector was trained at.
    classifier : list of ClassifierMember
        Ensemble members (1 to 3, distinct architectures).
    detector : DetectorEntry
        The detector.
    threshold : float
        Operating threshold c* on the image probability of `fusion`'s mode.
    threshold_method : str
        How c* was fitted (e.g. ``"youden_j_on_validation"``).
    display_threshold : float
        Lowest displayed box score.
    fusion : FusionMode
        ``paper`` (default) or ``paper+average``.
    metrics : dict
        Metrics the bundle was validated with (free form).
    training_data : dict
        Description of the training data (free form).
    demo : bool
        Trained on synthetic phantoms; outputs must say so.
    files : dict of str to str
        Relative path → SHA-256 (lowercase hex) of every file besides the manifest.
    anatomy : AnatomyEntry or None
        The image check (spine AP / spine lateral / other); optional: without it, images
        whose header says nothing about their anatomy are analysed unchecked.
    vertebrae : VertebraeEntry or None
        The vertebral fracture keypoint model; optional: without it, lateral views get the
        lesion analysis only and say "not analysed for vertebral fractures".
    ct : CtEntry or None
        The CT models (localiser and keypoint model); optional: without them, CT series are
        reported "not analysed: the bundle has no CT model".
    """

    schema_version: int = Field(ge=MANIFEST_SCHEMA_VERSION, le=MANIFEST_SCHEMA_VERSION)
    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    created: dt.datetime
    classes: list[str]
    preprocessing: dict[str, Any]
    classifier: list[ClassifierMember] = Field(min_length=1, max_length=3)
    detector: DetectorEntry
    threshold: Unit
    threshold_method: str = Field(min_length=1)
    display_threshold: Unit
    fusion: FusionMode = FusionMode.PAPER
    metrics: dict[str, Any] = Field(default_factory=dict)
    training_data: dict[str, Any] = Field(default_factory=dict)
    demo: bool
    files: dict[RelPath, Sha256] = Field(min_length=1)
    anatomy: AnatomyEntry | None = None
    vertebrae: VertebraeEntry | None = None
    ct: CtEntry | None = None

    @model_validator(mode="after")
    def _references_listed(self) -> Self:
        archs = [m.arch for m in self.classifier]
        if len(set(archs)) != len(archs):
            raise ValueError(f"classifier members repeat an architecture: {archs}")
        referenced = [m.weights for m in self.classifier]
        referenced += [self.detector.config, self.detector.checkpoint]
        if self.anatomy is not None:
            referenced.append(self.anatomy.weights)
        if self.vertebrae is not None:
            referenced.append(self.vertebrae.checkpoint)
        if self.ct is not None:
            referenced += [self.ct.localiser, self.ct.keypoint_checkpoint]
            if self.ct.characteriser is not None:
                referenced.append(self.ct.characteriser)
        unlisted = [p for p in referenced if p not in self.files]
        if unlisted:
            raise ValueError(f"files referenced but not listed in 'files': {unlisted}")
        return self


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: manifest plus absolute paths and identity.

    Attributes
    ----------
    directory : pathlib.Path
        The bundle folder.
    manifest : Manifest
        Its manifest.
    """

    directory: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        """Bundle name."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """Bundle version."""
        return self.manifest.version

    @property
    def demo(self) -> bool:
        """Whether the bundle was trained on synthetic phantoms."""
        return self.manifest.demo

    @property
    def threshold(self) -> float:
        """Operating threshold c*."""
        return self.manifest.threshold

    @property
    def display_threshold(self) -> float:
        """Lowest displayed box score."""
        return self.manifest.display_threshold

    @property
    def detector_scale(self) -> tuple[int, int]:
        """(shorter side, longer-side bound) of the detector input the detector was trained at."""
        pre = self.manifest.preprocessing
        return int(pre["detector_shorter"]), int(pre["detector_longer_max"])

    @property
    def fusion(self) -> FusionMode:
        """Fusion mode c* was fitted for."""
        return self.manifest.fusion

    @property
    def classifier_weights(self) -> dict[str, Path]:
        """Architecture → absolute state-dict path, in manifest order."""
        return {m.arch: self.directory / m.weights for m in self.manifest.classifier}

    @property
    def detector_config(self) -> Path:
        """Absolute path of the detector config."""
        return self.directory / self.manifest.detector.config

    @property
    def detector_checkpoint(self) -> Path:
        """Absolute path of the detector checkpoint."""
        return self.directory / self.manifest.detector.checkpoint

    @property
    def anatomy(self) -> AnatomyEntry | None:
        """The image check's manifest entry, when the bundle has one."""
        return self.manifest.anatomy

    @property
    def anatomy_weights(self) -> Path | None:
        """Absolute path of the image check's state dict, when the bundle has one."""
        entry = self.manifest.anatomy
        return None if entry is None else self.directory / entry.weights

    @property
    def vertebrae(self) -> VertebraeEntry | None:
        """The vertebral fracture model's manifest entry, when the bundle has one."""
        return self.manifest.vertebrae

    @property
    def vertebrae_checkpoint(self) -> Path | None:
        """Absolute path of the keypoint model's checkpoint, when the bundle has one."""
        entry = self.manifest.vertebrae
        return None if entry is None else self.directory / entry.checkpoint

    @property
    def ct(self) -> CtEntry | None:
        """The CT models' manifest entry, when the bundle has one."""
        return self.manifest.ct

    @property
    def ct_localiser(self) -> Path | None:
        """Absolute path of the CT localiser's checkpoint, when the bundle has one."""
        entry = self.manifest.ct
        return None if entry is None else self.directory / entry.localiser

    @property
    def ct_keypoint_checkpoint(self) -> Path | None:
        """Absolute path of the CT keypoint model's checkpoint, when the bundle has one."""
        entry = self.manifest.ct
        return None if entry is None else self.directory / entry.keypoint_checkpoint

    @property
    def ct_characteriser(self) -> Path | None:
        """Absolute path of the benign / malignant classifier, when the bundle has one."""
        entry = self.manifest.ct
        if entry is None or entry.characteriser is None:
            return None
        return self.directory / entry.characteriser

    @property
    def weights_digest(self) -> str:
        """SHA-256 (hex) over the sorted file hashes."""
        return weights_digest(self.manifest.files)

    @property
    def device_uid(self) -> str:
        """DICOM UID of the model as a device, derived from `weights_digest`."""
        return device_uid(self.weights_digest)


def weights_digest(files: Mapping[str, str]) -> str:
    """Return the SHA-256 (hex) of the sorted file hashes, one per line.

    Parameters
    ----------
    files : mapping of str to str
        Relative path → SHA-256 hex (paths do not enter the digest).

    Returns
    -------
    str
        64 hex digits.
    """
    text = "\n".join(sorted(files.values()))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def device_uid(digest: str) -> str:
    """Return ``2.25.<int of the first 32 hex digits of digest>`` (≤ 44 characters).

    Parameters
    ----------
    digest : str
        Hex digest (at least 32 digits).

    Returns
    -------
    str
        A valid DICOM UID (PS3.5 section B.2: UUID-derived, no leading zeros).
    """
    return f"2.25.{int(digest[:32], 16)}"


def sha256_file(path: Path) -> str:
    """Return the SHA-256 (hex) of a file, read in 1 MiB chunks.

    Parameters
    ----------
    path : pathlib.Path
        The file.

    Returns
    -------
    str
        64 hex digits.
    """
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(directory: Path) -> Manifest:
    """Read and validate ``manifest.json`` (schema only; see `verify_bundle`).

    Parameters
    ----------
    directory : pathlib.Path
        The bundle folder.

    Returns
    -------
    Manifest
        The manifest.

    Raises
    ------
    InvalidManifestError
        When the file is missing, not JSON, or does not match the schema.
    """
    path = Path(directory) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InvalidManifestError(f"{path} does not exist: not a model bundle") from exc
    except OSError as exc:
        raise InvalidManifestError(f"cannot read {path}: {exc}") from exc
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidManifestError(f"invalid {MANIFEST_NAME} in {directory}: {problems}") from exc


def verify_bundle(directory: Path) -> Bundle:
    """Load a bundle and check it against the code before any model is built.

    Checks, in order: manifest schema; class list equals `CLASS_NAMES`; preprocessing
    equals `PREPROCESSING` except for the detector scale (``detector_shorter``,
    ``detector_longer_max``: the scale the bundle's detector was trained at, integers within
    `DETECTOR_SCALE_RANGE`); every listed file exists; every SHA-256 matches.

    Parameters
    ----------
    directory : pathlib.Path
        The bundle folder.

    Returns
    -------
    Bundle
        The verified bundle.

    Raises
    ------
    InvalidManifestError
        The manifest is missing, not JSON or not valid.
    ClassListError
        The class list differs (the message shows expected and found).
    PreprocessingMismatchError
        The preprocessing differs (the message names each differing key).
    MissingBundleFileError
        A listed file is absent (named).
    BundleHashError
        A file's SHA-256 differs (named).
    """
    directory = Path(directory).resolve()
    manifest = load_manifest(directory)
    if list(manifest.classes) != list(CLASS_NAMES):
        raise ClassListError(
            f"bundle {manifest.name} {manifest.version} has the wrong class list: "
            f"expected {list(CLASS_NAMES)}, found {manifest.classes}"
        )
    expected = json.loads(json.dumps(PREPROCESSING))
    declared = dict(manifest.preprocessing)
    _check_detector_scale(manifest, declared)
    for key in DETECTOR_SCALE_KEYS:
        declared[key] = expected[key]
    if declared != expected:
        diff = _dict_diff(expected, declared)
        raise PreprocessingMismatchError(
            f"bundle {manifest.name} {manifest.version} was made for other preprocessing: {diff}"
        )
    missing = sorted(p for p in manifest.files if not (directory / p).is_file())
    if missing:
        raise MissingBundleFileError(
            f"bundle {manifest.name} {manifest.version} is missing file(s): {', '.join(missing)}"
        )
    wrong = []
    for rel, expected_hash in sorted(manifest.files.items()):
        found = sha256_file(directory / rel)
        if found != expected_hash:
            wrong.append(f"{rel} (expected {expected_hash[:12]}…, found {found[:12]}…)")
    if wrong:
        raise BundleHashError(
            f"bundle {manifest.name} {manifest.version}: SHA-256 mismatch for {'; '.join(wrong)}"
        )
    bundle = Bundle(directory=directory, manifest=manifest)
    logger.info(
        "bundle %s %s verified (device UID %s%s)",
        bundle.name,
        bundle.version,
        bundle.device_uid,
        ", demo" if bundle.demo else "",
    )
    return bundle


def _check_detector_scale(manifest: Manifest, preprocessing: Mapping[str, Any]) -> None:
    """Check the bundle's detector input scale (the one preprocessing entry it may choose)."""
    shorter = preprocessing.get("detector_shorter")
    longer = preprocessing.get("detector_longer_max")
    low, high = DETECTOR_SCALE_RANGE
    ok = type(shorter) is int and type(longer) is int and low <= shorter <= longer <= high
    if not ok:
        raise PreprocessingMismatchError(
            f"bundle {manifest.name} {manifest.version} has an invalid detector scale: "
            f"detector_shorter={shorter!r}, detector_longer_max={longer!r} (integers with "
            f"{low} ≤ shorter ≤ longer ≤ {high})"
        )


def write_bundle(
    directory: Path,
    fields: Mapping[str, Any],
    files: Mapping[str, Path],
    *,
    detector_scale: tuple[int, int] | None = None,
) -> Bundle:
    """Copy files into a bundle folder, hash them, write the manifest and verify.

    ``schema_version``, ``classes``, ``preprocessing`` and ``created`` default to the code's
    values and the current time; ``files`` is computed.

    Parameters
    ----------
    directory : pathlib.Path
        The bundle folder (created if needed).
    fields : mapping
        Manifest fields other than ``files`` (``name``, ``version``, ``classifier``,
        ``detector``, ``threshold``, ``threshold_method``, ``display_threshold``, ``demo``,
        optionally ``fusion``, ``metrics``, ``training_data``).
    files : mapping of str to pathlib.Path
        Relative path in the bundle → source file (copied unless it is already there).
    detector_scale : tuple of int, optional
        (shorter side, longer-side bound) the detector was trained at, when not the paper's
        800 and 1333.

    Returns
    -------
    Bundle
        The verified bundle.

    Raises
    ------
    InvalidManifestError
        When the fields do not make a valid manifest.
    ValueError
        When `fields` contains ``files``.
    """
    if "files" in fields:
        raise ValueError("'files' is computed by write_bundle; pass the files separately")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for rel, src in files.items():
        dst = directory / _relative_path(rel)
        if not dst.exists() or not dst.samefile(src):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        hashes[rel] = sha256_file(dst)
    preprocessing = json.loads(json.dumps(PREPROCESSING))
    if detector_scale is not None:
        preprocessing.update(zip(DETECTOR_SCALE_KEYS, map(int, detector_scale), strict=True))
    data: dict[str, Any] = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "classes": list(CLASS_NAMES),
        "preprocessing": preprocessing,
        "created": dt.datetime.now(dt.UTC),
        **fields,
        "files": hashes,
    }
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise InvalidManifestError(f"cannot write a valid manifest: {exc}") from exc
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    write_atomically(directory / MANIFEST_NAME, text)
    return verify_bundle(directory)


def _dict_diff(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    parts = []
    for key in sorted(set(expected) | set(found)):
        e, f = expected.get(key, "<absent>"), found.get(key, "<absent>")
        if e != f:
            parts.append(f"{key}: expected {e!r}, found {f!r}")
    return "; ".join(parts)
