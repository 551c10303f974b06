"""DIMSE: the C-STORE SCP (ingest) and SCU (export)."""
