"""Orthanc as the PACS, configured from deploy/orthanc (its orthanc.json and the real
route-to-spinexr.lua), auto-routes spine studies to a running `serve`; the node's SR and GSPS
come back (by C-STORE, then by STOW-RS) and are never routed to the node again.

Each test starts the node (embedded worker, tiny random bundle) and an Orthanc whose config
is deploy/orthanc/orthanc.json with only addresses, ports, secrets and StableAge changed.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipelinesupport import build_tiny_bundle
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from testsupport import NodeProcess, Orthanc, make_node, make_orthanc, wait_for

from spinexr.node import MANUFACTURER
from spinexr.node.admin.studies import find_studies, study_detail
from spinexr.node.db.engine import make_engine, make_session_factory
from spinexr.node.errors import SpinexrError
from spinexr.node.settings import NodeSection, OutputSection
from spinexr.node.sopclasses import ANALYSABLE_SOP_CLASSES
from spinexr.pipeline.bundle import Bundle
from spinexr.training.phantoms import PatientInfo, make_phantom_image, write

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "orthanc"
NODE_TOKEN = "node-token-for-the-test"
ORTHANC_USER = ("spinexr", "orthanc-password-for-the-test")
UID_ROOT = NodeSection().uid_root  # the node's defaults, as in deploy/orthanc
SERIES_PREFIX = OutputSection().series_description_prefix


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    # threshold 0: every image is "abnormal", so the outputs carry the full set of objects.
    return build_tiny_bundle(tmp_path_factory.mktemp("orthanc-e2e") / "bundle", threshold=0.0)


# ------------------------------------------------------------------------------ test data


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    write(ds, buf)
    return buf.getvalue()


def spine_image(
    seed: int, study_uid: str, *, view: str = "AP", sop: str = "DX", compressed: bool = False
) -> Dataset:
    """A small lumbar-spine phantom of one patient (same demographics for every image)."""
    ds, _ = make_phantom_image(
        seed,
        view=view,
        sop_class=sop,
        compressed=compressed,
        size=(256, 192),
        region="LSPINE",
        study_uid=study_uid,
        patient=PatientInfo("PHANTOM^ORTHANC", "PH-ORTHANC-1", "19600101", "F", 64),
        study_datetime=("20240105", "101500"),
        series_number=seed % 100 + 1,
    )
    return ds


def spine_study(seed: int) -> tuple[str, list[Dataset]]:
    """An AP (DX, uncompressed) and a lateral (CR, JPEG 2000) view of one study."""
    uid = generate_uid()
    return uid, [
        spine_image(seed, uid, view="AP", sop="DX"),
        spine_image(seed + 1, uid, view="LAT", sop="CR", compressed=True),
    ]


def chest_study(seed: int) -> tuple[str, Dataset]:
    """A CR whose headers say chest: not a spine study, never routed."""
    uid = generate_uid()
    ds = spine_image(seed, uid, sop="CR")
    ds.BodyPartExamined = "CHEST"
    ds.StudyDescription = "XR CHEST PA"
    ds.SeriesDescription = "CHEST PA"
    return uid, ds


def decoy_study(seed: int, device_uid: str) -> tuple[str, list[Dataset]]:
    """Spine CRs that would qualify but each carries one mark of the node's own objects."""
    uid = generate_uid()
    marks: list[Dataset] = [spine_image(seed + i, uid, sop="CR") for i in range(5)]
    marks[0].Manufacturer = MANUFACTURER
    marks[1].SOPInstanceUID = f"{UID_ROOT}.99.{seed}"
    marks[1].file_meta.MediaStorageSOPInstanceUID = marks[1].SOPInstanceUID
    marks[2].SeriesDescription = f"{SERIES_PREFIX} burned-in boxes"
    marks[3].DeviceUID = device_uid
    equipment = Dataset()
    equipment.Manufacturer = MANUFACTURER
    marks[4].ContributingEquipmentSequence = DicomSequence([equipment])
    return uid, marks


# ------------------------------------------------------------------------------ the setup


def orthanc_config(node: NodeProcess, route: str, device_uid: str, auth: bool) -> dict[str, Any]:
    """deploy/orthanc/orthanc.json pointed at the test's node (the real Lua script)."""
    config = json.loads((DEPLOY / "orthanc.json").read_text())
    config["LuaScripts"] = [str(DEPLOY / "route-to-spinexr.lua")]
    config["StableAge"] = 1
    config["AuthenticationEnabled"] = auth
    config["RegisteredUsers"] = {ORTHANC_USER[0]: ORTHANC_USER[1]}
    modality = config["DicomModalities"]["spinexr"]
    modality.update(Host="127.0.0.1", Port=node.dicom_port)
    server = config["DicomWeb"]["Servers"]["spinexr"]
    server["Url"] = f"http://127.0.0.1:{node.http_port}/dicomweb/"
    server["HttpHeaders"]["Authorization"] = f"Bearer {NODE_TOKEN}"
    config["SpinexrRouting"].update(Route=route, NodeDeviceUids=[device_uid])
    return config


class Scene:
    """A running node and Orthanc, and the views of both that the assertions need."""

    def __init__(self, node: NodeProcess, orthanc: Orthanc) -> None:
        self.node = node
        self.orthanc = orthanc
        engine = make_engine(f"sqlite:///{(node.data_dir / 'spinexr.db').resolve()}")
        self.sessions = make_session_factory(engine)
        self.engine = engine

    def upload(self, datasets: list[Dataset]) -> list[str]:
        """POST /instances each dataset; return Orthanc's instance ids."""
        ids = []
        for ds in datasets:
            answer = self.orthanc.rest("/instances", _bytes(ds), "POST")
            assert answer["Status"] == "Success", answer
            ids.append(answer["ID"])
        return ids

    def route_lines(self, study_uid: str) -> list[str]:
        """The Lua script's log lines about one study."""
        pattern = re.compile(rf"spinexr route: study {re.escape(study_uid)}: (.*)$")
        return [m.group(1) for m in map(pattern.search, self.orthanc.log().splitlines()) if m]

    def node_study(self, uid: str) -> dict[str, Any] | None:
        try:
            return study_detail(self.sessions, uid)
        except SpinexrError:  # not received yet
            return None

    def wait_jobs_done(self, uid: str, jobs: int, end: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            study = self.node_study(uid)
            if study is None or len(study["jobs"]) < jobs:
                return None
            state = study["jobs"][-1]["state"]
            return study if state in (end, "dead", "failed") else None

        study = wait_for(done, 150, f"job {jobs} of the study {end}", self.node)
        assert study["jobs"][-1]["state"] == end, (study["jobs"], self.orthanc.log()[-3000:])
        return study

    def wait_route_line(self, uid: str, text: str) -> None:
        wait_for(
            lambda: any(text in line for line in self.route_lines(uid)),
            60,
            f"Orthanc's Lua: {text!r} for {uid}\n{self.route_lines(uid)}",
            self.node,
        )

    def qido(self) -> Any:
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import create_session_from_auth
        from requests.auth import HTTPBasicAuth

        session = None
        if self.orthanc.auth is not None:
            session = create_session_from_auth(HTTPBasicAuth(*self.orthanc.auth))
        return DICOMwebClient(url=self.orthanc.dicomweb, session=session)

    def results_in_orthanc(self, uid: str) -> dict[str, int]:
        """QIDO-RS at Orthanc: instances per Modality of the study's SR and PR series."""
        client = self.qido()
        counts: dict[str, int] = {}
        for modality in ("SR", "PR"):
            series = client.search_for_series(
                study_instance_uid=uid, search_filters={"Modality": modality}
            )
            for item in series:
                series_uid = item["0020000E"]["Value"][0]
                found = client.search_for_instances(
                    study_instance_uid=uid, series_instance_uid=series_uid
                )
                counts[modality] = counts.get(modality, 0) + len(found)
        return counts

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.orthanc.rest("/jobs?expand"))

    def assert_node_got_only_originals(self, uid: str, sop_uids: set[str]) -> None:
        study = self.node_study(uid)
        assert study is not None
        got = {i["sop_instance_uid"]: i["sop_class_uid"] for i in study["instances"]}
        assert set(got) == sop_uids
        assert set(got.values()) <= {str(u) for u in ANALYSABLE_SOP_CLASSES}
        # Orthanc never sent the node its own results (they would have been dropped).
        assert "dropped own object" not in self.node.log()

    def assert_not_routed(self, *uids: str) -> None:
        rows, _total = find_studies(self.sessions, per_page=1000)
        known = {row["study_instance_uid"] for row in rows}
        assert not known & set(uids), known


@pytest.fixture
def scene_factory(tmp_path: Path, bundle: Bundle) -> Iterator[Any]:
    started: list[Scene] = []

    def make(route: str, destination: dict[str, Any], auth: bool) -> Scene:
        orthanc = make_orthanc(tmp_path)
        if auth:
            orthanc.auth = ORTHANC_USER
        destination = {**destination, "name": "orthanc", "verify": True}
        if destination["kind"] == "dimse":
            destination.update(host="127.0.0.1", port=orthanc.dicom_port, ae_title=orthanc.aet)
        else:
            destination.update(url=orthanc.dicomweb)
        node = make_node(
            tmp_path,
            SPINEXR_STUDY__COMPLETION_SECONDS="1",
            SPINEXR_MODELS__BUNDLE=str(bundle.directory),
            SPINEXR_MODELS__DEVICE="cpu",
            SPINEXR_HTTP__API_TOKEN=NODE_TOKEN,
            SPINEXR_DESTINATIONS=json.dumps([destination]),
        )
        node.start()
        scene = Scene(node, orthanc)
        started.append(scene)
        orthanc.start(config=orthanc_config(node, route, bundle.device_uid, auth))
        assert f"spinexr route: loaded (route {route} to spinexr)" in orthanc.log()
        return scene

    yield make
    for scene in started:
        scene.orthanc.stop()
        code = scene.node.stop()
        scene.engine.dispose()
        assert code == 0, scene.node.log()[-3000:]


# ------------------------------------------------------------------------------ the tests


@pytest.mark.integration
@pytest.mark.slow
def test_orthanc_routes_spine_studies_by_cstore_and_gets_results_by_cstore(
    scene_factory: Any, bundle: Bundle
) -> None:
    scene: Scene = scene_factory("dimse", {"kind": "dimse"}, auth=False)
    uid, images = spine_study(seed=10)
    chest_uid, chest = chest_study(seed=20)
    decoy_uid, decoys = decoy_study(seed=30, device_uid=bundle.device_uid)
    ids = scene.upload(images)
    scene.upload([chest, *decoys])

    # Orthanc's stable-study event routes the two views; the node analyses them and sends
    # the SR and one GSPS per image back by C-STORE, then finds them by C-FIND (verified).
    study = scene.wait_jobs_done(uid, jobs=1, end="verified")
    assert study["calling_ae"] == "ORTHANC"
    assert scene.results_in_orthanc(uid) == {"SR": 1, "PR": 2}
    # The results made the study change; when it was stable again nothing was forwarded.
    scene.wait_route_line(uid, "nothing to forward (skipped: already routed 2, node result 3)")
    scene.wait_route_line(chest_uid, "nothing to forward (skipped: not spine 1)")
    scene.wait_route_line(decoy_uid, "nothing to forward (skipped: node result 5)")
    stores = [j for j in scene.jobs() if j["Type"] == "DicomModalityStore"]
    assert [(j["State"], sorted(j["Content"]["ParentResources"])) for j in stores] == [
        ("Success", sorted(ids))
    ]
    originals = {str(ds.SOPInstanceUID) for ds in images}
    scene.assert_node_got_only_originals(uid, originals)
    scene.assert_not_routed(chest_uid, decoy_uid)

    # A late image in a study that now holds the node's results: only that image is routed,
    # the node re-analyses the study (3 images) and its new SR and 3 GSPS arrive.
    late = spine_image(12, uid, view="AP", sop="DX")
    (late_id,) = scene.upload([late])
    scene.wait_jobs_done(uid, jobs=2, end="verified")
    scene.wait_route_line(uid, "nothing to forward (skipped: already routed 3, node result 7)")
    stores = [j for j in scene.jobs() if j["Type"] == "DicomModalityStore"]
    assert sorted(j["Content"]["ParentResources"] for j in stores) == sorted(
        [sorted(ids), [late_id]]
    )
    assert scene.results_in_orthanc(uid) == {"SR": 2, "PR": 5}
    scene.assert_node_got_only_originals(uid, originals | {str(late.SOPInstanceUID)})
    metadata = scene.orthanc.rest(f"/instances/{late_id}/metadata?expand")
    assert metadata["SpinexrRouted"] in {j["ID"] for j in stores}


@pytest.mark.integration
@pytest.mark.slow
def test_orthanc_routes_by_dicomweb_and_gets_results_by_stowrs(scene_factory: Any) -> None:
    destination = {
        "kind": "stowrs",
        "username": ORTHANC_USER[0],
        "password": ORTHANC_USER[1],
    }
    scene: Scene = scene_factory("dicomweb", destination, auth=True)
    uid, images = spine_study(seed=40)
    scene.upload(images)

    # Orthanc STOWs the views to the node (bearer token); the node STOWs its results to
    # Orthanc's DICOMweb (basic auth) and reads them back by QIDO-RS (verified).
    study = scene.wait_jobs_done(uid, jobs=1, end="verified")
    assert study["calling_ae"] == "STOW-RS"
    assert scene.results_in_orthanc(uid) == {"SR": 1, "PR": 2}
    scene.wait_route_line(uid, "nothing to forward (skipped: already routed 2, node result 3)")
    jobs = scene.jobs()
    assert [(j["Type"], j["State"], int(j["Content"]["InstancesCount"])) for j in jobs] == [
        ("DicomWebStowClient", "Success", 2)
    ]
    scene.assert_node_got_only_originals(uid, {str(ds.SOPInstanceUID) for ds in images})
    # What Orthanc holds from the node carries the node's signature.
    for item in scene.qido().search_for_instances(study_instance_uid=uid):
        sop = item["00080018"]["Value"][0]
        if sop.startswith(UID_ROOT + "."):
            (found,) = scene.orthanc.rest("/tools/lookup", sop.encode(), "POST")
            tags = scene.orthanc.rest(f"/instances/{found['ID']}/simplified-tags")
            assert tags["Manufacturer"] == MANUFACTURER
            assert tags["Modality"] in ("SR", "PR")


def test_deploy_orthanc_example_says_what_the_node_writes() -> None:
    config = json.loads((DEPLOY / "orthanc.json").read_text())
    assert config["UserMetadata"]["SpinexrRouted"] >= 1024  # Orthanc's user metadata range
    routing = config["SpinexrRouting"]
    assert routing["NodeManufacturer"] == MANUFACTURER
    assert routing["NodeUidRoot"] == UID_ROOT
    assert routing["NodeSeriesPrefix"] == SERIES_PREFIX
    # The script's own defaults say the same.
    lua = (DEPLOY / "route-to-spinexr.lua").read_text()
    assert f'NodeManufacturer = "{MANUFACTURER}"' in lua
    assert f'NodeUidRoot = "{UID_ROOT}"' in lua
    assert f'NodeSeriesPrefix = "{SERIES_PREFIX}"' in lua
