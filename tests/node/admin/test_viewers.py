"""What each viewer family shows of what a destination receives (admin dashboard advice)."""

from __future__ import annotations

from spinexr.node.admin.viewers import advice, built_objects, destinations_view, sent_objects
from spinexr.node.settings import Settings


def _settings(tmp_path, **output: bool) -> Settings:
    return Settings.model_validate(
        {
            "storage": {"data_dir": str(tmp_path)},
            "output": output,
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                {
                    "name": "ohif",
                    "kind": "stowrs",
                    "url": "http://127.0.0.1:8042/dicom-web",
                    "objects": ["sr", "sc"],
                },
            ],
        }
    )


def test_default_profile_advises_a_capture_for_ohif_readers(tmp_path) -> None:
    settings = _settings(tmp_path)
    # The CT reformat is built for every analysed CT series, whatever the profile.
    assert built_objects(settings) == ["sr", "gsps", "reformat"]
    pacs, ohif = settings.destinations
    assert sent_objects(settings, pacs) == ["sr", "gsps", "reformat"]
    # The node builds no capture: the OHIF destination asks for one and gets only the SR.
    assert sent_objects(settings, ohif) == ["sr"]
    by_family = {a["family"]: a for a in advice(["sr", "gsps"])}
    assert by_family["OHIF v3"] == {
        "family": "OHIF v3",
        "sees": "SR",
        "add": "Secondary Capture",
        "evidence": by_family["OHIF v3"]["evidence"],
    }
    gsps = by_family["PACS viewers with GSPS (IHE CPI), Weasis"]
    assert gsps["sees"] == "GSPS" and gsps["add"] == ""
    assert by_family["viewers without GSPS or SR display"]["sees"] == "nothing"


def test_with_captures_every_family_sees_the_results(tmp_path) -> None:
    settings = _settings(tmp_path, secondary_capture=True)
    view = {d["name"]: d for d in destinations_view(settings)}
    assert view["ohif"]["objects"] == ["SR", "Secondary Capture"]
    ohif_advice = {a["family"]: a for a in view["ohif"]["advice"]}  # type: ignore[union-attr]
    assert ohif_advice["OHIF v3"]["add"] == ""
    assert ohif_advice["viewers without GSPS or SR display"]["sees"] == "Secondary Capture"
    # The PACS destination takes the default objects (SR + GSPS), not the capture.
    assert view["pacs"]["objects"] == ["SR", "GSPS", "CT reformat"]
