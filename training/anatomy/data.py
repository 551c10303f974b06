"""Labelled phantoms for the image check, as the serving pipeline would see them.

Each example is a DICOM dataset built in memory (spine AP or lateral from
`spinexr.training.phantoms.make_phantom_image`, with random lesions, region, photometric
interpretation, SOP class and VOI form; chest PA, long bone or hand from
`spinexr.training.phantoms.others.make_other_image`), decoded and displayed by the pipeline's
own functions (`decode_pixels`, `display_image`) and resized by `anatomy_input`: training
sees the pixels serving sees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from spinexr.pipeline.anatomy import AnatomyClass, anatomy_input
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.preprocess import decode_pixels, display_image
from spinexr.training.phantoms import REGIONS, View, make_phantom_image
from spinexr.training.phantoms.dicom import Photometric, SopKind
from spinexr.training.phantoms.others import OtherKind, make_other_image, other_size

logger = logging.getLogger(__name__)

OTHER_MIX: dict[OtherKind, float] = {
    OtherKind.CHEST_PA: 0.45,
    OtherKind.LONG_BONE: 0.3,
    OtherKind.HAND: 0.25,
}
"""Share of each kind among the ``other`` examples."""


@dataclass(frozen=True)
class AnatomyExamples:
    """Model inputs and labels.

    Attributes
    ----------
    images : numpy.ndarray
        ``uint8`` ``(N, 128, 128)`` anatomy inputs.
    labels : numpy.ndarray
        ``int64`` ``(N,)`` indices into `AnatomyClass`.
    kinds : list of str
        What each example shows (``spine_ap/LSPINE``, ``other/chest_pa``, ...).
    """

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def anatomy_examples(
    per_class: int, seed: int, *, rows: tuple[int, int] = (224, 320)
) -> AnatomyExamples:
    """Render `per_class` examples of each `AnatomyClass`.

    Parameters
    ----------
    per_class : int
        Examples per class.
    seed : int
        Seed (different seeds give disjoint phantoms).
    rows : tuple of int
        Range of image heights; widths follow each kind's usual aspect ratio (spine
        0.6-1.0 of the height), so the aspect ratio does not give the class away.

    Returns
    -------
    AnatomyExamples
        Classes in `AnatomyClass` order, `per_class` each.
    """
    images: list[npt.NDArray[np.uint8]] = []
    labels: list[int] = []
    kinds: list[str] = []
    root = np.random.SeedSequence(seed)
    for label, cls in enumerate(AnatomyClass):
        for j in range(per_class):
            ss = np.random.SeedSequence(root.entropy, spawn_key=(label, j))
            rng = np.random.default_rng(ss.spawn(1)[0])
            height = int(rng.integers(rows[0], rows[1] + 1))
            if cls is AnatomyClass.OTHER:
                kind = OtherKind(
                    str(rng.choice([k.value for k in OTHER_MIX], p=list(OTHER_MIX.values())))
                )
                ds = make_other_image(
                    ss,
                    kind=kind,
                    size=other_size(kind, rng, height),
                    photometric=_photometric(rng),
                    sop_class=_sop_class(rng),
                )
                what = f"other/{kind.value}"
            else:
                view: View = "AP" if cls is AnatomyClass.SPINE_AP else "LAT"
                region = REGIONS[int(rng.integers(len(REGIONS)))]
                ds, _ = make_phantom_image(
                    ss,
                    view=view,
                    size=(height, max(96, int(height * rng.uniform(0.6, 1.0)))),
                    region=region,
                    lesions=_lesions(rng),
                    photometric=_photometric(rng),
                    sop_class=_sop_class(rng),
                    voi_lut_sequence=bool(rng.random() < 0.2),
                )
                what = f"{cls.value}/{region}"
            images.append(serving_input(ds))
            labels.append(label)
            kinds.append(what)
    return AnatomyExamples(
        images=np.stack(images), labels=np.asarray(labels, dtype=np.int64), kinds=kinds
    )


def serving_input(ds: Dataset) -> npt.NDArray[np.uint8]:
    """Make the anatomy input the pipeline makes of a dataset (decode, VOI, min-max, resize).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A single-frame greyscale image.

    Returns
    -------
    numpy.ndarray
        ``uint8`` 128×128.
    """
    display, _ = display_image(ds, decode_pixels(ds))
    return anatomy_input(display)


def _photometric(rng: np.random.Generator) -> Photometric:
    return "MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2"


def _sop_class(rng: np.random.Generator) -> SopKind:
    return "DX" if rng.random() < 0.5 else "CR"


def _lesions(rng: np.random.Generator) -> list[LesionClass]:
    if rng.random() < 0.5:
        return []
    count = int(rng.integers(1, 4))
    return [LesionClass(int(c)) for c in rng.choice(len(LesionClass), count, replace=False)]
