"""Header values DICOM does not allow, repaired in the data sets the runner analyses.

Images from the field carry birth dates written with dashes (``1931-09-17``), times with
colons, a sex in lower case. The output builders (highdicom) parse the Patient and Study
attributes they copy into the SR and GSPS, and refuse such values: one header detail would
fail the whole analysis, and the "analysis failed" report too. The runner therefore repairs
them in the data sets it has read from the spool (the stored files are never changed): a
date or time without its separators when that makes it valid, else empty (these attributes
are type 2); a sex upper-cased, else empty. Only keywords are reported, never values.
"""

from __future__ import annotations

import re

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

_DA = re.compile(r"[0-9]{8}")
_TM = re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?")
_FIELDS = (
    ("PatientBirthDate", _DA, "-./ "),
    ("StudyDate", _DA, "-./ "),
    ("StudyTime", _TM, ": "),
)
"""Attributes the builders parse (PS3.5 DA and TM), and the separators a repair removes."""
SEXES = ("M", "F", "O")


def conform_header(ds: Dataset) -> list[str]:
    """Repair, in place, the header values the output builders would refuse.

    Parameters
    ----------
    ds : Dataset
        A data set read from the spool (in memory).

    Returns
    -------
    list of str
        Keywords of the attributes repaired (empty when none was).
    """
    repaired: list[str] = []
    with config.disable_value_validation():  # its warnings would quote the values
        for keyword, pattern, separators in _FIELDS:
            value = ds.get(keyword)
            if value is None or isinstance(value, list):
                continue
            text = str(value).strip()
            if not text or _valid(text, pattern, keyword):
                continue
            fixed = text.translate({ord(c): None for c in separators})
            setattr(ds, keyword, fixed if _valid(fixed, pattern, keyword) else "")
            repaired.append(keyword)
        sex = ds.get("PatientSex")
        if sex is not None and str(sex) not in ("", *SEXES):
            upper = str(sex).strip().upper()
            ds.PatientSex = upper if upper in SEXES else ""
            repaired.append("PatientSex")
    return repaired


def _valid(text: str, pattern: re.Pattern[str], keyword: str) -> bool:
    """Whether ``text`` is a DA or TM in the standard's form, and a real date or time."""
    if not pattern.fullmatch(text):
        return False
    try:
        (TM if keyword.endswith("Time") else DA)(text)
    except ValueError:
        return False
    return True
