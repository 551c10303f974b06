"""Synthetic radiographs of body parts other than the spine: a chest PA and extremities.

They teach and test the image check (`spinexr.pipeline.anatomy`): what a spine model must not
analyse. Three kinds (`OtherKind`):

- ``CHEST_PA``: wide lung fields, heart shadow on the patient's left (image right), posterior
  ribs, clavicles, scapulae, humeral heads, a faint spine behind the mediastinum, diaphragm
  domes with the denser abdomen below;
- ``LONG_BONE``: a limb (upper or lower leg, forearm, upper arm) on air: one or two long
  bones with cortex and medullary canal, and a joint with its epiphyses at one end;
- ``HAND``: a hand PA on air: distal radius and ulna, carpals, five metacarpals and the
  phalanges, soft tissue of palm and fingers.

The projection model is the spine phantoms' (`spinexr.training.phantoms.render`):
attenuation → ``N0 * exp(-A)`` quanta with a heel gradient and noise → log signal on 12 bits,
bone bright. `make_other_image` wraps the pixels in a CR or DX header like the spine phantoms'
(`spinexr.training.phantoms.dicom.build_dataset`) with the body part's own Body Part
Examined, descriptions and anatomic region, or with those attributes removed
(``tags=False``), as a sender that fills none of them would.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from scipy import ndimage

from spinexr.training.phantoms.dicom import (
    HeaderSpec,
    PatientInfo,
    Photometric,
    SopKind,
    build_dataset,
    phantom_uid,
)
from spinexr.training.phantoms.image import (
    SeedLike,
    child_rng,
    random_patient,
    random_study_datetime,
    seed_label,
    seed_sequence,
)
from spinexr.training.phantoms.render import MAX_STORED
from spinexr.training.phantoms.shapes import (
    Capsule,
    ConvexPolygon,
    Ellipse,
    FloatArray,
    Polyline,
    Shape,
    grid,
    soft,
    window,
)

_N0 = 40000.0
_STREAMS = {"size": 0, "anatomy": 1, "render": 2, "header": 3}


class OtherKind(enum.StrEnum):
    """Which non-spine radiograph a phantom shows."""

    CHEST_PA = "chest_pa"
    LONG_BONE = "long_bone"
    HAND = "hand"


# Body Part Examined, study / series description, SCT anatomic region of each kind.
_TAGS: dict[OtherKind, tuple[str, str, str, tuple[str, str]]] = {
    OtherKind.CHEST_PA: ("CHEST", "XR CHEST PA", "CHEST PA", ("51185008", "Chest")),
    OtherKind.LONG_BONE: ("LEG", "XR LOWER LEG 2 VIEWS", "LOWER LEG AP", ("30021000", "Lower leg")),
    OtherKind.HAND: ("HAND", "XR HAND 3 VIEWS", "HAND PA", ("85562004", "Hand")),
}
_VIEW_POSITION = {OtherKind.CHEST_PA: "PA", OtherKind.LONG_BONE: "AP", OtherKind.HAND: "PA"}

TAG_KEYWORDS = (
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "AnatomicRegionSequence",
)
"""Attributes that name the anatomy (removed by ``tags=False``)."""


def other_size(kind: OtherKind, rng: np.random.Generator, rows: int) -> tuple[int, int]:
    """Draw (rows, cols) for a kind around `rows` rows (chest square-ish, limbs portrait).

    Parameters
    ----------
    kind : OtherKind
        The body part.
    rng : numpy.random.Generator
        Source of variation.
    rows : int
        Approximate number of rows (at least 128).

    Returns
    -------
    tuple of int
        Rows and columns.
    """
    aspect = {
        OtherKind.CHEST_PA: rng.uniform(0.85, 1.2),
        OtherKind.LONG_BONE: rng.uniform(0.35, 0.8),
        OtherKind.HAND: rng.uniform(0.7, 1.0),
    }[kind]
    rows = max(128, int(rows))
    return rows, max(96, round(rows * aspect))


def render_other(
    rng_or_seed: SeedLike, kind: OtherKind, size: tuple[int, int] = (512, 448)
) -> npt.NDArray[np.uint16]:
    """Render a non-spine radiograph (12 bits, bone bright).

    Parameters
    ----------
    rng_or_seed : int, numpy.random.Generator or numpy.random.SeedSequence
        Seed; the same seed gives the same image.
    kind : OtherKind
        The body part.
    size : tuple of int
        (rows, columns), at least 128×96.

    Returns
    -------
    numpy.ndarray
        ``uint16`` ``(rows, cols)`` in ``0..4095``.
    """
    rows, cols = int(size[0]), int(size[1])
    if rows < 128 or cols < 96:
        raise ValueError(f"phantom size {size} is too small (minimum 128×96)")
    ss = seed_sequence(rng_or_seed)
    geometry = _BUILDERS[OtherKind(kind)]
    tissue, bone = geometry(child_rng(ss, _STREAMS["anatomy"]), rows, cols)
    return _expose(tissue, bone, child_rng(ss, _STREAMS["render"]))


def make_other_image(
    rng_or_seed: SeedLike,
    *,
    kind: OtherKind = OtherKind.CHEST_PA,
    size: tuple[int, int] | None = None,
    photometric: Photometric = "MONOCHROME2",
    sop_class: SopKind = "CR",
    tags: bool = True,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient: PatientInfo | None = None,
    study_datetime: tuple[str, str] | None = None,
    series_number: int = 1,
    instance_number: int = 1,
) -> Dataset:
    """Make one non-spine radiograph as a CR or DX dataset.

    Parameters
    ----------
    rng_or_seed : int, numpy.random.Generator or numpy.random.SeedSequence
        Seed; pixels, UIDs and header are deterministic for an int or sequence.
    kind : OtherKind
        The body part.
    size : tuple of int, optional
        (rows, columns); drawn with `other_size` around 512 rows when omitted.
    photometric : {"MONOCHROME2", "MONOCHROME1"}
        Photometric interpretation.
    sop_class : {"CR", "DX"}
        CR Image Storage or Digital X-Ray Image Storage – For Presentation.
    tags : bool
        Write Body Part Examined, descriptions and anatomic region; False removes them.
    study_uid, series_uid, sop_instance_uid : str, optional
        Identifiers; derived from the seed when omitted.
    patient : PatientInfo, optional
        Demographics; derived from the seed when omitted.
    study_datetime : tuple of str, optional
        ``(YYYYMMDD, HHMMSS)``; derived from the seed when omitted.
    series_number, instance_number : int
        Numbers within the study and series.

    Returns
    -------
    pydicom.dataset.Dataset
        With file meta and preamble (write it with `spinexr.training.phantoms.write`).
    """
    kind = OtherKind(kind)
    ss = seed_sequence(rng_or_seed)
    if size is None:
        size = other_size(kind, child_rng(ss, _STREAMS["size"]), 512)
    display = render_other(ss, kind, size)
    rng = child_rng(ss, _STREAMS["header"])
    label = seed_label(ss)
    if study_datetime is None:
        study_datetime = random_study_datetime(rng)
    if patient is None:
        patient = random_patient(rng, int(rng.integers(1, 10000)), int(study_datetime[0][:4]))
    spec = HeaderSpec(
        sop_class=sop_class,
        photometric=photometric,
        compressed=False,
        window=True,
        voi_lut_sequence=False,
        second_window=False,
        study_uid=study_uid or phantom_uid(label, "other-study"),
        series_uid=series_uid or phantom_uid(label, "other-series"),
        sop_instance_uid=sop_instance_uid or phantom_uid(label, "other-instance"),
        patient=patient,
        study_date=study_datetime[0],
        study_time=study_datetime[1],
        content_time=study_datetime[1],
        study_id=f"{int(rng.integers(1, 99999)):05d}",
        accession_number=f"PHO{int(rng.integers(0, 10**7)):07d}",
        series_number=series_number,
        instance_number=instance_number,
        view="AP",
        region="SPINE",  # replaced below: the header builder knows spine regions only
        pixel_spacing_mm=round(430.0 / display.shape[0], 4),
        both_spacings=False,
        model="PhantomCR 100",
        device_serial=f"SN{int(rng.integers(0, 10**6)):06d}",
        kvp=float(rng.integers(50, 125)),
    )
    ds = build_dataset(display, spec)
    body_part, study_text, series_text, (code, meaning) = _TAGS[kind]
    ds.ViewPosition = _VIEW_POSITION[kind]
    ds.PatientOrientation = ["L", "F"] if kind is OtherKind.CHEST_PA else ["R", "F"]
    if "ViewCodeSequence" in ds:
        del ds.ViewCodeSequence
    if tags:
        ds.BodyPartExamined = body_part
        ds.StudyDescription = study_text
        ds.SeriesDescription = series_text
        if "AnatomicRegionSequence" in ds:
            item = Dataset()
            item.CodeValue, item.CodeMeaning = code, meaning
            item.CodingSchemeDesignator = "SCT"
            ds.AnatomicRegionSequence = DicomSequence([item])
    else:
        strip_anatomy_tags(ds)
    return ds


def strip_anatomy_tags(ds: Dataset) -> Dataset:
    """Remove every attribute in `TAG_KEYWORDS` (in place), as a silent sender would.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A dataset.

    Returns
    -------
    pydicom.dataset.Dataset
        The same dataset.
    """
    for keyword in TAG_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


# ----------------------------------------------------------------------------- geometry

Geometry = Callable[[np.random.Generator, int, int], tuple[FloatArray, FloatArray]]


def _chest_pa(rng: np.random.Generator, rows: int, cols: int) -> tuple[FloatArray, FloatArray]:
    """Lay out the tissue and bone attenuation maps of a chest PA."""
    tissue = np.zeros((rows, cols), np.float32)
    bone = np.zeros((rows, cols), np.float32)
    edge = max(1.0, rows / 600.0)
    cx = cols * (0.5 + rng.uniform(-0.04, 0.04))
    half = cols * rng.uniform(0.38, 0.56)
    top = rows * rng.uniform(0.06, 0.14)
    # Trunk: thickness profile across, from the shoulders down; the neck above.
    y = np.arange(rows, dtype=np.float32)[:, None]
    x = np.arange(cols, dtype=np.float32)[None, :]
    across = np.sqrt(np.clip(1.0 - ((x - cx) / half) ** 2, 0.0, 1.0))
    below = soft(y - np.float32(top), 0.03 * rows)
    thick = np.float32(rng.uniform(1.1, 1.5))
    tissue += thick * across * below
    neck = np.sqrt(np.clip(1.0 - ((x - cx) / (0.13 * cols)) ** 2, 0.0, 1.0))
    tissue += thick * 0.8 * neck * (1.0 - below)
    # Lungs: air lowers the attenuation; diaphragm domes close them below.
    lung_h = rows * rng.uniform(0.55, 0.68)
    dome = rows * rng.uniform(0.0, 0.04)
    lungs = []
    for side in (-1.0, 1.0):
        lx = cx + side * half * rng.uniform(0.42, 0.5)
        ly = top + 0.05 * rows + 0.5 * lung_h + (dome if side > 0 else 0.0)
        lungs.append(Ellipse(lx, ly, half * rng.uniform(0.36, 0.44), 0.5 * lung_h, side * 0.08))
    lung_occ = np.zeros((rows, cols), np.float32)
    for lung in lungs:
        _paint(lung_occ, lung, 1.0, 0.02 * rows, maximum=True)
    # Air lowers the attenuation; vessels and airways leave a mottled texture.
    texture = ndimage.gaussian_filter(
        rng.standard_normal((rows, cols)).astype(np.float32), max(1.0, 0.012 * rows)
    )
    texture /= max(float(texture.std()), 1e-6)
    air = np.float32(rng.uniform(0.45, 0.7))
    tissue *= 1.0 - air * lung_occ * (1.0 - 0.12 * np.clip(texture, -2.5, 2.5))
    # Heart (patient's left = image right) and mediastinum in front of the lungs.
    heart = Ellipse(
        cx + half * rng.uniform(0.08, 0.2),
        top + 0.05 * rows + lung_h * rng.uniform(0.68, 0.78),
        half * rng.uniform(0.3, 0.4),
        lung_h * rng.uniform(0.2, 0.26),
        rng.uniform(-0.4, -0.1),
    )
    _paint(tissue, heart, 0.4 * float(thick), 0.04 * rows)
    mediastinum = Capsule(cx, top, cx, top + 0.05 * rows + 0.6 * lung_h, 0.07 * cols)
    _paint(tissue, mediastinum, 0.35 * float(thick), 0.02 * rows)
    # A faint thoracic spine behind the mediastinum.
    n = int(rng.integers(12, 15))
    pitch = (rows - top) / n
    for k in range(n):
        yc = top + (k + 0.5) * pitch
        w = 0.055 * cols * (1.0 + 0.02 * k)
        body = ConvexPolygon(
            (
                (cx - w, yc - 0.38 * pitch),
                (cx + w, yc - 0.38 * pitch),
                (cx + w, yc + 0.38 * pitch),
                (cx - w, yc + 0.38 * pitch),
            )
        )
        _paint(bone, body, 0.1, edge)
    # Posterior ribs: from the spine out, up a little, then down along the chest wall.
    r_rib = max(1.2, 0.008 * rows * rng.uniform(0.8, 1.2))
    first = top + 0.02 * rows
    gap = lung_h / rng.uniform(8.5, 10.5)
    for k in range(10):
        y0 = first + k * gap
        for side in (-1.0, 1.0):
            t = np.linspace(0.0, 1.0, 10)
            xs = cx + side * (0.05 * cols + half * 0.9 * np.sin(0.5 * np.pi * t))
            ys = y0 + gap * (3.2 * t**2 - 0.7 * t)
            rib = Polyline(tuple(zip(xs.tolist(), ys.tolist(), strict=True)), r_rib)
            _paint(bone, rib, 0.12, edge)
            _ring(bone, rib, 0.15, 0.4 * r_rib, edge)
    # Clavicles, scapulae, humeral heads.
    for side in (-1.0, 1.0):
        yc = top + rows * rng.uniform(0.03, 0.07)
        pts = (
            (cx + side * 0.03 * cols, yc + 0.02 * rows),
            (cx + side * 0.15 * cols, yc),
            (cx + side * half * 0.75, yc - 0.025 * rows),
            (cx + side * half * 0.95, yc - 0.01 * rows),
        )
        _paint(bone, Polyline(pts, 0.012 * rows), 0.35, edge)
        sx = cx + side * half * 0.9
        scapula = ConvexPolygon(
            ((sx, yc), (sx - side * 0.12 * cols, yc + 0.05 * rows), (sx, yc + 0.3 * rows))
        )
        _paint(bone, scapula, 0.12, edge)
        head = Ellipse(cx + side * half * 1.05, yc + 0.02 * rows, 0.06 * cols, 0.06 * cols)
        _paint(bone, head, 0.4, edge)
        _paint(tissue, head, 0.6, 0.02 * rows)
    return tissue, bone


def _long_bone(rng: np.random.Generator, rows: int, cols: int) -> tuple[FloatArray, FloatArray]:
    """Lay out a limb on air: one or two long bones and a joint at one end."""
    tissue = np.zeros((rows, cols), np.float32)
    bone = np.zeros((rows, cols), np.float32)
    edge = max(1.0, rows / 600.0)
    angle = rng.uniform(-0.12, 0.12)
    cx = cols * rng.uniform(0.4, 0.6)
    width = cols * rng.uniform(0.35, 0.7)
    limb = Capsule(
        cx - math.sin(angle) * rows,
        -0.2 * rows,
        cx + math.sin(angle) * rows,
        1.2 * rows,
        0.5 * width,
    )
    _paint(tissue, limb, rng.uniform(0.5, 0.9), 0.06 * width)
    pair = bool(rng.random() < 0.6)
    joint_top = bool(rng.random() < 0.5)
    joint_y = rows * (rng.uniform(0.12, 0.3) if joint_top else rng.uniform(0.7, 0.88))
    bones = [(0.0, 0.16)] if not pair else [(-0.13, 0.12), (0.2, 0.06)]
    for offset, radius in bones:
        r = radius * width
        x_at = cx + offset * width
        start, stop = (joint_y, 1.2 * rows) if joint_top else (-0.2 * rows, joint_y)
        shaft = Capsule(
            x_at + math.sin(angle) * (start - rows / 2),
            start,
            x_at + math.sin(angle) * (stop - rows / 2),
            stop,
            r,
        )
        _paint(bone, shaft, 0.25, edge)
        _ring(bone, shaft, 0.55, 0.35 * r, edge)
    # Epiphyses on both sides of the joint gap.
    ex = cx + math.sin(angle) * (joint_y - rows / 2)
    gap = 0.015 * rows
    side = 1.0 if joint_top else -1.0
    for k, sign in enumerate((-side, side)):
        ey = joint_y + sign * (gap + 0.05 * rows)
        wide = 0.32 * width if k == 0 else 0.28 * width
        epiphysis = Ellipse(ex, ey, wide, 0.06 * rows)
        _paint(bone, epiphysis, 0.35, edge)
        _ring(bone, epiphysis, 0.3, 0.1 * wide, edge)
    return tissue, bone


def _hand(rng: np.random.Generator, rows: int, cols: int) -> tuple[FloatArray, FloatArray]:
    """Lay out a hand PA on air: forearm ends, carpals, metacarpals and phalanges."""
    tissue = np.zeros((rows, cols), np.float32)
    bone = np.zeros((rows, cols), np.float32)
    edge = max(1.0, rows / 600.0)
    s = min(rows, cols / 0.8)
    cx = cols * rng.uniform(0.42, 0.58)
    wrist_y = rows * rng.uniform(0.72, 0.8)
    spread = rng.uniform(0.08, 0.2)
    # Forearm and palm soft tissue.
    _paint(tissue, Capsule(cx, wrist_y, cx, 1.3 * rows, 0.16 * s), 0.6, 0.03 * s)
    palm = Ellipse(cx, wrist_y - 0.17 * s, 0.2 * s, 0.17 * s)
    _paint(tissue, palm, 0.6, 0.03 * s)
    for offset, radius in ((-0.07, 0.045), (0.06, 0.03)):
        x = cx + offset * s
        shaft = Capsule(x, wrist_y + 0.02 * s, x, 1.2 * rows, radius * s)
        _paint(bone, shaft, 0.25, edge)
        _ring(bone, shaft, 0.45, 0.3 * radius * s, edge)
    for _ in range(8):
        carpal = Ellipse(
            cx + rng.uniform(-0.09, 0.09) * s,
            wrist_y - rng.uniform(0.02, 0.09) * s,
            0.03 * s,
            0.025 * s,
            rng.uniform(0, math.pi),
        )
        _paint(bone, carpal, 0.35, edge)
    # Five rays: metacarpal and phalanges, fanning out; the thumb lower and to the side.
    lengths = (0.17, 0.13, 0.09)
    for ray in range(5):
        thumb = ray == 0
        theta = (ray - 2.2) * spread + (-(0.5 + spread) if thumb else 0.0)
        base_x = cx + (ray - 2) * 0.045 * s
        base_y = wrist_y - 0.1 * s
        x, y = base_x, base_y
        segments = (0.14, 0.1, 0.07) if thumb else (0.2, *lengths)
        radius = 0.018 * s
        for j, length in enumerate(segments):
            dx, dy = math.sin(theta) * length * s, -math.cos(theta) * length * s
            seg = Capsule(x, y, x + dx, y + dy, radius * (1.0 - 0.12 * j))
            _paint(bone, seg, 0.3, edge)
            _ring(bone, seg, 0.35, 0.3 * radius, edge)
            finger = Capsule(x, y, x + dx, y + dy, 2.2 * radius)
            _paint(tissue, finger, 0.35, 0.01 * s, maximum=True)
            gap = 0.012 * s
            x += dx + math.sin(theta) * gap
            y += dy - math.cos(theta) * gap
    return tissue, bone


_BUILDERS: dict[OtherKind, Geometry] = {
    OtherKind.CHEST_PA: _chest_pa,
    OtherKind.LONG_BONE: _long_bone,
    OtherKind.HAND: _hand,
}


# ----------------------------------------------------------------------------- drawing


def _paint(
    arr: FloatArray, shape: Shape, density: float, edge: float, *, maximum: bool = False
) -> None:
    """Add ``density`` times the soft occupancy of ``shape`` (or take the maximum)."""
    sl = window(shape.bbox(), arr.shape, 2 * edge)
    if sl is None:
        return
    y, x = grid(sl)
    occ = soft(shape.sdf(y, x), edge) * np.float32(density)
    if maximum:
        np.maximum(arr[sl], occ, out=arr[sl])
    else:
        arr[sl] += occ


def _ring(arr: FloatArray, shape: Shape, density: float, thick: float, edge: float) -> None:
    """Add a band ``thick`` pixels wide inside the outline of ``shape`` (a cortex)."""
    sl = window(shape.bbox(), arr.shape, 2 * edge)
    if sl is None:
        return
    y, x = grid(sl)
    d = shape.sdf(y, x)
    arr[sl] += soft(d, edge) * soft(np.float32(thick) - d, edge) * np.float32(density)


def _expose(
    tissue: FloatArray, bone: FloatArray, rng: np.random.Generator
) -> npt.NDArray[np.uint16]:
    """Project the attenuation maps to a 12-bit radiograph (as the spine renderer does)."""
    rows, cols = tissue.shape
    y = np.linspace(-0.5, 0.5, rows, dtype=np.float32)[:, None]
    x = np.linspace(-0.5, 0.5, cols, dtype=np.float32)[None, :]
    heel = rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.1)
    offset = rng.uniform(80.0, 260.0)
    full_scale = rng.uniform(4.4, 5.0)
    atten = tissue + np.float32(rng.uniform(0.9, 1.15)) * bone
    exposure = np.float32(_N0) * (1.0 + np.float32(heel[0]) * y + np.float32(heel[1]) * x)
    quanta = exposure * np.exp(-atten)
    quanta += np.sqrt(quanta) * rng.standard_normal((rows, cols), dtype=np.float32)
    np.maximum(quanta, 0.5, out=quanta)
    signal = np.log(np.float32(_N0) / quanta)
    signal *= np.float32((MAX_STORED - offset) / full_scale)
    signal += np.float32(offset)
    np.clip(signal, 0, MAX_STORED, out=signal)
    return np.rint(signal).astype(np.uint16)
