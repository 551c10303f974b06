"""`evaluate_keypoints` end to end with real protocol-implementing models and records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from spinexr.pipeline.vertebrae.objects import DetectedObject, KeypointModel, ObjectKind
from spinexr.training.vertebrae.evaluate import REPORT_NAME, evaluate_keypoints, format_report
from spinexr.training.vertebrae.records import AnnotatedObject, KeypointRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVELS = ("L1", "L2", "L3", "L4", "L5")


def _vertebra(cx: float, cy: float, g: float = 1.0) -> np.ndarray:
    """Six keypoints of a 30 × 20 px body centred on (cx, cy), anterior height 20·g."""
    out = []
    for x, h in ((cx - 15, 20 * g), (cx, 20.0), (cx + 15, 20.0)):
        out += [(x, cy - h / 2), (x, cy + h / 2)]
    return np.array(out)


def _records() -> list[KeypointRecord]:
    """Four studies of one image: L1–L5 and S1; s0 has L2 at G 0.65, s1 L3 at G 0.78."""
    fractures = {0: {1: 0.65}, 1: {2: 0.78}, 2: {}, 3: {}}
    out = []
    for k in range(4):
        objects = [
            AnnotatedObject(
                ObjectKind.VERTEBRA, LEVELS[i], _vertebra(100, 50 + 30 * i, fractures[k].get(i, 1))
            )
            for i in range(5)
        ]
        objects.append(AnnotatedObject(ObjectKind.SACRUM, "S1", _vertebra(100, 200)))
        out.append(
            KeypointRecord(
                study=f"s{k}",
                series=f"se{k}",
                image=f"im{k}",
                display=np.full((8, 8), k, dtype=np.uint8),  # the pixel value names the record
                spacing_mm=None if k == 3 else (0.5, 0.5),
                objects=objects[::-1],  # any order
                split="test",
            )
        )
    return out


class OffsetModel:
    """Returns each record's ground truth moved by a fixed offset (optionally incomplete)."""

    def __init__(
        self,
        records: list[KeypointRecord],
        offset: tuple[float, float],
        *,
        drop_top: bool = False,
        sacrum: bool = True,
    ) -> None:
        self._records = records
        self._offset = np.array(offset)
        self._drop_top = drop_top
        self._sacrum = sacrum

    @property
    def name(self) -> str:
        return "offset-model 1"

    def predict(
        self, image: npt.NDArray[np.uint8], spacing_mm: tuple[float, float] | None
    ) -> list[DetectedObject]:
        record = self._records[int(image[0, 0])]
        assert record.spacing_mm == spacing_mm
        vertebrae = record.vertebrae[1:] if self._drop_top else record.vertebrae
        out = [
            DetectedObject(ObjectKind.VERTEBRA, 0.9, o.keypoints + self._offset) for o in vertebrae
        ]
        if self._sacrum and record.sacrum is not None:
            out.append(DetectedObject(ObjectKind.SACRUM, 0.8, record.sacrum.keypoints))
        return out


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        assert len(np.unique(np.asarray(im.convert("L")))) > 10


def test_evaluate_keypoints_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _records()
    good: KeypointModel = OffsetModel(records, (1.0, 0.0))
    partial: KeypointModel = OffsetModel(records, (2.0, 0.0), drop_top=True, sacrum=False)
    report = evaluate_keypoints(
        {"pisov": good, "krcnn": partial}, records, tmp_path / "out", n_bootstrap=50, seed=3
    )
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed and "krcnn" in printed

    on_disk = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert on_disk["models"].keys() == {"pisov", "krcnn"}
    assert format_report(on_disk) == format_report(report)
    assert on_disk["data"]["images"] == 4
    assert on_disk["data"]["images_without_spacing"] == 1
    assert on_disk["data"]["splits"] == {"test": 4}

    a = on_disk["models"]["pisov"]
    assert a["algorithm"] == "offset-model 1"
    assert a["detection"]["recall"]["value"] == 1.0
    assert a["detection"]["precision"]["value"] == 1.0
    assert a["localisation"]["centre_error_mm"]["value"] == pytest.approx(0.5)  # 1 px × 0.5 mm
    assert a["counts"]["matched_with_spacing"] == 15
    assert a["height_mae_mm"]["overall"]["value"] == pytest.approx(0.0)
    for task in ("at_least_mild", "at_least_moderate"):
        for level in ("vertebra", "patient"):
            assert a["fractures"][task][level]["auroc"]["value"] == pytest.approx(1.0)
    assert a["grades"]["accuracy"] == 1.0
    assert a["levels"]["accuracy"] == 1.0
    assert a["levels"]["rules"] == {"sacrum": 4}

    b = on_disk["models"]["krcnn"]
    assert b["detection"]["recall"]["value"] == pytest.approx(16 / 20)
    assert b["detection"]["precision"]["value"] == 1.0
    assert b["localisation"]["centre_error_mm"]["value"] == pytest.approx(1.0)
    assert b["levels"]["level_established"] == 0
    assert b["levels"]["accuracy"] == 0.0
    assert b["levels"]["rules"] == {"from_top": 4}
    ci = b["detection"]["recall"]["ci95"]
    assert ci[0] <= 0.8 <= ci[1]

    files = on_disk["files"]
    for key in (
        "roc_vertebra_at_least_mild",
        "roc_patient_at_least_mild",
        "roc_vertebra_at_least_moderate",
        "roc_patient_at_least_moderate",
        "bland_altman_pisov",
        "bland_altman_krcnn",
    ):
        _check_png(tmp_path / "out" / files[key])
    assert files["report"] == REPORT_NAME


def test_without_output_folder_or_level_naming(tmp_path: Path) -> None:
    records = _records()
    report = evaluate_keypoints(
        {"pisov": OffsetModel(records, (0.0, 0.0))},
        records,
        None,
        n_bootstrap=0,
        progress=False,
        level_namer=None,
    )
    m = report["models"]["pisov"]
    assert m["levels"] is None
    assert m["localisation"]["centre_error_mm"]["value"] == 0.0
    assert m["detection"]["recall"]["ci95"] == [None, None]
    assert report["files"] == {}
    assert "not named" in format_report(report)
    with pytest.raises(ValueError, match="no models"):
        evaluate_keypoints({}, records, None)
