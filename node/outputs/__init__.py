"""Builders of the DICOM objects the node sends back: SR, GSPS, KOS, Secondary Capture.

One module per object (`sr`, `gsps`, `kos`, `sc`), each a pure function from the source
datasets, the typed `StudyResult` and the settings to a highdicom object; `codes` holds every
coded concept, `provenance` the equipment facts and deterministic UIDs every object carries,
and `build.build_outputs` picks the objects of the site profile.
"""

from spinexr.node.outputs.build import BuiltObject, build_outputs
from spinexr.node.outputs.provenance import output_uid
from spinexr.node.outputs.sr import SupersededReport

__all__ = ["BuiltObject", "SupersededReport", "build_outputs", "output_uid"]
