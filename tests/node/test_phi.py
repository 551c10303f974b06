"""Identifying values are found in headers and kept out of error texts and log records."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest
from pydicom import config
from pydicom.dataset import Dataset

from spinexr.node import phi
from spinexr.node.logs import configure_logging


def header() -> Dataset:
    ds = Dataset()
    with config.disable_value_validation():
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Müller^Jürgen"
        ds.PatientID = "PIDQ7X3301"
        ds.OtherPatientIDs = ["OPIDQ7X1", "OPIDQ7X2"]
        ds.PatientBirthDate = "1931-09-17"  # not a valid DA
        ds.AccessionNumber = "ACCQ7X3301"
        ds.PatientSex = "F"
        ds.StudyInstanceUID = "1.2.3.4"
    return ds


def test_identifying_values_cover_names_ids_dates_and_accession(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading them must not warn (a warning quotes them)
        values = phi.identifying_values([header()])
    assert {
        "Müller^Jürgen",
        "Müller",
        "Jürgen",
        "PIDQ7X3301",
        "OPIDQ7X1",
        "OPIDQ7X2",
        "1931-09-17",
        "19310917",
        "ACCQ7X3301",
    } <= values
    assert "F" not in values and "1.2.3.4" not in values
    assert not caplog.records


def test_redact_removes_values_and_quoted_strings_but_keeps_uids_and_vrs() -> None:
    values = phi.identifying_values([header()])
    text = (
        "Unable to convert '1931-09-17' to 'DA' object for PIDQ7X3301 (Müller), "
        "study '1.2.3.4', in \"/work/node/x.py\""
    )
    assert phi.redact(text, values) == (
        "Unable to convert '…' to 'DA' object for … (…), study '1.2.3.4', in \"/work/node/x.py\""
    )
    error = phi.safe_error(ValueError("value 'Quillfeather' is invalid"))
    assert error == "ValueError: value '…' is invalid"


def test_a_long_garbled_value_with_quotes_inside_is_scrubbed_whole() -> None:
    # Found by the fuzz campaign: a UI value whose length field was mutated swallowed the
    # next elements; pydicom's warning quoted all 654 bytes, the patient's name among them,
    # with a double quote and control characters inside.
    garbled = (
        "1.2.840.10008.5.1.4.1.1.1.1\x00\x08\x00\x18\x00@\x00\x00\x00"
        + '1.2.3\x08\x00"\x00\x08\x00\x00\x0020160503' * 20
        + "\x10\x00\x10\x00\x0c\x00\x00\x00PHANTOM^7960\x10\x00 \x00PH07960 19750119"
    )
    text = phi.scrub_quoted(
        f"The value length ({len(garbled)}) exceeds the maximum length of 64 allowed for VR UI."
        f" Invalid value for VR UI: '{garbled}'. Please see <https://dicom.nema.org/x> for..."
    )
    for value in ("PHANTOM", "7960", "PH07960", "19750119"):
        assert value not in text, text
    assert text.endswith(
        "Invalid value for VR UI: '…'. Please see <https://dicom.nema.org/x> for..."
    )


def test_format_exception_redacts_the_whole_chain() -> None:
    values = phi.identifying_values([header()])
    try:
        try:
            raise TypeError("PIDQ7X3301 is not an int")
        except TypeError as exc:
            raise ValueError("Unable to convert '1931-09-17' to 'DA' object") from exc
    except ValueError as exc:
        text = phi.format_exception(exc, values)
    assert "Traceback" in text and "ValueError" in text and "TypeError" in text
    assert "1931-09-17" not in text and "PIDQ7X3301" not in text


@pytest.fixture
def node_logging() -> Iterator[io.StringIO]:
    """The entry points' logging set-up, writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        logging.captureWarnings(False)
        root.handlers[:], level = saved
        root.setLevel(level)


def test_library_records_and_warnings_are_scrubbed_node_records_are_not(
    node_logging: io.StringIO,
) -> None:
    logging.getLogger("pydicom").warning("Invalid value for VR DA: '1931-09-17'.")
    logging.getLogger("highdicom.base").warning(
        'value of argument "patient_name" is potentially invalid: "%s"', "Quillfeather Zeb"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("Invalid value for VR DA: '19450228'.", UserWarning, stacklevel=1)
    logging.getLogger("spinexr.node.dimse.handlers").warning(
        "association from %s rejected: calling AE %r is not allowed", "STRANGER", "STRANGER"
    )
    try:
        raise ValueError("Unable to convert '1923-04-05' to 'DA' object")
    except ValueError:
        logging.getLogger("spinexr.node.jobs.runner").exception("job 7: failed")
    text = node_logging.getvalue()
    for value in ("1931-09-17", "Quillfeather", "19450228", "1923-04-05"):
        assert value not in text, text
    assert "Invalid value for VR DA: '…'." in text
    assert "calling AE 'STRANGER' is not allowed" in text  # the node's own, untouched
    assert "job 7: failed" in text and "ValueError: Unable to convert '…' to 'DA'" in text
