"""Fuzzing harness: mutated DICOM, PDUs and STOW-RS bodies against a live node and the pipeline.

``python -m spinexr.fuzz --inputs N --seed S --targets cstore,stow,decode --out DIR`` (or
``make fuzz``) runs a campaign; see ``fuzz/README.md`` for what counts as a finding.
"""
