"""CT series selection (issue 17): the thin axial ORIGINAL series of a phantom study is chosen
by the stated rules; localizers, reformats, head CTs, tilted and gapped series are ignored with
their reasons."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from spinexr.pipeline.ct.errors import CtRefusal, UnsupportedSeriesError
from spinexr.pipeline.ct.series import (
    ELIGIBILITY,
    OUTRANKED,
    KernelClass,
    RankingRule,
    SeriesChoice,
    classify_kernel,
    select_series,
)
from spinexr.training.phantoms.ct import CtPhantom, make_ct_phantom, make_head_phantom
from spinexr.training.phantoms.ct_dicom import (
    AXIAL,
    reformat_datasets,
    series_datasets,
    study_header,
    write_ct_study,
)


@pytest.fixture(scope="module")
def phantom() -> CtPhantom:
    """Small chest/abdomen phantom, T11–L2 (about 150 mm, 2–3 mm slices)."""
    return make_ct_phantom(5, size="small", levels=("T11", "L2"), fractures=[])


def headers_of(paths: Sequence[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def as_new_series(datasets: Sequence[Dataset], tag: str, **values: object) -> list[Dataset]:
    """Copies of a series' headers under a new Series Instance UID, with values changed."""
    uid = generate_uid(entropy_srcs=[tag])
    out = []
    for ds in datasets:
        c = copy.deepcopy(ds)
        c.SeriesInstanceUID = uid
        for keyword, value in values.items():
            setattr(c, keyword, value)
        out.append(c)
    return out


def reasons(choice: SeriesChoice, uid: str) -> list[str]:
    return [r.code for r in choice.ignored[uid]]


def test_thin_axial_series_is_chosen_over_localizer_and_reformat(
    phantom: CtPhantom, tmp_path: Path
) -> None:
    files = write_ct_study(tmp_path, phantom)
    headers = headers_of([p for s in files.series for p in s.paths])
    random.Random(0).shuffle(headers)
    choice = select_series(headers)

    axial = files.role("axial")
    assert choice.series_instance_uid == axial.series_uid
    assert choice.decided_by == (ELIGIBILITY,)
    assert choice.rules == tuple(str(r) for r in RankingRule)
    chosen = choice.chosen
    assert chosen is not None and chosen.eligible and chosen.reasons == ()
    assert chosen.slices == phantom.grid.slices == chosen.instances
    assert chosen.slice_spacing_mm == pytest.approx(phantom.grid.slice_spacing, abs=1e-6)
    assert chosen.coverage_mm == pytest.approx(phantom.grid.slices * phantom.grid.slice_spacing)
    assert chosen.axial_angle_deg == pytest.approx(0.0) and chosen.tilt_deg == pytest.approx(0.0)

    localizer = files.role("localizer").series_uid
    assert reasons(choice, localizer)[0] == CtRefusal.LOCALIZER
    assert CtRefusal.TOO_FEW_SLICES in reasons(choice, localizer)
    reformat = files.role("reformat").series_uid
    assert reasons(choice, reformat) == [CtRefusal.NOT_ORIGINAL]
    assert "REFORMATTED" in choice.ignored[reformat][0].detail
    # Series in Series Number order, whatever the order of the headers.
    assert [s.series_number for s in choice.series] == [1, 2, 3]


def test_record_is_json_without_phi(phantom: CtPhantom, tmp_path: Path) -> None:
    header = study_header(phantom)
    files = write_ct_study(tmp_path, phantom, header=header)
    choice = select_series(headers_of([p for s in files.series for p in s.paths]))
    record = choice.to_dict()
    text = json.dumps(record)
    assert json.loads(text)["series_instance_uid"] == files.role("axial").series_uid
    for value in (
        str(header.patient.name),
        header.patient.patient_id,
        header.patient.birth_date,
        header.accession_number,
        "Phantom Hospital",
    ):
        assert value not in text
    assert {r["code"] for s in record["series"] for r in s["reasons"]} <= {
        str(c) for c in CtRefusal
    } | {OUTRANKED}


def test_thinner_original_series_beats_a_thicker_one(phantom: CtPhantom) -> None:
    header = study_header(phantom)
    thin = series_datasets(phantom, header)
    # The thick reformat, relabelled as an original axial acquisition.
    thick = as_new_series(reformat_datasets(phantom, header), "thick", ImageType=list(AXIAL))
    for ds in thick:
        ds.SeriesNumber = 1
    choice = select_series([*thick, *thin])
    assert choice.series_instance_uid == thin[0].SeriesInstanceUID
    assert choice.decided_by == (ELIGIBILITY, RankingRule.SLICE_SPACING)
    (reason,) = choice.ignored[thick[0].SeriesInstanceUID]
    assert reason.code == OUTRANKED and reason.detail.startswith("slice_spacing")
    assert f"{2 * phantom.grid.slice_spacing:.3f} mm" in reason.detail


def test_sharper_kernel_breaks_a_spacing_tie(phantom: CtPhantom) -> None:
    thin = series_datasets(phantom, study_header(phantom))
    soft = as_new_series(thin, "soft", ConvolutionKernel="SOFT", SeriesNumber=3)
    bone = as_new_series(thin, "bone", ConvolutionKernel="B70f", SeriesNumber=4)
    choice = select_series([*soft, *bone])
    assert choice.series_instance_uid == bone[0].SeriesInstanceUID
    assert choice.decided_by == (ELIGIBILITY, RankingRule.KERNEL)
    assert choice.chosen is not None and choice.chosen.kernel is KernelClass.SHARP
    # Equal in everything: the lower Series Number, then the UID decides.
    again = as_new_series(soft, "soft-again", SeriesNumber=5)
    tie = select_series([*again, *soft])
    assert tie.series_instance_uid == soft[0].SeriesInstanceUID
    assert tie.decided_by == (ELIGIBILITY, RankingRule.SERIES_NUMBER)


def test_head_ct_is_ignored_for_its_body_part(tmp_path: Path) -> None:
    head = make_head_phantom(2)
    files = write_ct_study(tmp_path, head)
    choice = select_series(headers_of([p for s in files.series for p in s.paths]))
    assert choice.series_instance_uid is None and choice.decided_by == ()
    axial = choice.ignored[files.role("axial").series_uid]
    assert [r.code for r in axial] == [CtRefusal.BODY_PART]
    assert "HEAD" in axial[0].detail
    with pytest.raises(UnsupportedSeriesError) as err:
        choice.require()
    assert err.value.refusal is CtRefusal.NO_ELIGIBLE_SERIES
    assert files.role("axial").series_uid in err.value.message
    # Allowing HEAD makes it eligible (the coverage rule aside).
    allowed = select_series(
        headers_of(files.role("axial").paths), allowed_body_parts={"HEAD"}, min_coverage_mm=10.0
    )
    assert allowed.series_instance_uid == files.role("axial").series_uid


def test_absent_body_part_is_refused_unless_allowed(phantom: CtPhantom) -> None:
    thin = series_datasets(phantom, study_header(phantom))
    for ds in thin:
        del ds.BodyPartExamined
    refused = select_series(thin)
    assert refused.series_instance_uid is None
    assert reasons(refused, thin[0].SeriesInstanceUID) == [CtRefusal.BODY_PART]
    assert select_series(thin, allow_absent_body_part=True).series_instance_uid is not None


def test_free_text_body_part_is_not_echoed(phantom: CtPhantom) -> None:
    thin = series_datasets(phantom, study_header(phantom))
    for ds in thin:
        ds.BodyPartExamined = "DOE JOHN"
    (reason,) = select_series(thin).ignored[thin[0].SeriesInstanceUID]
    assert "DOE" not in reason.detail and "(other value)" in reason.detail
    # Compacted spellings of allowed parts are accepted.
    for ds in thin:
        ds.BodyPartExamined = "CHEST_ABDOMEN"
    assert select_series(thin).series_instance_uid == thin[0].SeriesInstanceUID


def test_gapped_series_is_ignored_with_missing_slices(phantom: CtPhantom) -> None:
    gapped = series_datasets(phantom, study_header(phantom), missing=[30, 31, 40])
    choice = select_series(gapped)
    (reason,) = choice.ignored[gapped[0].SeriesInstanceUID]
    assert reason.code == CtRefusal.MISSING_SLICES
    assert reason.detail.startswith("3 slice(s) missing in 2 gap(s)")


def test_tilted_series_is_ignored_with_its_tilt() -> None:
    tilted = make_ct_phantom(4, size="small", levels=("T10", "L1"), tilt_deg=15.0)
    datasets = series_datasets(tilted, study_header(tilted))
    for ds in datasets:
        ds.GantryDetectorTilt = "0"  # the tag is not what decides
    choice = select_series(datasets)
    facts = choice.series[0]
    assert [r.code for r in facts.reasons] == [CtRefusal.TILTED]
    assert facts.tilt_deg == pytest.approx(15.0, abs=0.01)
    assert facts.axial_angle_deg == pytest.approx(15.0, abs=0.01)
    assert "15.00°" in facts.reasons[0].detail


def test_sagittal_series_is_not_axial(phantom: CtPhantom) -> None:
    thin = series_datasets(phantom, study_header(phantom))
    # Rotate every plane to sagittal (rows along y, columns along −z), stacked along x.
    for k, ds in enumerate(thin):
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [k * 2.0, 0, 0]
    (facts,) = select_series(thin).series
    assert [r.code for r in facts.reasons] == [CtRefusal.NOT_AXIAL]
    assert facts.axial_angle_deg == pytest.approx(90.0)


def test_short_and_sparse_series_are_ignored(phantom: CtPhantom) -> None:
    thin = series_datasets(phantom, study_header(phantom))[:10]
    (facts,) = select_series(thin).series
    assert [r.code for r in facts.reasons] == [CtRefusal.TOO_FEW_SLICES, CtRefusal.SHORT_COVERAGE]


def test_non_ct_instances_are_ignored(phantom: CtPhantom) -> None:
    dose = Dataset()
    dose.SOPClassUID = pydicom.uid.XRayRadiationDoseSRStorage
    dose.SOPInstanceUID = generate_uid(entropy_srcs=["dose"])
    dose.SeriesInstanceUID = generate_uid(entropy_srcs=["dose-series"])
    dose.SeriesNumber = 999
    thin = series_datasets(phantom, study_header(phantom))
    choice = select_series([dose, *thin])
    assert choice.series_instance_uid == thin[0].SeriesInstanceUID
    assert reasons(choice, dose.SeriesInstanceUID) == [CtRefusal.NOT_CT]


def test_missing_geometry_is_an_invalid_header(phantom: CtPhantom) -> None:
    thin = series_datasets(phantom, study_header(phantom))
    del thin[3].ImagePositionPatient
    (facts,) = select_series(thin).series
    assert [r.code for r in facts.reasons] == [CtRefusal.INVALID_HEADER]


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("BONE", KernelClass.SHARP),
        ("BONEPLUS", KernelClass.SHARP),
        ("LUNG", KernelClass.SHARP),
        ("STANDARD", KernelClass.STANDARD),
        ("SOFT", KernelClass.SOFT),
        ("B70f", KernelClass.SHARP),
        ("B40f", KernelClass.STANDARD),
        ("B31f", KernelClass.SOFT),
        (["Br64d", "3"], KernelClass.SHARP),
        (["Br40d", "3"], KernelClass.STANDARD),
        ("I70f", KernelClass.SHARP),
        ("FC30", KernelClass.SHARP),
        ("FC08", KernelClass.STANDARD),
        ("FC52", KernelClass.SHARP),
        ("FC08-H", KernelClass.STANDARD),
        ("A", KernelClass.SOFT),
        ("B", KernelClass.STANDARD),
        ("YD", KernelClass.SHARP),
        ("L", KernelClass.SHARP),
        ("BODY FILTER 3", KernelClass.UNKNOWN),
        ("", KernelClass.UNKNOWN),
        (None, KernelClass.UNKNOWN),
    ],
)
def test_kernel_classes(kernel: str | list[str] | None, expected: KernelClass) -> None:
    assert classify_kernel(kernel) is expected
    assert KernelClass.SHARP.preference < KernelClass.STANDARD.preference
    assert KernelClass.STANDARD.preference < KernelClass.UNKNOWN.preference
    assert KernelClass.UNKNOWN.preference < KernelClass.SOFT.preference


def test_complete_thicker_series_is_chosen_over_a_gapped_thin_one(phantom: CtPhantom) -> None:
    header = study_header(phantom)
    gapped = series_datasets(phantom, header, missing=[20])
    thick = as_new_series(reformat_datasets(phantom, header), "thick", ImageType=list(AXIAL))
    choice = select_series([*gapped, *thick])
    assert choice.series_instance_uid == thick[0].SeriesInstanceUID
    assert choice.decided_by == (ELIGIBILITY,)
    assert reasons(choice, gapped[0].SeriesInstanceUID) == [CtRefusal.MISSING_SLICES]
