"""Exceptions of the inference library, rooted at `PipelineError`.

Every exception carries a machine-readable ``reason`` code (stable, snake_case, safe to store
in the database and to put in an SR's "analysis failed" text) and a human message. Callers
translate them at the edges: the worker maps an `UnsupportedImageError` to a per-image
failure and a `BundleError` to a start-up failure.
"""

from __future__ import annotations

import enum


class PipelineError(Exception):
    """Root of the library's exceptions.

    Parameters
    ----------
    reason : str
        Machine-readable code.
    message : str
        Human-readable explanation (one line).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"


class ImageRefusal(enum.StrEnum):
    """Why an image cannot be analysed (the ``reason`` of `UnsupportedImageError`)."""

    MULTI_FRAME = "multi_frame"
    NOT_MONOCHROME = "not_monochrome"
    NO_PIXEL_DATA = "no_pixel_data"
    TOO_SMALL = "too_small"
    UNDECODABLE = "undecodable"
    INVALID_HEADER = "invalid_header"
    NOT_SPINE = "not_spine"


class UnsupportedImageError(PipelineError):
    """An image the pipeline refuses to analyse.

    Parameters
    ----------
    reason : ImageRefusal
        What is wrong.
    message : str
        Human-readable explanation naming the offending values.
    sop_instance_uid : str, optional
        The image, when known.
    """

    def __init__(
        self, reason: ImageRefusal, message: str, sop_instance_uid: str | None = None
    ) -> None:
        super().__init__(str(reason), message)
        self.refusal = reason
        self.sop_instance_uid = sop_instance_uid


class BundleProblem(enum.StrEnum):
    """What is wrong with a model bundle (the ``reason`` of `BundleError`)."""

    INVALID_MANIFEST = "invalid_manifest"
    MISSING_FILE = "missing_file"
    WRONG_HASH = "wrong_hash"
    WRONG_CLASSES = "wrong_classes"
    WRONG_PREPROCESSING = "wrong_preprocessing"
    BAD_WEIGHTS = "bad_weights"


class BundleError(PipelineError):
    """A model bundle that cannot be used; subclasses name the problem.

    Parameters
    ----------
    message : str
        Human-readable explanation.
    """

    problem: BundleProblem = BundleProblem.INVALID_MANIFEST

    def __init__(self, message: str) -> None:
        super().__init__(str(self.problem), message)


class InvalidManifestError(BundleError):
    """``manifest.json`` is missing, not JSON, or does not match the manifest schema."""

    problem = BundleProblem.INVALID_MANIFEST


class MissingBundleFileError(BundleError):
    """A file the manifest lists is not in the bundle folder."""

    problem = BundleProblem.MISSING_FILE


class BundleHashError(BundleError):
    """A file's SHA-256 differs from the manifest's."""

    problem = BundleProblem.WRONG_HASH


class ClassListError(BundleError):
    """The manifest's class list differs from the code's (`CLASS_NAMES`)."""

    problem = BundleProblem.WRONG_CLASSES


class PreprocessingMismatchError(BundleError):
    """The manifest's preprocessing description differs from the code's."""

    problem = BundleProblem.WRONG_PREPROCESSING


class WeightsError(BundleError):
    """A weight file cannot be loaded into its model (wrong architecture, corrupt file)."""

    problem = BundleProblem.BAD_WEIGHTS
