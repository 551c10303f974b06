"""What a radiologist sees of the node's results in OHIF v3, in a real (headless) browser.

The rig (``tests/ohif_support.py``): a throw-away Orthanc with its DICOMweb plugin holds what
a PACS holds after the node answered a phantom spine study (AP + lateral, three displayed
boxes and one kept but not displayed): the two images, the node's SR and its two GSPS, built by
``build_outputs`` with the default output profile. Orthanc also serves the published OHIF
build at ``/ohif/`` (``scripts/viewer-deps.sh`` caches it). Chromium opens the study in
OHIF's viewer, opens the SR from the study browser as a radiologist would (double-click,
then "Yes" to track its measurements), and the test checks

* in the DOM: OHIF's measurement panel lists one entry per located result of the SR, in the
  SR's order, titled with its finding (the SR's Finding code meaning): the study's
  abnormality and each image's (drawn as a frame around the whole image), then each
  displayed box;
* in pixels: clicking a box's entry shows the box's own image with the box drawn where the SR
  puts it (Cornerstone's annotation colours along all four sides of the SR rectangle mapped
  through the viewport's camera, none inside), and the box that is not displayed is not
  drawn; clicking an abnormality entry shows its image.

The first test opens the SR exactly as the node builds it (``docs/viewers.md`` says which
encoding choices make that work) and checks that OHIF lists the GSPS series but draws none of
its boxes. The second shows that the pixel check fails for a box drawn 150 pixels away from
where the node found it. The third opens the burned-in Secondary Capture
(``output.secondary_capture``) and finds the boxes in their class colours. Screenshots go to
``test-artifacts/viewers/``. ``make test`` runs them, ``make viewer-check`` runs only them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ohif_support import (
    OhifRig,
    annotation_mask,
    box_findings,
    colour_mask,
    console,
    edge_coverage,
    headless_chromium,
    interior_share,
    measurement_groups,
    plain,
    wait_until,
)
from outputs_support import (
    Variant,
    abnormal_result,
    make_settings,
    make_study,
)
from pydicom.dataset import Dataset
from testsupport import make_orthanc
from vertebrae_outputs_support import AP_NOT_LATERAL, lateral_analysis, with_vertebrae

from spinexr.node.outputs.boxes import CLASS_COLOURS
from spinexr.node.outputs.build import build_outputs
from spinexr.node.outputs.readback import read_vertebrae

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "viewers"

# The image -> screen mapping of the viewport showing SOP Instance ``uid`` (null when none
# does): Cornerstone's own camera, the one it draws the image pixels with.
MAP_JS = """
const [uid, points] = arguments;
const cs = window.cornerstone;
if (!cs || !cs.getEnabledElements) return null;
for (const el of cs.getEnabledElements()) {
  const vp = el.viewport;
  const id = vp.getCurrentImageId ? vp.getCurrentImageId() : null;
  if (!id || !id.includes('/instances/' + uid + '/')) continue;
  const r = vp.canvas.getBoundingClientRect();
  return {
    rect: [r.left, r.top, r.right, r.bottom],
    points: points.map(p => {
      const c = vp.worldToCanvas(cs.utilities.imageToWorldCoords(id, p));
      return [r.left + c[0], r.top + c[1]];
    }),
  };
}
return null;
"""


class SRNotShownError(Exception):
    """OHIF did not show the SR's boxes as tracked measurements (what it did say is in the
    message: the viewer's error, its console)."""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OhifRig]:
    rig = OhifRig(make_orthanc(tmp_path_factory.mktemp("ohif")))
    try:
        yield rig.start()
    finally:
        rig.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium() as driver:
        yield driver


def store_node_answer(
    rig: OhifRig,
    seed: int,
    *,
    sr_for_pacs=plain,
    secondary_capture: bool = False,
    vertebrae: bool = False,
) -> tuple[list, Any, Dataset, list]:
    """Store a phantom study and the node's answer to it (default profile: SR + GSPS; with
    ``secondary_capture`` the Secondary Captures too).

    Returns the sources, the result, the SR as stored (``sr_for_pacs`` of the node's) and
    every built object. With ``vertebrae`` the lateral image comes first and the result also
    has its vertebral analysis (five vertebrae L1-L5, every grade; the AP image not analysed).
    """
    sources = make_study(seed, Variant())
    if vertebrae:
        # The lateral image first: its abnormality is the study's, and the SR viewport opens
        # on the image of the SR's first measurement (the study's).
        sources = [sources[1], sources[0]]
        result = with_vertebrae(
            abnormal_result(sources), [lateral_analysis(sources[0]), AP_NOT_LATERAL]
        )
    else:
        result = abnormal_result(sources)
    settings = make_settings(sr=True, gsps=True, secondary_capture=secondary_capture)
    built = build_outputs(sources, result, settings, job_key=f"k{seed}")
    kinds = ["gsps", "gsps", *(["sc", "sc"] if secondary_capture else []), "sr"]
    assert sorted(o.kind for o in built) == kinds
    for ds in sources:
        rig.store(ds)
    sr = None
    for obj in built:
        if obj.kind == "sr":
            sr = sr_for_pacs(obj.dataset)
            rig.store(sr)
        else:
            rig.store(obj.dataset)
    assert sr is not None
    return sources, result, sr, built


def open_study(
    driver: Any, rig: OhifRig, study_uid: str, first_image_uid: str, thumbnails: int = 2
) -> None:
    """Open the study in OHIF's viewer; wait for the study browser (``thumbnails`` image
    series and the SR) and the first image."""
    from selenium.webdriver.common.by import By

    driver.get(rig.viewer_url(study_uid))
    wait_until(
        lambda: (
            len(driver.find_elements(By.CSS_SELECTOR, '[data-cy="study-browser-thumbnail"]'))
            == thumbnails
            and series_entry(driver, "SR") is not None
        ),
        f"study browser with {thumbnails} image series and the SR",
        timeout=90,
    )
    wait_until(lambda: image_shown(driver, first_image_uid), "first image rendered", timeout=60)


def series_entry(driver: Any, modality: str) -> Any:
    """The study browser's entry of the (one) series of ``modality`` without a thumbnail."""
    from selenium.webdriver.common.by import By

    for entry in driver.find_elements(
        By.CSS_SELECTOR, '[data-cy="study-browser-thumbnail-no-image"]'
    ):
        labels = entry.find_elements(By.CSS_SELECTOR, '[data-cy="series-modality-label"]')
        if labels and labels[0].text == modality:
            return entry
    return None


def image_shown(driver: Any, uid: str) -> dict | None:
    """The viewport mapping when SOP Instance ``uid`` is shown and its pixels are drawn."""
    import numpy as np

    mapping = driver.execute_script(MAP_JS, uid, [[0, 0]])
    if mapping is None:
        return None
    left, top, right, bottom = (round(v) for v in mapping["rect"])
    from io import BytesIO

    from PIL import Image

    shot = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("L")
    canvas = np.asarray(shot, dtype=np.float32)[top:bottom, left:right]
    return mapping if canvas.size and canvas.std() > 10 else None


def screen_box(driver: Any, uid: str, points: list[float]) -> tuple[list, tuple] | None:
    """The first four points of an SR polyline on the screen, and the viewport's rectangle."""
    corners = [[points[i], points[i + 1]] for i in range(0, 8, 2)]
    mapping = driver.execute_script(MAP_JS, uid, corners)
    if mapping is None:
        return None
    return [tuple(p) for p in mapping["points"]], tuple(round(v) for v in mapping["rect"])


def viewport_mask(driver: Any, rect: tuple) -> tuple[bytes, Any]:
    """A screenshot and its annotation-colour mask, limited to the viewport ``rect``."""
    png = driver.get_screenshot_as_png()
    mask = annotation_mask(png)
    left, top, right, bottom = rect
    inside = (slice(top + 2, bottom - 2), slice(left + 2, right - 2))
    keep = mask & False
    keep[inside] = mask[inside]
    return png, keep


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def show_sr_measurements(
    driver: Any, name: str, count: int, log: list[str], labels: list[str] | None = None
) -> list[str]:
    """Open the SR as a radiologist would; return the measurement panel's entry titles.

    Waits for ``count`` entries; ``labels`` receives the annotation labels the SR viewport
    drew before tracking. Raises `SRNotShownError` when OHIF fails on the SR, never
    asks to track its measurements, or tracks none of them.
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ActionChains(driver).double_click(series_entry(driver, "SR")).perform()

    def prompt_or_failure() -> Any:
        log.extend(console(driver))
        yes = driver.find_elements(By.XPATH, "//button[normalize-space()='Yes']")
        if yes:
            return yes[0]
        if any("Error Boundary" in line for line in log):
            return "failed"
        return None

    try:
        outcome = wait_until(prompt_or_failure, "the SR's hydration prompt", timeout=45)
    except AssertionError:
        outcome = "no prompt"
    driver.save_screenshot(str(ARTIFACTS / f"ohif-{name}-sr-opened.png"))
    if labels is not None:
        labels.extend(svg_labels(driver))
    if isinstance(outcome, str):
        errors = [ln for ln in log if re.search(r"Error|not rehydratable|skipping", ln)]
        said = "\n".join(errors)
        raise SRNotShownError(f"OHIF did not offer to track the SR ({outcome}):\n{said}")
    outcome.click()

    rows = '[data-cy^="measurement-table-row-"] [data-cy="data-row-title"]'

    def panel_titles() -> list[str]:
        log.extend(console(driver))
        if not driver.find_elements(By.CSS_SELECTOR, '[data-cy="trackedMeasurements-panel"]'):
            driver.execute_script(
                "document.querySelector('[data-cy=\"trackedMeasurements-btn\"]').click()"
            )
            return []
        return [e.text for e in driver.find_elements(By.CSS_SELECTOR, rows)]

    # Fewer entries than boxes is the caller's to judge (it compares the titles).
    with contextlib.suppress(AssertionError):
        wait_until(lambda: len(panel_titles()) >= count, f"{count} tracked measurements", 30)
    titles = panel_titles()
    driver.save_screenshot(str(ARTIFACTS / f"ohif-{name}-panel.png"))
    if not titles:
        errors = [ln for ln in log if re.search(r"Unable to generate|Error|tracked", ln)]
        said = "\n".join(errors)
        raise SRNotShownError(f"OHIF tracked no measurement of the SR:\n{said}")
    return titles


def click_row(driver: Any, row: int) -> None:
    """Click entry ``row`` (0-based) of OHIF's measurement panel."""
    from selenium.webdriver.common.by import By

    driver.find_element(
        By.CSS_SELECTOR, f'[data-cy="measurement-table-row-{row}"] [data-cy="data-row"]'
    ).click()


def check_boxes_drawn(
    driver: Any,
    name: str,
    boxes: list[tuple[int, str, str, list[float]]],
    hidden: dict[str, list[list[float]]],
    timeout: float = 30,
) -> None:
    """Click each box's panel entry in turn; the box (panel row, finding, source image, SR
    points) must be drawn on its image where the SR puts it, and the ``hidden`` boxes of that
    image nowhere."""
    for k, (row, finding, uid, points) in enumerate(boxes):
        click_row(driver, row)
        seen: dict[str, Any] = {}

        def drawn(uid: str = uid, points: list[float] = points, seen: dict = seen) -> bool:
            box = screen_box(driver, uid, points)
            if box is None:
                seen["state"] = "its image is not shown"
                return False
            corners, rect = box
            png, mask = viewport_mask(driver, rect)
            sides, inside = edge_coverage(mask, corners), interior_share(mask, corners)
            seen.update(state=f"sides {sides}, inside {inside:.3f}", png=png, mask=mask)
            return min(sides) >= 0.8 and inside < 0.05

        shot = ARTIFACTS / f"ohif-{name}-box-{k + 1}-{slug(finding)}.png"
        try:
            wait_until(drawn, f"box {k + 1} ({finding}) drawn on {uid}", timeout)
        except AssertionError as error:
            if "png" in seen:
                shot.write_bytes(seen["png"])
            raise AssertionError(f"{error}: {seen.get('state')}") from None
        shot.write_bytes(seen["png"])
        # A box the node kept but did not display is drawn nowhere on this image.
        for points_hidden in hidden.get(uid, []):
            corners, _ = screen_box(driver, uid, points_hidden)
            assert max(edge_coverage(seen["mask"], corners)) < 0.3, "a hidden box is drawn"


def hidden_boxes(result: Any) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {}
    for image in result.images:
        for box in image.boxes:
            if not box.displayed:
                out.setdefault(image.sop_instance_uid, []).append(
                    [box.xmin, box.ymin, box.xmax, box.ymin, box.xmax, box.ymax, box.xmin, box.ymax]
                )
    return out


def assert_only_loopback(driver: Any, rig: OhifRig) -> None:
    """Everything the page loaded came from the rig (nothing from the network)."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    outside = [n for n in names if not n.startswith((rig.base_url, "data:", "blob:"))]
    assert not outside, outside


ABNORMALITY = "Abnormal spine radiograph"  # finding of the study and image abnormality frames


def check_sr(driver: Any, rig: OhifRig, name: str, sr: Dataset, result: Any) -> None:
    """The panel lists every located result of the SR in its order (the study's and each
    image's abnormality, then the boxes); each abnormality entry opens its image, each box
    entry its image with the box drawn where the SR puts it."""
    log: list[str] = []
    expected = box_findings(sr)
    boxes = [(row, *e) for row, e in enumerate(expected) if e[0] != ABNORMALITY]
    frames = [(row, *e) for row, e in enumerate(expected) if e[0] == ABNORMALITY]
    displayed = sum(len(image.displayed_boxes) for image in result.images)
    assert len(boxes) == displayed == 3
    assert len(frames) == 1 + len(result.images)
    labels: list[str] = []
    titles = show_sr_measurements(driver, name, len(expected), log, labels)
    assert titles == [finding for finding, _, _ in expected], titles
    # The SR viewport opens on the first image, labelled with its abnormality (the study's).
    first = result.images[0]
    assert (
        f"Abnormality probability: {first.probability:.2f} {{probability}}"
        f"Decision threshold: {result.threshold:.2f} {{probability}}"
    ) in labels, labels
    for row, _, uid, _ in frames:
        click_row(driver, row)
        wait_until(lambda uid=uid: image_shown(driver, uid), f"entry {row + 1}: {uid}", 30)
    driver.save_screenshot(str(ARTIFACTS / f"ohif-{name}-abnormality-frame.png"))
    check_boxes_drawn(driver, name, boxes, hidden_boxes(result))
    assert_only_loopback(driver, rig)


def test_ohif_shows_the_sr_as_the_node_builds_it(rig: OhifRig, browser: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sources, result, sr, _ = store_node_answer(rig, seed=8)
    ap = str(sources[0].SOPInstanceUID)
    open_study(browser, rig, result.study_instance_uid, ap)

    # The GSPS series is listed (as PR) but OHIF applies none of it: the AP image, whose GSPS
    # holds two boxes, shows no annotation at all.
    assert series_entry(browser, "PR") is not None
    box = screen_box(browser, ap, [0, 0, 1, 0, 1, 1, 0, 1])
    assert box is not None
    png, mask = viewport_mask(browser, box[1])
    (ARTIFACTS / "ohif-gsps-not-shown.png").write_bytes(png)
    assert int(mask.sum()) == 0, "OHIF drew something on the image before the SR was opened"

    check_sr(browser, rig, "as-built", sr, result)


MOVE = (150.0, 0.0)  # image pixels: clear of the other boxes and inside the image


def shifted(points: list[float], dx: float, dy: float) -> list[float]:
    return [v + (dx if i % 2 == 0 else dy) for i, v in enumerate(points)]


def first_box_moved(sr: Dataset) -> Dataset:
    """The SR with the first box's region (and its copy under the score) moved by MOVE."""
    out = plain(sr)
    groups = measurement_groups(out)
    first = next(uid for finding, uid in _findings(groups) if finding != ABNORMALITY)
    for group in (g for g in groups if _tracking_uid(g) == first):
        for item in group.ContentSequence:
            for scoord in [item, *item.get("ContentSequence", [])]:
                if scoord.ValueType == "SCOORD":
                    scoord.GraphicData = shifted([float(v) for v in scoord.GraphicData], *MOVE)
    return out


def _tracking_uid(group: Dataset) -> str:
    return next(str(i.UID) for i in group.ContentSequence if i.ValueType == "UIDREF")


def _findings(groups: list[Dataset]) -> list[tuple[str, str]]:
    """(finding meaning, tracking UID) of each group."""
    return [
        (
            next(
                str(i.ConceptCodeSequence[0].CodeMeaning)
                for i in g.ContentSequence
                if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"
            ),
            _tracking_uid(g),
        )
        for g in groups
    ]


def test_the_pixel_check_fails_for_a_box_drawn_elsewhere(rig: OhifRig, browser: Any) -> None:
    """The check of `test_ohif_shows_the_sr_encoded_as_ohif_needs` can fail: OHIF draws the
    first box 150 pixels to the right of where the node found it, and checking it at the
    node's place fails, while checking it where this SR says passes."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sources, result, sr, _ = store_node_answer(rig, seed=9, sr_for_pacs=first_box_moved)
    open_study(browser, rig, result.study_instance_uid, str(sources[0].SOPInstanceUID))
    located = box_findings(sr)
    row = next(k for k, (finding, _, _) in enumerate(located) if finding != ABNORMALITY)
    finding, uid, points = located[row]
    drawn_at = [(row, finding, uid, points)]
    titles = show_sr_measurements(browser, "moved", len(located), [])
    assert titles[row] == finding
    node_place = [(row, finding, uid, shifted(points, -MOVE[0], -MOVE[1]))]
    with pytest.raises(AssertionError, match="sides"):
        check_boxes_drawn(browser, "moved-at-the-node-place", node_place, {}, timeout=5)
    check_boxes_drawn(browser, "moved", drawn_at, {})


def test_ohif_shows_the_secondary_capture_with_its_burned_in_boxes(
    rig: OhifRig, browser: Any
) -> None:
    """With ``output.secondary_capture`` the PACS also holds a capture of each image with the
    boxes burned in: OHIF shows it as an ordinary (OT) series, boxes in their class colours
    where the node found them, the box not displayed absent."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _, result, _, built = store_node_answer(rig, seed=10, secondary_capture=True)
    ap = result.images[0]
    capture = next(
        o for o in built if o.kind == "sc" and o.source_sop_instance_uid == ap.sop_instance_uid
    )
    open_study(browser, rig, result.study_instance_uid, ap.sop_instance_uid, thumbnails=3)
    series = next(
        t
        for t in browser.find_elements(By.CSS_SELECTOR, '[data-cy="study-browser-thumbnail"]')
        if t.find_element(By.CSS_SELECTOR, '[data-cy="series-modality-label"]').text == "OT"
    )
    ActionChains(browser).double_click(series).perform()
    uid = capture.sop_instance_uid
    wait_until(lambda: image_shown(browser, uid), "the capture of the AP image", timeout=60)
    for box in ap.boxes:
        points = [box.xmin, box.ymin, box.xmax, box.ymin, box.xmax, box.ymax, box.xmin, box.ymax]
        colour = CLASS_COLOURS[box.label]
        seen: dict[str, Any] = {}

        def burned(points: list[float] = points, colour=colour, seen: dict = seen) -> bool:
            corners, rect = screen_box(browser, uid, points)
            png = browser.get_screenshot_as_png()
            mask = colour_mask(png, colour)
            left, top, right, bottom = rect
            mask[:top], mask[bottom:], mask[:, :left], mask[:, right:] = False, False, False, False
            seen.update(sides=edge_coverage(mask, corners), png=png)
            return min(seen["sides"]) >= 0.8

        what = f"{box.label.display_name} {box.score}"
        if box.displayed:
            try:
                wait_until(burned, f"{what} burned in", timeout=30)
            finally:
                if "png" in seen:
                    shot = ARTIFACTS / "ohif-secondary-capture.png"
                    shot.write_bytes(seen["png"])
        else:
            burned()
            assert max(seen["sides"]) < 0.3, (what, seen["sides"])
    assert_only_loopback(browser, rig)


def screen_points(driver: Any, uid: str, points: list[float]) -> list[tuple[float, float]]:
    """Image points (flat x, y list) of SOP Instance ``uid`` on the screen."""
    pairs = [[points[i], points[i + 1]] for i in range(0, len(points), 2)]
    mapping = driver.execute_script(MAP_JS, uid, pairs)
    assert mapping is not None, f"{uid} is not shown"
    return [tuple(p) for p in mapping["points"]]


def svg_labels(driver: Any) -> list[str]:
    """The text of every annotation label Cornerstone has drawn (its SVG layer)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('svg text')].map(t => t.textContent)"
    )


def test_ohif_shows_the_vertebral_analysis(rig: OhifRig, browser: Any) -> None:
    """The vertebral fracture analysis of the lateral image as OHIF's SR viewport shows it
    without tracking ("No" to the prompt): stepping through the SR's measurements with the
    viewport's arrows reaches the lateral image, where each vertebra's outline is drawn where
    the SR puts it, labelled with its three heights in mm, its Genant index and its score,
    and the image's summary frame is labelled with the lowest Genant index. (OHIF does not
    track the outlines: no Cornerstone adapter takes a 7-point polyline; ``docs/viewers.md``.)
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sources, result, sr, _ = store_node_answer(rig, seed=12, vertebrae=True)
    lateral = str(sources[0].SOPInstanceUID)
    open_study(browser, rig, result.study_instance_uid, str(sources[1].SOPInstanceUID))
    ActionChains(browser).double_click(series_entry(browser, "SR")).perform()
    no = wait_until(
        lambda: browser.find_elements(By.XPATH, "//button[normalize-space()='No']"),
        "the SR's hydration prompt",
        timeout=45,
    )
    no[0].click()

    wait_until(lambda: image_shown(browser, lateral), "the lateral image in the SR viewport", 30)
    analysis = result.images[0].vertebrae
    vertebrae = analysis.vertebrae
    expected = [
        f"Genant index: {v.genant_index:.2f} {{ratio}}"
        f"Detection confidence score: {v.score:.2f} 1"
        + "".join(f"Height: {h:.2f} mm" for h in v.heights_mm)
        for v in vertebrae
    ]
    lowest = f"Genant index: {analysis.lowest_genant:.2f} {{ratio}}"
    # Where the SR puts them (read back from the SR as stored).
    reported = read_vertebrae(sr)
    outlines = [[c for point in v.outline[:-1] for c in point] for v in reported]
    lines = [[c for point in line for c in point] for v in reported for line in v.height_lines]
    assert len(outlines) == 5 and len(lines) == 15
    seen: dict[str, Any] = {}

    def all_drawn() -> bool:
        labels = svg_labels(browser)
        png = browser.get_screenshot_as_png()
        mask = annotation_mask(png)
        shapes = outlines + lines
        sides = [edge_coverage(mask, screen_points(browser, lateral, p)) for p in shapes]
        seen.update(labels=labels, png=png, sides=sides)
        return (
            all(text in labels for text in expected)
            and any(label.startswith(lowest) for label in labels)
            and all(min(s) >= 0.5 for s in sides)
        )

    try:
        wait_until(all_drawn, "the vertebrae drawn and labelled", timeout=30)
    except AssertionError as error:
        missing = [text for text in expected if text not in seen.get("labels", [])]
        sides = seen.get("sides")
        raise AssertionError(f"{error}: labels missing {missing}, sides {sides}") from None
    finally:
        if "png" in seen:
            (ARTIFACTS / "ohif-vertebrae-lateral.png").write_bytes(seen["png"])
    assert_only_loopback(browser, rig)
