"""CT studies: storescu → `serve` → Comprehensive 3D SR + reformat SC + GSPS at a storescp.

The node runs the embedded default with a bundle whose lesion models are tiny random ones and
whose CT models are the demo bundle's (`ct_models_support.demo_ct_models`: the localiser and
the CT keypoint model trained here exactly as the demo trains them, cached). Four studies:

- a chest CT phantom with a localizer, the thin axial series and a thick reformat; a severe
  and a moderate wedge fracture at known levels: the SR (Comprehensive 3D SR)
  reports every measurable vertebra with its true grade, its SCOORD3D points inside the
  volume and on the right vertebra, the axial series chosen and the others ignored with
  their reasons; the reformat Secondary Capture and its GSPS arrive, the GSPS labels the
  fractured vertebrae by grade;
- a tilted series (gantry tilt): "not analysed: tilted";
- a series with missing slices: "not analysed: missing slices";
- a head CT without Body Part Examined: the localiser finds no column, "no_spine".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from ct_models_support import deliver_ct_studies, demo_ct_models
from pipelinesupport import build_tiny_bundle

from spinexr.node.outputs.readback import read_ct_analysis, read_ct_vertebrae
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade
from spinexr.training.ct.bundle import add_ct_to_bundle
from spinexr.training.ct.keypoints import gradable
from spinexr.training.phantoms.ct import make_ct_phantom, make_head_phantom
from spinexr.training.phantoms.ct_anatomy import LevelFracture
from spinexr.training.phantoms.ct_dicom import write_ct_study

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
]

# Away from the grade bounds (0.60, 0.75): the demo's CT model measures G within about 0.1
# on fractured vertebrae (training/README, "Spine on CT"), so a fracture at a bound could
# fall either side of it.
FRACTURES = (
    LevelFracture("T8", 0.45, Deformity.WEDGE),
    LevelFracture("T10", 0.65, Deformity.WEDGE),
)


def _files(study) -> list[str]:
    return [str(p) for s in study.series for p in s.paths]


def test_ct_studies_reach_the_pacs_with_grades_and_stated_refusals(tmp_path: Path) -> None:
    localiser, keypoints = demo_ct_models()
    bundle = build_tiny_bundle(tmp_path / "bundle")
    add_ct_to_bundle(bundle.directory, localiser, keypoints, {})

    fractured = make_ct_phantom(5, levels=("T5", "T11"), fractures=FRACTURES, scoliosis=False)
    main = write_ct_study(tmp_path / "main", fractured)
    tilted = write_ct_study(
        tmp_path / "tilted",
        make_ct_phantom(11, levels=("T6", "T10"), tilt_deg=15.0, fractures=()),
        distractors=False,
    )
    gapped = write_ct_study(
        tmp_path / "gapped",
        make_ct_phantom(12, levels=("T6", "T10"), fractures=()),
        distractors=False,
        missing=(20, 21, 22),
    )
    head = write_ct_study(tmp_path / "head", make_head_phantom(13), distractors=False)
    for path in _files(head):  # a header that names no body part: the images decide
        ds = pydicom.dcmread(path)
        del ds.BodyPartExamined
        ds.save_as(path)

    def delivered(received: list[pydicom.Dataset]) -> bool:
        srs = [ds for ds in received if ds.Modality == "SR"]
        return len(srs) >= 4 and len(received) - len(srs) >= 2

    by_study = deliver_ct_studies(
        tmp_path,
        bundle.directory,
        [main, tilted, gapped, head],
        delivered,
        "4 SRs, the reformat and its GSPS",
    )

    # --- the fractured study
    objects = by_study[main.study_uid]
    (sr,) = [ds for ds in objects if ds.Modality == "SR"]
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    analysis = read_ct_analysis(sr)
    assert analysis is not None and analysis.status == "analysed", analysis
    axial = main.role("axial").series_uid
    assert f"CT series {axial}" in analysis.note
    assert main.role("localizer").series_uid in analysis.note and "localizer" in analysis.note
    assert main.role("reformat").series_uid in analysis.note and "not_original" in analysis.note
    reported = read_ct_vertebrae(sr)
    truth = gradable(fractured)
    assert len(truth) - 1 <= len(reported) <= len(truth), (len(reported), len(truth))
    frame = str(pydicom.dcmread(main.role("axial").paths[0]).FrameOfReferenceUID)
    affine = fractured.grid.affine()
    inverse = np.linalg.inv(affine)
    matched = {}
    for vertebra in reported:
        assert vertebra.frame_of_reference_uid == frame
        centre = np.asarray(vertebra.centre)
        nearest = min(truth, key=lambda t: float(np.linalg.norm(t.keypoints.mean(0) - centre)))
        distance = float(np.linalg.norm(nearest.keypoints.mean(0) - centre))
        assert distance < 5.0, (vertebra.tracking_id, nearest.level, distance)
        # every point of the vertebra lies inside the volume
        points = np.asarray(vertebra.outline)
        index = (np.c_[points, np.ones(len(points))] @ inverse.T)[:, :3]
        assert (index >= -0.5).all() and (index <= np.array(fractured.hu.shape) - 0.5).all()
        matched[nearest.level] = vertebra
    assert len(matched) == len(reported)  # one reported vertebra per true one
    for level, vertebra in matched.items():
        assert vertebra.grade is fractured.vertebra(level).grade, level
    assert matched["T8"].grade is GenantGrade.SEVERE
    assert matched["T10"].grade is GenantGrade.MODERATE
    assert analysis.worst_grade is GenantGrade.SEVERE

    (sc,) = [ds for ds in objects if ds.Modality == "OT"]
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert {str(item.ReferencedSOPInstanceUID) for item in sc.SourceImageSequence} == {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in main.role("axial").paths
    }
    (gsps,) = [ds for ds in objects if ds.Modality == "PR"]
    assert str(
        gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
    ) == str(sc.SOPInstanceUID)
    texts = [
        str(t.UnformattedTextValue)
        for ann in gsps.GraphicAnnotationSequence
        for t in ann.get("TextObjectSequence", [])
    ]
    for level, grade in (("T8", "severe"), ("T10", "moderate")):
        number = matched[level].number
        assert any(t.startswith(f"#{number} G ") and grade in t for t in texts), texts
    uids = {
        str(g.TrackingUID)
        for ann in gsps.GraphicAnnotationSequence
        for g in ann.get("GraphicObjectSequence", [])
    }
    assert uids == {v.tracking_uid for v in reported}

    # --- the refusals: each study gets its SR with the stated reason, and nothing else
    for study, status, reason in (
        (tilted, "refused", "tilted"),
        (gapped, "refused", "missing_slices"),
        (head, "no_spine", "no_spine"),
    ):
        objects = by_study[study.study_uid]
        assert [ds.Modality for ds in objects] == ["SR"], [ds.Modality for ds in objects]
        found = read_ct_analysis(objects[0])
        assert found is not None, study.root
        assert found.status in (status, "no_eligible_series"), found
        assert reason in found.note, found.note
        assert read_ct_vertebrae(objects[0]) == []
