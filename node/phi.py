"""Keeping patient data out of logs and stored error messages.

Logs and stored errors carry UIDs and job ids, never patient names, IDs, birth dates or
accession numbers. The node's own messages are written that way; the libraries' are not
always: pydicom's validation warnings and conversion errors quote the value
(``Unable to convert '1931-09-17' to 'DA' object``), highdicom logs a doubtful patient name
in full, and an exception's text goes into a traceback and into ``jobs.last_error``.

Two guards:

* :func:`redact` replaces the identifying values of the data sets at hand
  (:func:`identifying_values`: names and their components, IDs, birth date, accession
  number, ...) in a text, and every quoted string that is not a UID, a two-letter VR or a
  traceback's source file (:func:`scrub_quoted`), which is how these libraries quote
  values. The job runner passes every error it logs or stores through it
  (:func:`safe_error`, :func:`format_exception`).
* :class:`LibraryRecordFilter`, installed on the log handler by the entry points
  (`spinexr.node.logs.configure_logging`), scrubs the quoted strings of records from the
  libraries that quote values (pydicom, highdicom, and Python warnings, which pydicom also
  raises) and of every exception text a record carries.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

REDACTED = "…"
"""What a redacted value is replaced with."""

IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
)
"""Attributes whose values identify the patient (or name a person) in an image header."""

VALUE_QUOTING_LOGGERS = ("pydicom", "highdicom", "py.warnings")
"""Loggers whose messages may quote a data set's values."""

MIN_LENGTH = 2
"""Shorter values (a sex, an initial) are not searched for: they would match everywhere."""

_QUOTED = re.compile(r"""(['"])(.+?)\1(?=[\s.,;:)\]]|$)""", re.DOTALL)
"""A quoted string: from a quote to the first same quote that ends a word (the value inside
may hold other quotes, newlines and any length: pydicom quotes a garbled value whole)."""
_UID = re.compile(r"[0-9]+(\.[0-9]+)+")
_VR = re.compile(r"[A-Z]{2}")
_SOURCE = re.compile(r"/[^\s]*\.py")  # a traceback's source file


def _forms(value: str) -> set[str]:
    """Return a value as written, its name components, a date with and without dashes."""
    value = value.strip()
    forms = {value}
    for group in value.split("="):
        forms.add(group)
        forms.update(part.strip() for part in group.split("^"))
    if re.fullmatch(r"[0-9]{8}", value):
        forms.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    digits = re.sub(r"[-./ ]", "", value)
    if digits != value and re.fullmatch(r"[0-9]{8}", digits):
        forms.add(digits)
    return {f for f in forms if len(f) >= MIN_LENGTH}


def identifying_values(datasets: Iterable[Dataset]) -> frozenset[str]:
    """Return the identifying values of data sets (see :data:`IDENTIFYING_KEYWORDS`).

    Parameters
    ----------
    datasets : iterable of Dataset
        Image headers (values are read without pydicom's validation, which would log them).

    Returns
    -------
    frozenset of str
        Each value, each name component, each birth date also as ``YYYY-MM-DD``.
    """
    found: set[str] = set()
    with config.disable_value_validation():
        for ds in datasets:
            for keyword in IDENTIFYING_KEYWORDS:
                try:
                    value = ds.get(keyword)
                except (ValueError, TypeError, LookupError):
                    continue
                if value is None or value == "":
                    continue
                values = value if isinstance(value, list | tuple | MultiValue) else [value]
                for item in values:
                    found.update(_forms(str(item)))
    return frozenset(found)


def scrub_quoted(text: str) -> str:
    """Replace every quoted string that is not a UID, a two-letter VR or a source file.

    Parameters
    ----------
    text : str
        A message from a library that quotes values.

    Returns
    -------
    str
        The message with ``'…'`` for each such quoted string.
    """

    def keep(match: re.Match[str]) -> str:
        inner = match.group(2)
        if _UID.fullmatch(inner) or _VR.fullmatch(inner) or _SOURCE.fullmatch(inner):
            return match.group(0)
        return f"{match.group(1)}{REDACTED}{match.group(1)}"

    return _QUOTED.sub(keep, text)


def redact(text: str, values: Iterable[str] = ()) -> str:
    """Remove identifying values and quoted strings from a text.

    Parameters
    ----------
    text : str
        A message (an exception's text, a traceback).
    values : iterable of str
        From :func:`identifying_values`.

    Returns
    -------
    str
        The text without them.
    """
    for value in sorted(set(values), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return scrub_quoted(text)


def safe_error(exc: BaseException, values: Iterable[str] = ()) -> str:
    """Return ``"<ExceptionType>: <message>"`` with the message redacted.

    Parameters
    ----------
    exc : BaseException
        The error.
    values : iterable of str
        Identifying values of the data sets involved.

    Returns
    -------
    str
        The text to log or store.
    """
    return f"{type(exc).__name__}: {redact(str(exc), values)}"


def format_exception(exc: BaseException, values: Iterable[str] = ()) -> str:
    """Return an exception's traceback (its causes included), redacted.

    Parameters
    ----------
    exc : BaseException
        The error.
    values : iterable of str
        Identifying values of the data sets involved.

    Returns
    -------
    str
        The traceback text.
    """
    return redact("".join(traceback.format_exception(exc)).rstrip(), values)


class LibraryRecordFilter(logging.Filter):
    """Scrub quoted values from library records and exception texts (see the module doc).

    A record from a logger in :data:`VALUE_QUOTING_LOGGERS` gets its message scrubbed; any
    record with an exception gets its traceback text scrubbed. The node's own messages are
    left as they are (they quote AE titles and settings, never values of a data set).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        name = record.name
        if any(name == n or name.startswith(n + ".") for n in VALUE_QUOTING_LOGGERS):
            record.msg = scrub_quoted(record.getMessage())
            record.args = None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = scrub_quoted(
                "".join(traceback.format_exception(*record.exc_info)).rstrip()
            )
        return True
