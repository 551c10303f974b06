"""The study page's vertebral fracture section and keypoint overlay, from hand-built results.

A stand-in for the models returns the hand-made lesion result of ``outputs_support`` with a
vertebral analysis on each image (the lateral view analysed, the AP view not); the real job
runner stores it and the page is fetched through the node's app.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
from outputs_support import Variant, abnormal_result, make_study
from pipelinesupport import RadiographsOnly
from pydicom.dataset import Dataset

from spinexr.node.db.models import Job
from spinexr.node.db.states import JobState
from spinexr.node.db.timeline import transition
from spinexr.node.http.admin.pages import make_templates
from spinexr.node.http.admin.vertebrae import (
    GRADE_COLOURS,
    NO_VALUE,
    ImageVertebrae,
    image_vertebrae,
)
from spinexr.node.ingest.assembler import StudyAssembler, model_identity
from spinexr.node.jobs.runner import JobRunner
from spinexr.node.outputs.vertebrae_gsps import label_box, vertebra_label
from spinexr.pipeline.results import StudyResult
from spinexr.pipeline.spacing import SpacingBasis
from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.findings import (
    LevelRule,
    VertebraFinding,
    VertebralAnalysis,
    VertebralStatus,
    ViewSource,
)
from spinexr.pipeline.vertebrae.genant import GenantGrade

SPACING = (0.2, 0.2)
AP_REASON = "an AP view (ViewPosition AP): not analysed for vertebral fractures"


def vertebra(
    number: int,
    x: float,
    top: float,
    h: tuple[float, float, float],
    *,
    level: str | None = None,
    spacing: tuple[float, float] | None = SPACING,
) -> VertebraFinding:
    """A body 60 px deep at ``(x, top)`` whose heights in pixels are ``h``, graded by `genant`."""
    kp: list[tuple[float, float]] = []
    centre = top + max(h) / 2
    for dx, height in zip((0.0, 30.0, 60.0), h, strict=True):
        kp += [(x + dx, centre - height / 2), (x + dx, centre + height / 2)]
    hs = genant.heights(kp)
    g = genant.genant_index(hs)
    return VertebraFinding(
        number=number,
        level=level,
        score=0.9 + number / 100,
        keypoints=kp,
        heights_px=hs,
        heights_mm=None if spacing is None else genant.heights(kp, spacing),
        genant_index=g,
        grade=genant.grade(g),
        deformity=genant.deformity(hs),
    )


def lateral_analysis(rows: int, cols: int) -> VertebralAnalysis:
    """Three lumbar bodies, normal, mild (crush) and severe (wedge), named from the sacrum."""
    x = round(0.4 * cols)
    return VertebralAnalysis(
        status=VertebralStatus.ANALYSED,
        view="lateral",
        view_source=ViewSource.VIEW_POSITION,
        spacing_basis=SpacingBasis.PIXEL_SPACING,
        spacing_mm=SPACING,
        level_rule=LevelRule.SACRUM,
        vertebrae=[
            vertebra(1, x, 0.15 * rows, (50, 48, 51), level="L3"),
            vertebra(2, x + 4, 0.40 * rows, (50, 49, 39), level="L4"),
            vertebra(3, x + 8, 0.65 * rows, (25, 40, 50), level="L5"),
        ],
        model="pisov-keypoints 0.1",
    )


AP = VertebralAnalysis(
    status=VertebralStatus.NOT_LATERAL,
    reason=AP_REASON,
    view="ap",
    view_source=ViewSource.VIEW_POSITION,
)


class WithVertebrae(RadiographsOnly):
    """Stands in for the models: the hand-made lesion result plus vertebral analyses."""

    def analyze_study(
        self, sources: Sequence[Dataset], study_instance_uid: str | None = None
    ) -> StudyResult:
        ordered = sorted(sources, key=lambda ds: str(ds.SOPInstanceUID))
        result = abnormal_result(ordered)
        ap, lateral = result.images
        images = [
            ap.model_copy(update={"vertebrae": AP}),
            lateral.model_copy(
                update={"vertebrae": lateral_analysis(ordered[1].Rows, ordered[1].Columns)}
            ),
        ]
        return StudyResult.model_validate(result.model_copy(update={"images": images}).model_dump())


class Svg(HTMLParser):
    """Collects the overlay's groups: their attributes, lines, circles and label text."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[dict[str, Any]] = []
        self.viewboxes: list[str] = []
        self._text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and "vx-overlay" in (a.get("class") or ""):
            self.viewboxes.append(str(a["viewbox"]))
        elif tag == "g" and "vx-vertebra" in (a.get("class") or ""):
            self.groups.append({"attrs": a, "lines": [], "circles": [], "text": "", "at": {}})
        elif tag == "line" and self.groups:
            self.groups[-1]["lines"].append(
                tuple(float(a[k] or "nan") for k in ("x1", "y1", "x2", "y2"))
            )
        elif tag == "circle" and self.groups:
            self.groups[-1]["circles"].append((float(a["cx"] or "nan"), float(a["cy"] or "nan")))
        if tag == "text" and self.groups:
            self.groups[-1]["at"] = a
        self._text = tag == "text"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        if self._text and self.groups:
            self.groups[-1]["text"] += data

    def handle_endtag(self, tag: str) -> None:
        self._text = False


def overlay_of(page: str) -> Svg:
    parser = Svg()
    parser.feed(page)
    return parser


def analyse_with_vertebrae(world) -> tuple[str, list[Dataset]]:
    """Receive a second study and run its job with `WithVertebrae` (the real runner)."""
    sources = make_study(13, Variant())
    uid = world.ingest(sources)
    settings, sessions = world.stack.settings, world.stack.sessions
    job_id = StudyAssembler(
        settings, sessions, model_identity(settings.models.bundle)
    ).force_complete(uid)
    assert job_id is not None
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, JobState.QUEUED)
        s.commit()
    runner = JobRunner(settings, sessions, WithVertebrae)
    assert runner.claim(job_id) == job_id
    assert runner.run(job_id).state is JobState.BUILT
    world.login()
    return uid, sorted(sources, key=lambda ds: str(ds.SOPInstanceUID))


@pytest.fixture
def vertebral_study(world) -> tuple[str, list[Dataset]]:
    """The study of `analyse_with_vertebrae` in the default world (GSPS built)."""
    return analyse_with_vertebrae(world)


def test_study_page_lists_vertebrae_with_grades_and_the_reason_for_the_ap_view(
    world, vertebral_study
) -> None:
    uid, _sources = vertebral_study
    r = world.client.get(f"/admin/studies/{uid}")
    assert r.status_code == 200
    page = html.unescape(r.text)
    assert page.count("<h3>Vertebral fractures</h3>") == 2
    assert f"Not analysed for vertebral fractures: {AP_REASON}" in page

    rows = page.split('<tr class="vx-row">')[1:]
    assert len(rows) == 3
    cells = [[c.split("</td>")[0] for c in row.split("<td")[1:]] for row in rows]
    assert [c[0] for c in cells] == [">L3", ">L4", ">L5"]
    assert cells[0][1:4] == [' class="num">10.0', ' class="num">9.6', ' class="num">10.2']
    # G, grade badge, deformity, score.
    assert cells[1][4:] == [
        ' class="num">0.78',
        '><span class="grade mild">mild</span>',
        ">crush",
        ' class="num">0.92',
    ]
    assert cells[2][4:6] == [' class="num">0.50', '><span class="grade severe">severe</span>']
    assert cells[2][6] == ">wedge"
    assert 'Worst grade <span class="grade severe">severe</span>' in page
    assert "normal 1, mild 1, moderate 0, severe 1" in page
    assert "<dd>lateral (ViewPosition)</dd>" in page
    assert "<dd>PixelSpacing (0.200 × 0.200 mm)</dd>" in page
    assert "<dd>levels from the sacrum</dd>" in page
    assert "<dd>pisov-keypoints 0.1</dd>" in page
    # Nothing the CSP would block, nothing that needs the network.
    assert (
        " style=" not in r.text
        and "<script" not in r.text
        and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )

    # The first study (a result without vertebral analyses) has no such section.
    first = world.client.get(f"/admin/studies/{world.analysed_uid}").text
    assert "Vertebral fractures" not in first and "vx-overlay" not in first


def test_overlay_draws_height_lines_and_keypoints_in_image_pixels(world, vertebral_study) -> None:
    uid, (_ap, lateral) = vertebral_study
    page = world.client.get(f"/admin/studies/{uid}").text
    svg = overlay_of(page)
    assert svg.viewboxes == [f"0 0 {int(lateral.Columns)} {int(lateral.Rows)}"]  # lateral only
    expected = lateral_analysis(lateral.Rows, lateral.Columns).vertebrae
    assert len(svg.groups) == len(expected)
    for group, v in zip(svg.groups, expected, strict=True):
        attrs = group["attrs"]
        assert attrs["stroke"] == GRADE_COLOURS[v.grade] == attrs["fill"]
        assert f"grade-{v.grade.value}" in attrs["class"]
        kp = v.keypoints
        lines = [(*kp[2 * i], *kp[2 * i + 1]) for i in range(3)]
        drawn = np.asarray(group["lines"])
        assert drawn.shape == (3, 4) and np.allclose(drawn, lines, atol=0.01)
        points = np.asarray(group["circles"])
        assert points.shape == (6, 2) and np.allclose(points, kp, atol=0.01)
        # The label: the GSPS's text, in the GSPS's label box.
        left, top, right, bottom = label_box(v, int(lateral.Rows), int(lateral.Columns))
        at = group["at"]
        assert group["text"] == vertebra_label(v)
        assert float(at["x"]) == pytest.approx(left, abs=0.06)
        assert float(at["y"]) == pytest.approx((top + bottom) / 2, abs=0.06)
        assert float(at["textlength"]) == pytest.approx(right - left, abs=0.06)
        assert 0 <= left < right <= int(lateral.Columns)
    assert [g["text"] for g in svg.groups] == [
        "L3 G 0.94 normal",
        "L4 G 0.78 mild crush",
        "L5 G 0.50 severe wedge",
    ]
    # The overlay sits inside the preview's frame, after its switch, which is off: the
    # preview is rendered from the GSPS, which draws the same lines.
    toggle, frame = page.split('class="vx-toggle"')[1].split(">", 1)
    assert "checked" not in toggle
    assert "the preview already shows the GSPS height lines" in frame
    assert (
        frame.index('<div class="frame">')
        < frame.index(f"instances/{lateral.SOPInstanceUID}/preview.png")
        < frame.index('<svg class="vx-overlay"')
    )


def test_overlay_is_switched_on_when_the_preview_has_no_gsps(make_world) -> None:
    world = make_world(output={"sr": True, "gsps": False})
    uid, _sources = analyse_with_vertebrae(world)
    page = world.client.get(f"/admin/studies/{uid}").text
    toggle, frame = page.split('class="vx-toggle"')[1].split(">", 1)
    assert "checked" in toggle and "GSPS" not in frame.split("</label>")[0]
    assert len(overlay_of(page).groups) == 3


def test_preview_png_still_serves_for_an_image_with_an_overlay(world, vertebral_study) -> None:
    uid, (_ap, lateral) = vertebral_study
    png = world.client.get(f"/admin/studies/{uid}/instances/{lateral.SOPInstanceUID}/preview.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


# ----------------------------------------------------------------------------- view model


def test_unestablished_levels_without_spacing_show_numbers_and_no_mm() -> None:
    analysis = VertebralAnalysis(
        status=VertebralStatus.ANALYSED,
        view="lateral",
        view_source=ViewSource.IMAGE_MODEL,
        view_score=0.97,
        vertebrae=[
            vertebra(1, 5, 20, (40, 42, 41), spacing=None),
            vertebra(2, 300, 90, (42, 30, 41), spacing=None),
        ],
    )
    view = image_vertebrae(analysis, rows=400, columns=500)
    assert [r.label for r in view.rows] == [
        "#1 (level not established)",
        "#2 (level not established)",
    ]
    assert view.rows[0].heights_mm == (NO_VALUE, NO_VALUE, NO_VALUE)
    assert view.spacing == "no spacing: ratios and grades only"
    assert view.levels == "numbered from the top: level not established"
    assert view.view == "lateral (image model 0.97)"
    assert view.worst == "moderate"
    assert view.counts == [("normal", 1), ("mild", 0), ("moderate", 1), ("severe", 0)]
    assert view.rows[1].overlay_text == "#2 G 0.71 moderate biconcave"
    assert view.rows[1].colour == GRADE_COLOURS[GenantGrade.MODERATE]
    # A body at the left edge is labelled on its right; others on their anterior (left).
    first, second = (r.place for r in view.rows)
    assert first is not None and first.x > 65
    assert second is not None and second.x + second.width < 300
    assert view.overlay and view.width == 500 and view.height == 400

    section = make_templates().env.get_template("vertebrae.html").module.section  # type: ignore[attr-defined]
    text = html.unescape(str(section(view, "1.2.3")))
    assert "<td>#1 (level not established)</td>" in text
    assert text.count(f'<td class="num">{NO_VALUE}</td>') == 6
    assert "<dd>no spacing: ratios and grades only</dd>" in text
    assert "<dd>numbered from the top: level not established</dd>" in text


def test_spacing_and_view_wording() -> None:
    base = lateral_analysis(400, 300)
    magnified = base.model_copy(
        update={
            "spacing_basis": SpacingBasis.IMAGER_PIXEL_SPACING,
            "spacing_mm": (0.136, 0.136),
            "magnification_factor": 1.1,
        }
    )
    assert image_vertebrae(magnified).spacing == (
        "ImagerPixelSpacing ÷ magnification 1.10 (0.136 × 0.136 mm)"
    )
    raw = base.model_copy(update={"spacing_basis": SpacingBasis.IMAGER_PIXEL_SPACING})
    assert image_vertebrae(raw).spacing == (
        "ImagerPixelSpacing (not corrected for magnification) (0.200 × 0.200 mm)"
    )
    consulted = base.model_copy(update={"view_source": ViewSource.VIEW_CODE, "view_score": 0.88})
    assert image_vertebrae(consulted).view == "lateral (ViewCodeSequence; image model 0.88)"
    # Without the image size there is no overlay, the table stays.
    unsized: ImageVertebrae = image_vertebrae(base)
    assert not unsized.overlay and len(unsized.rows) == 3
    assert all(r.place is None for r in unsized.rows)
    failed = image_vertebrae(
        VertebralAnalysis(status=VertebralStatus.NO_VERTEBRAE, reason="no vertebra found")
    )
    assert not failed.analysed and not failed.overlay and failed.reason == "no vertebra found"
