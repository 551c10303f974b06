"""Training of the image check (`spinexr.pipeline.anatomy`): spine AP, spine lateral, other.

`anatomy_examples` renders labelled phantoms (spine AP and lateral from
`spinexr.training.phantoms`, chest PA and extremities from
`spinexr.training.phantoms.others`) through the serving preprocessing; `train_anatomy` fits
the small CNN and measures it on held-out phantoms; `add_anatomy_to_bundle` writes it into a
bundle's manifest.
"""

from spinexr.training.anatomy.bundle import ANATOMY_WEIGHTS, add_anatomy_to_bundle
from spinexr.training.anatomy.data import AnatomyExamples, anatomy_examples
from spinexr.training.anatomy.train import AnatomyTrainConfig, AnatomyTrainResult, train_anatomy

__all__ = [
    "ANATOMY_WEIGHTS",
    "AnatomyExamples",
    "AnatomyTrainConfig",
    "AnatomyTrainResult",
    "add_anatomy_to_bundle",
    "anatomy_examples",
    "train_anatomy",
]
