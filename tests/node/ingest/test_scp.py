"""The SCP against real peers: dcmtk's echoscu/storescu and pynetdicom as SCU."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import pytest
from ingest_support import Stack, build_stack, phantom_bytes, write_study
from pynetdicom import AE, _config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    MRImageStorage,
    Verification,
)
from sqlalchemy import func, select
from testsupport import require_tool

from spinexr.node.db.models import Instance, Job, Study
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.ingest.assembler import StudyAssembler
from spinexr.node.sopclasses import ANALYSABLE_SOP_CLASSES, TRANSFER_SYNTAXES

pytestmark = pytest.mark.integration


def storescu(stack: Stack, files: list[Path], *args: str, aet: str = "PACS"):
    exe = require_tool("storescu")
    return subprocess.run(
        [
            exe,
            "-v",
            "-R",
            "-xv",
            "-aet",
            aet,
            "-aec",
            stack.settings.dicom.ae_title,
            *args,
            "127.0.0.1",
            str(stack.port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def echoscu(stack: Stack, aet: str = "PACS"):
    exe = require_tool("echoscu")
    return subprocess.run(
        [exe, "-aet", aet, "-aec", stack.settings.dicom.ae_title, "127.0.0.1", str(stack.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def n(stack: Stack, model=Instance) -> int:
    with stack.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_echo(scp_stack: Stack) -> None:
    assert echoscu(scp_stack).returncode == 0


def test_storescu_study_is_stored_and_completes_into_one_job(
    scp_stack: Stack, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "in")
    proc = storescu(scp_stack, files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        proc.stdout.count("Received Store Response (Success)")
        + proc.stderr.count("Received Store Response (Success)")
        == 2
    )
    assert n(scp_stack) == 2
    with scp_stack.sessions() as s:
        syntaxes = {i.transfer_syntax_uid for i in s.scalars(select(Instance))}
    assert "1.2.840.10008.1.2.4.90" in syntaxes and len(syntaxes) == 2  # J2K + uncompressed
    assembler = StudyAssembler(scp_stack.settings, scp_stack.sessions, "m@1")
    uid = None
    with scp_stack.sessions() as s:
        uid = s.scalars(select(Study)).one().study_instance_uid
    assert assembler.force_complete(uid) is not None
    assert storescu(scp_stack, files).returncode == 0  # the PACS sends it again
    assert n(scp_stack) == 2
    assert assembler.force_complete(uid) is None
    assert n(scp_stack, Job) == 1


def test_forbidden_calling_ae_is_rejected_with_a_logged_reason(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    monkeypatch.chdir(tmp_path)
    st = build_stack(tmp_path, dicom={"allowed_calling_aets": ["PACS"]})
    scp = StoreSCP(st.settings)
    scp.start()
    try:
        assert echoscu(st, aet="PACS").returncode == 0
        bad = echoscu(st, aet="INTRUDER")
        assert bad.returncode != 0
        assert "Calling AE" in bad.stdout + bad.stderr or "Rejected" in bad.stdout + bad.stderr
        # Logged by the association's process, to the stderr it shares with this one.
        assert any(
            "INTRUDER" in line and "not allowed" in line
            for line in capfd.readouterr().err.splitlines()
        )
    finally:
        scp.stop()


def test_ip_allow_list(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    st = build_stack(tmp_path, dicom={"allowed_networks": ["10.0.0.0/8"]})
    scp = StoreSCP(st.settings)
    scp.start()
    try:
        assert echoscu(st).returncode != 0
    finally:
        scp.stop()


def scu(stack: Stack, contexts) -> AE:
    ae = AE(ae_title="PACS")
    for c in contexts:
        ae.add_requested_context(*c) if isinstance(c, tuple) else ae.add_requested_context(c)
    return ae


def test_unparseable_file_fails_while_the_association_and_other_files_go_on(
    scp_stack: Stack, tmp_path: Path, monkeypatch
) -> None:
    good, ds = phantom_bytes(1, sop_class="CR")
    bad = good[: good.index(b"\x08\x00\x16\x00")] + b"\x08\x00\x16\x00UI\xff\xff" + b"\x01" * 64
    (tmp_path / "bad.dcm").write_bytes(bad)
    (tmp_path / "good.dcm").write_bytes(good)
    # Send the raw bytes as they are (pynetdicom would otherwise re-encode the dataset).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = scu(scp_stack, [(ComputedRadiographyImageStorage, [str(ds.file_meta.TransferSyntaxUID)])])
    assoc = ae.associate("127.0.0.1", scp_stack.port, ae_title="SPINEXR")
    assert assoc.is_established
    try:
        status_bad = assoc.send_c_store(tmp_path / "bad.dcm")
        status_good = assoc.send_c_store(tmp_path / "good.dcm")
    finally:
        assoc.release()
    assert 0xC000 <= status_bad.Status <= 0xCFFF
    assert status_good.Status == 0x0000
    assert n(scp_stack) == 1


def test_full_disk_answers_a700_and_refuses_new_associations(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # The watermark 1 GiB below today's free space; then the disk "fills up" by 2 GiB (the
    # SCP runs in other processes: the disk itself has to change).
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    scp_stack = build_stack(tmp_path, storage={"min_free_mb": free_mb - 1024})
    scp = StoreSCP(scp_stack.settings)
    scp.start()
    filler = tmp_path / "filler"
    try:
        _, ds = phantom_bytes(2, sop_class="CR")
        ts = str(ds.file_meta.TransferSyntaxUID)
        ae = scu(scp_stack, [(ComputedRadiographyImageStorage, [ts])])
        assoc = ae.associate("127.0.0.1", scp_stack.port, ae_title="SPINEXR")
        assert assoc.is_established
        with open(filler, "wb") as f:  # the disk fills up
            os.posix_fallocate(f.fileno(), 0, 2 * 2**30)
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        assert status.Status == 0xA700
        assert n(scp_stack) == 0 and list(scp_stack.spool.tmp.iterdir()) == []
        again = ae.associate("127.0.0.1", scp_stack.port, ae_title="SPINEXR")
        assert again.is_rejected
    finally:
        filler.unlink(missing_ok=True)
        scp.stop()


def test_unsupported_sop_class_context_is_rejected(scp_stack: Stack) -> None:
    ae = scu(scp_stack, [MRImageStorage, Verification])
    assoc = ae.associate("127.0.0.1", scp_stack.port, ae_title="SPINEXR")
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
    finally:
        assoc.release()
    assert MRImageStorage in rejected and MRImageStorage not in accepted


def test_every_decodable_transfer_syntax_is_accepted(scp_stack: Stack) -> None:
    ae = AE(ae_title="PACS")
    for sop in ANALYSABLE_SOP_CLASSES:
        for ts in TRANSFER_SYNTAXES:  # one context per syntax
            ae.add_requested_context(sop, [ts])
    assoc = ae.associate("127.0.0.1", scp_stack.port, ae_title="SPINEXR")
    try:
        got = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert got == {(s, t) for s in ANALYSABLE_SOP_CLASSES for t in TRANSFER_SYNTAXES}


def test_oversized_pdu_closes_the_connection_and_the_server_lives_on(scp_stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", scp_stack.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0x7FFF_FFFF) + b"\x00" * 1024)
        sock.settimeout(10)
        try:
            rest = sock.recv(1024)
        except ConnectionResetError:
            rest = b""
    assert rest == b"" or rest[0] in (0x03, 0x07)  # closed, rejected or aborted
    assert echoscu(scp_stack).returncode == 0


def self_signed_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1, made with openssl."""
    openssl = require_tool("openssl")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_with_a_self_signed_pair(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cert, key = self_signed_pair(tmp_path, "node")
    st = build_stack(
        tmp_path, dicom={"tls": {"enabled": True, "cert_file": str(cert), "key_file": str(key)}}
    )
    scp = StoreSCP(st.settings)
    scp.start()
    try:
        _, ds = phantom_bytes(3, sop_class="CR")
        ae = scu(st, [(ComputedRadiographyImageStorage, [str(ds.file_meta.TransferSyntaxUID)])])
        client = ssl.create_default_context(cafile=str(cert))
        assoc = ae.associate(
            "127.0.0.1", st.port, ae_title="SPINEXR", tls_args=(client, "127.0.0.1")
        )
        assert assoc.is_established
        try:
            assert assoc.send_c_store(ds).Status == 0
        finally:
            assoc.release()
        plain = scu(st, [Verification]).associate("127.0.0.1", st.port, ae_title="SPINEXR")
        assert not plain.is_established  # a plain-TCP peer cannot talk to a TLS port
        assert n(st) == 1
    finally:
        scp.stop()


def test_tls_client_certificate_required(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (scert, skey), (ccert, ckey) = (
        self_signed_pair(tmp_path, "node"),
        self_signed_pair(tmp_path, "pacs"),
    )
    st = build_stack(
        tmp_path,
        dicom={
            "tls": {
                "enabled": True,
                "cert_file": str(scert),
                "key_file": str(skey),
                "ca_file": str(ccert),
                "require_client_cert": True,
            }
        },
    )
    scp = StoreSCP(st.settings)
    scp.start()
    try:
        anonymous = ssl.create_default_context(cafile=str(scert))
        ae = scu(st, [Verification])
        no_cert = ae.associate(
            "127.0.0.1", st.port, ae_title="SPINEXR", tls_args=(anonymous, "127.0.0.1")
        )
        assert not no_cert.is_established
        with_cert = ssl.create_default_context(cafile=str(scert))
        with_cert.load_cert_chain(ccert, ckey)
        assoc = ae.associate(
            "127.0.0.1", st.port, ae_title="SPINEXR", tls_args=(with_cert, "127.0.0.1")
        )
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        scp.stop()
