"""Bundle building (`bundle build`) and the synthetic-phantom demo bundle (`bundle demo`)."""

from spinexr.training.bundles.build import (
    THRESHOLD_METHOD,
    BundleSpec,
    build_bundle,
    detector_model_name,
    detector_scale_of_run,
    update_metrics,
)

__all__ = [
    "THRESHOLD_METHOD",
    "BundleSpec",
    "build_bundle",
    "detector_model_name",
    "detector_scale_of_run",
    "update_metrics",
]
