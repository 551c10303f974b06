"""Defects the fuzz harness found, each with the input that found it (``tests/fuzz/inputs``).

* ingest: values pydicom converts only on use (an unknown VR, a length that does not fit
  the VR, a deflated data set that does not inflate, a transfer syntax UID that is not one)
  raised out of `read_header` (C-STORE answered 0xC2FF "internal error", STOW-RS the same
  failure) instead of a refusal ``unparseable``;
* ingest: a deferred value declared past the end of a small file was read with
  ``read(length)``, reserving the declared length (4 GiB from a 11 KiB file): under an
  address-space limit a ``MemoryError``; now refused ``truncated`` before it is read, also
  when the value is one pydicom reads while converting another element (Pixel
  Representation), found by the 100,000-input campaign;
* decode: pylibjpeg-rle panics on some broken RLE streams (pyo3's ``PanicException`` is a
  ``BaseException``), which escaped `decode_pixels` and killed the decode worker;
* preprocess: an unknown VR in a value only the pipeline reads (Pixel Spacing) raised
  ``NotImplementedError`` out of `prepare_image` instead of a typed refusal;
* STOW-RS: a boundary over 256 characters or a malformed part header answered 500;
* ingest (STOW-RS): an unknown VR in the file meta group (Transfer Syntax UID) raised on
  first use, answered 500 (found by the 100,000-input campaign); now ``unparseable``;
* DIMSE: a P-DATA-TF whose command set lacks Command Field (and other malformed PDUs) raised
  in pynetdicom's association thread: a traceback in the log and a bare closed connection,
  now a one-line warning and an A-ABORT.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from ingest_support import build_stack
from testsupport import make_node

from spinexr.fuzz.pdus import associate_rq, drain, echo_command, p_data, read_answer
from spinexr.node.errors import IngestError
from spinexr.node.http.app import create_app
from spinexr.node.ingest.header import read_header
from spinexr.pipeline.errors import ImageRefusal, UnsupportedImageError
from spinexr.pipeline.preprocess import prepare_image

INPUTS = Path(__file__).parent / "inputs"


def header(name: str) -> IngestError:
    with pytest.raises(IngestError) as caught:
        read_header(INPUTS / name, max_sequence_depth=16, max_decompressed_bytes=2**30)
    return caught.value


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("ingest_NotImplementedError.dcm", "NotImplementedError"),
        ("ingest_BytesLengthException.dcm", "BytesLengthException"),
        ("ingest_error.dcm", "error"),  # zlib.error: not a deflated stream
        ("ingest_not_a_transfer_syntax.dcm", "ValueError"),
    ],
)
def test_values_converted_on_use_are_refused_unparseable(name: str, cause: str) -> None:
    refused = header(name)
    assert refused.reason == "unparseable"
    assert type(refused.__cause__).__name__ == cause


@pytest.mark.parametrize(
    "name",
    [
        "ingest_deferred_past_end.dcm",
        # found by the 100,000-input campaign (seed 19): the past-the-end value is Pixel
        # Representation, which pydicom reads while it converts another element
        "ingest_deferred_read_by_another.dcm",
    ],
)
def test_a_value_declared_past_the_end_is_truncated_without_reserving_it(name: str) -> None:
    # Under a 1.5 GiB address-space limit: the old read reserved the declared 4 GiB first.
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 * 2**29, 3 * 2**29))\n"
        "from pathlib import Path\n"
        "from spinexr.node.errors import IngestError\n"
        "from spinexr.node.ingest.header import read_header\n"
        "try:\n"
        f"    read_header(Path({str(INPUTS / name)!r}),"
        " max_sequence_depth=16, max_decompressed_bytes=2**30)\n"
        "except IngestError as exc:\n"
        "    print(exc.reason)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "truncated", done.stderr[-2000:]


def test_a_panicking_rle_decoder_is_a_typed_refusal() -> None:
    ds = pydicom.dcmread(INPUTS / "decode_panic.dcm")
    with pytest.raises(UnsupportedImageError) as caught:
        prepare_image(ds)
    assert caught.value.refusal is ImageRefusal.UNDECODABLE


def test_an_unknown_vr_read_only_by_the_pipeline_is_a_typed_refusal() -> None:
    ds = pydicom.dcmread(INPUTS / "prepare_NotImplementedError.dcm")
    with pytest.raises(UnsupportedImageError) as caught:
        prepare_image(ds)
    assert caught.value.refusal is ImageRefusal.INVALID_HEADER


@pytest.mark.parametrize(
    ("boundary", "body"),
    [
        ("b" * 5000, b"--" + b"b" * 5000 + b"\r\nContent-Type: application/dicom\r\n\r\nx\r\n"),
        ("xyz", b"--xyz\r\nContent Type: application/dicom\r\n\r\nx\r\n--xyz--\r\n"),
    ],
)
def test_a_malformed_multipart_body_is_400(tmp_path, monkeypatch, boundary, body) -> None:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path)
    with TestClient(create_app(stack.settings, stack.ingest)) as client:
        answer = client.post(
            "/dicomweb/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
            },
        )
    assert answer.status_code == 400, answer.text


@pytest.mark.parametrize(
    "name",
    ["stow_meta_034225-stow-dx-explicit.dcm", "stow_meta_036295-stow-cr-explicit.dcm"],
)
def test_an_unknown_vr_in_the_file_meta_is_refused_unparseable(tmp_path, monkeypatch, name) -> None:
    # found by the 100,000-input campaign (seed 19): a bit flip turned the VR of Transfer
    # Syntax UID into 'WI'; pydicom raised on first use, and STOW-RS answered 500
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path)
    part = (INPUTS / name).read_bytes()
    with TestClient(create_app(stack.settings, stack.ingest)) as client:
        answer = client.post(
            "/dicomweb/studies",
            content=b"--B\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--B--\r\n",
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=B'},
        )
    assert answer.status_code == 409, answer.text
    failed = answer.json()["00081198"]["Value"]
    assert [f["00081197"]["Value"] for f in failed] == [[0xC210]]


@pytest.mark.integration
def test_a_command_set_without_command_field_is_aborted(tmp_path) -> None:
    node = make_node(tmp_path).start()
    try:
        with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=10) as sock:
            sock.sendall(associate_rq())
            assert drain(sock)[0] == 2  # A-ASSOCIATE-AC
            command = echo_command()
            no_field = command.replace(b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x00", b"")
            assert no_field != command
            fixed = no_field[:8] + (len(no_field) - 12).to_bytes(4, "little") + no_field[12:]
            sock.sendall(p_data(1, fixed))
            assert read_answer(sock, 10) == "A-ABORT"
    finally:
        node.stop()
    log = node.log()
    assert "Exception in thread" not in log
    assert "association thread failed on a malformed PDU (AttributeError)" in log
