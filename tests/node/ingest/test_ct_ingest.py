"""Issue 17: the node accepts CT studies at ingest.

CT Image Storage, Enhanced CT and Legacy Converted Enhanced CT are analysable classes (the
SCP accepts their presentation contexts, STOW-RS their parts); the radiograph "not a spine
image" rule does not apply to them, the ``[ct]`` rules do: ``ct.enabled`` and Body Part
Examined (compacted) in ``ct.body_parts``, absent = analysed. Every other rule (modality,
regexes, calling AE) applies to CT as to CR/DX.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from ct_ingest_support import ct_series, part10, write_slices
from fastapi.testclient import TestClient
from ingest_support import Stack, build_stack
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
    generate_uid,
)
from pynetdicom import AE
from sqlalchemy import select
from testsupport import require_tool

from spinexr.node.db.models import Instance, Job, Study
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.errors import ConfigError
from spinexr.node.http.app import create_app
from spinexr.node.ingest.assembler import StudyAssembler
from spinexr.node.ingest.header import IMAGE_SOP_CLASSES, InstanceHeader
from spinexr.node.ingest.rules import ANALYSE, Decision, decide
from spinexr.node.ingest.service import SUPPORTED_SOP_CLASSES
from spinexr.node.settings import Settings, compact_body_part, load_settings
from spinexr.node.sopclasses import ANALYSABLE_SOP_CLASSES, CT_IMAGE_SOP_CLASSES
from spinexr.pipeline.ct.series import ALLOWED_BODY_PARTS, CT_SOP_CLASSES

CT_CLASSES = [CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("SPINEXR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def header(
    sop_class: str = CTImageStorage,
    *,
    modality: str = "CT",
    body_part: str = "CHEST",
    series_description: str = "",
    protocol_name: str = "",
    study_description: str = "",
) -> InstanceHeader:
    # As read_header gives them: stripped, Body Part Examined in upper case.
    return InstanceHeader(
        sop_class_uid=str(sop_class),
        transfer_syntax_uid=str(ExplicitVRLittleEndian),
        sop_instance_uid=generate_uid(),
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        modality=modality,
        body_part_examined=body_part.strip().upper(),
        study_description=study_description,
        accession_number="",
        manufacturer="Scanner Inc",
        software_versions="",
        expected_pixel_bytes=32 * 32 * 2,
        series_description=series_description,
        protocol_name=protocol_name,
    )


def settings(**sections: object) -> Settings:
    return load_settings(None, **sections)


# ------------------------------------------------------------------ SOP classes, settings


def test_ct_classes_are_analysable_everywhere_ingest_looks() -> None:
    assert {str(u) for u in CT_IMAGE_SOP_CLASSES} == set(CT_SOP_CLASSES) == set(CT_CLASSES)
    assert set(CT_IMAGE_SOP_CLASSES) <= set(ANALYSABLE_SOP_CLASSES)
    assert set(CT_IMAGE_SOP_CLASSES) <= IMAGE_SOP_CLASSES  # Pixel Data required
    assert set(CT_IMAGE_SOP_CLASSES) <= SUPPORTED_SOP_CLASSES  # C-STORE and STOW-RS
    s = settings()
    assert set(CT_CLASSES) <= set(s.study.accepted_sop_classes)
    assert s.study.accepted_modalities == ["CR", "DX", "CT"]
    assert s.ct.enabled is True
    assert s.ct.body_parts == sorted(ALLOWED_BODY_PARTS)


def test_ct_body_parts_are_compacted_and_checked() -> None:
    s = settings(ct={"body_parts": ["head", "Chest-Abdomen", "CHEST_ABDOMEN", " l spine "]})
    assert s.ct.body_parts == ["HEAD", "CHESTABDOMEN", "LSPINE"]
    assert compact_body_part("whole body") == "WHOLEBODY"
    with pytest.raises(ConfigError, match=r"ct\.body_parts"):
        settings(ct={"body_parts": []})
    with pytest.raises(ConfigError, match="no letter or digit"):
        settings(ct={"body_parts": ["CHEST", "--"]})


# ------------------------------------------------------------------ decide


@pytest.mark.parametrize(
    "body_part",
    [
        *("CHEST", "ABDOMEN", "SPINE", "WHOLEBODY", "CHESTABDPELVIS", "THORAX", "TSPINE"),
        *("Chest Abdomen", "L-SPINE", "whole_body", ""),
    ],
)
@pytest.mark.parametrize("sop_class", CT_CLASSES)
def test_ct_of_the_trunk_or_without_body_part_is_analysed(sop_class: str, body_part: str) -> None:
    assert decide(header(sop_class, body_part=body_part), "PACS", settings()) == Decision(
        True, ANALYSE
    )


def test_ct_of_the_head_is_stored_with_its_reason() -> None:
    decision = decide(header(body_part="HEAD"), "PACS", settings())
    assert decision == Decision(False, "CT body part HEAD")
    assert decision.text == "not for analysis: CT body part HEAD"
    assert decide(header(body_part="Knee"), "PACS", settings()).rule == "CT body part KNEE"


def test_a_ct_reason_never_carries_free_text_from_the_header() -> None:
    decision = decide(header(body_part="MUELLER HANS 1960"), "PACS", settings())
    assert decision.text == "not for analysis: CT body part (other value)"
    long = decide(header(body_part="X" * 300), "PACS", settings())
    assert not long.analyse and len(long.rule) <= 100 and "XX" not in long.rule


def test_ct_analysis_disabled_refuses_every_ct() -> None:
    off = settings(ct={"enabled": False})
    for body_part in ("CHEST", "", "HEAD"):
        assert decide(header(body_part=body_part), "PACS", off) == Decision(
            False, "CT analysis disabled"
        )
    # Radiographs are not concerned.
    cr = header(ComputedRadiographyImageStorage, modality="CR", body_part="LSPINE")
    assert decide(cr, "PACS", off).analyse


def test_the_radiograph_spine_rule_does_not_apply_to_ct() -> None:
    # Everything in this header says "chest": a radiograph is not analysed, a CT is.
    chest = {
        "body_part": "CHEST",
        "series_description": "Thorax 1mm",
        "protocol_name": "CHEST ROUTINE",
        "study_description": "CT CHEST",
    }
    assert decide(header(**chest), "PACS", settings()).analyse
    cr = decide(header(ComputedRadiographyImageStorage, modality="CR", **chest), "PACS", settings())
    assert cr == Decision(False, "not a spine image (Body Part Examined CHEST)")
    # A CT whose body part is absent is analysed whatever its descriptions say.
    no_part = {**chest, "body_part": ""}
    assert decide(header(**no_part), "PACS", settings()).analyse


def test_radiograph_rules_are_unchanged() -> None:
    s = settings()
    dx = DigitalXRayImageStorageForPresentation
    assert decide(header(dx, modality="DX", body_part="LSPINE"), "PACS", s).analyse
    assert decide(header(dx, modality="DX", body_part=""), "PACS", s).analyse
    assert decide(header(dx, modality="DX", body_part="HEAD"), "PACS", s) == Decision(
        False, "not a spine image (Body Part Examined HEAD)"
    )
    # A radiograph of the chest stays "not a spine image" when CT accepts the chest.
    assert decide(header(dx, modality="DX", body_part="CHEST"), "PACS", s).rule.startswith(
        "not a spine image"
    )
    anything = settings(study={"body_parts": "any"})
    assert decide(header(dx, modality="DX", body_part="HEAD"), "PACS", anything).analyse


def test_the_other_study_rules_apply_to_ct() -> None:
    radiographs_only = settings(study={"accepted_modalities": ["CR", "DX"]})
    assert decide(header(), "PACS", radiographs_only) == Decision(False, "modality CT")
    no_ct_class = settings(study={"accepted_sop_classes": [str(ComputedRadiographyImageStorage)]})
    assert decide(header(), "PACS", no_ct_class) == Decision(False, f"SOP class {CTImageStorage}")
    regex = settings(study={"body_part_regex": "SPINE"})
    assert decide(header(body_part="CHEST"), "PACS", regex) == Decision(False, "body part")
    assert decide(header(body_part="TSPINE"), "PACS", regex).analyse
    described = settings(study={"study_description_regex": "spine"})
    assert decide(header(study_description="CT CHEST"), "PACS", described) == Decision(
        False, "study description"
    )
    aets = settings(study={"analyse_calling_aets": ["CTSCANNER"]})
    assert decide(header(), "PACS", aets) == Decision(False, "calling AE PACS")
    assert decide(header(), "CTSCANNER", aets).analyse


def test_ct_body_parts_are_the_sites_and_hold_whatever_study_body_parts_says() -> None:
    heads = settings(ct={"body_parts": ["HEAD", "Chest Abdomen"]})
    assert decide(header(body_part="HEAD"), "PACS", heads).analyse
    assert decide(header(body_part="CHEST-ABDOMEN"), "PACS", heads).analyse
    assert decide(header(body_part="CHEST"), "PACS", heads) == Decision(False, "CT body part CHEST")
    anything = settings(study={"body_parts": "any"})
    assert decide(header(body_part="HEAD"), "PACS", anything).rule == "CT body part HEAD"


# ------------------------------------------------------------------ through the ingest service


def decisions(stack: Stack, study_uid: str) -> dict[str, str]:
    with stack.sessions() as s:
        rows = s.execute(
            select(Instance.sop_instance_uid, Instance.decision)
            .join(Study, Study.id == Instance.study_id)
            .where(Study.study_instance_uid == study_uid)
        ).all()
    return dict(rows)


def test_ingest_service_stores_ct_with_its_decision(stack: Stack) -> None:
    chest = ct_series(3, body_part="CHEST")
    head = ct_series(2, body_part="HEAD")
    enhanced = ct_series(1, body_part="", sop_class=EnhancedCTImageStorage)
    for ds in chest + head + enhanced:
        stack.ingest.ingest([part10(ds)], calling_ae="CT1", source="dimse")
    assert set(decisions(stack, chest[0].StudyInstanceUID).values()) == {ANALYSE}
    assert set(decisions(stack, head[0].StudyInstanceUID).values()) == {
        "not for analysis: CT body part HEAD"
    }
    assert set(decisions(stack, enhanced[0].StudyInstanceUID).values()) == {ANALYSE}
    with stack.sessions() as s:
        study = s.scalars(
            select(Study).where(Study.study_instance_uid == chest[0].StudyInstanceUID)
        ).one()
        assert (study.modality, study.decision) == ("CT", ANALYSE)


def test_stow_rs_accepts_ct(tmp_path: Path) -> None:
    token = "ct-stow-token"
    stack = build_stack(tmp_path, http={"api_token": token})
    slices = ct_series(2, body_part="ABDOMEN")
    boundary = "ct-boundary-1"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + part10(ds)
            + b"\r\n"
            for ds in slices
        )
        + f"--{boundary}--\r\n".encode()
    )
    with TestClient(create_app(stack.settings, stack.ingest)) as client:
        r = client.post(
            "/dicomweb/studies",
            content=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
    assert r.status_code == 200, r.text
    assert "00081198" not in r.json()  # no FailedSOPSequence
    assert set(decisions(stack, slices[0].StudyInstanceUID).values()) == {ANALYSE}


# ------------------------------------------------------------------ over the network


def c_store_all(stack: Stack, datasets: list) -> list[int]:
    ae = AE(ae_title="CTSCANNER")
    for sop_class in CT_CLASSES:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", stack.port, ae_title=stack.settings.dicom.ae_title)
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()
    return statuses


@pytest.mark.integration
def test_ct_slices_sent_to_the_scp_are_stored_and_complete_into_one_job(
    scp_stack: Stack, tmp_path: Path
) -> None:
    chest = ct_series(6, body_part="CHEST")
    head = ct_series(3, body_part="HEAD")
    # pynetdicom for the chest series, dcmtk's storescu (files) for the head.
    assert c_store_all(scp_stack, chest) == [0] * 6
    files = write_slices(head, tmp_path / "head")
    sent = subprocess.run(
        [
            require_tool("storescu"),
            "-aet",
            "CTSCANNER",
            "-aec",
            scp_stack.settings.dicom.ae_title,
            "127.0.0.1",
            str(scp_stack.port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr

    chest_uid, head_uid = chest[0].StudyInstanceUID, head[0].StudyInstanceUID
    assert decisions(scp_stack, chest_uid) == {ds.SOPInstanceUID: ANALYSE for ds in chest}
    assert decisions(scp_stack, head_uid) == {
        ds.SOPInstanceUID: "not for analysis: CT body part HEAD" for ds in head
    }
    with scp_stack.sessions() as s:
        classes = set(s.scalars(select(Instance.sop_class_uid)))
        paths = list(s.scalars(select(Instance.path)))
    assert classes == {str(CTImageStorage)}
    assert all((scp_stack.spool.root / p).is_file() for p in paths)

    assembler = StudyAssembler(scp_stack.settings, scp_stack.sessions, "m@1")
    assert assembler.force_complete(chest_uid) is not None
    assert assembler.force_complete(head_uid) is None  # nothing to analyse: no job
    with scp_stack.sessions() as s:
        jobs = s.scalars(select(Job)).all()
        assert [j.study.study_instance_uid for j in jobs] == [chest_uid]


@pytest.mark.integration
def test_ct_with_analysis_disabled_is_stored_not_analysed(tmp_path: Path) -> None:
    stack = build_stack(tmp_path, ct={"enabled": False})
    stack.scp = StoreSCP(stack.settings)
    stack.scp.start()
    try:
        chest = ct_series(2, body_part="CHEST")
        assert c_store_all(stack, chest) == [0, 0]
    finally:
        stack.scp.stop()
    assert set(decisions(stack, chest[0].StudyInstanceUID).values()) == {
        "not for analysis: CT analysis disabled"
    }
