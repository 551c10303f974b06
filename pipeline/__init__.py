"""Inference library for the VinDr-SpineXR method (no networking, no database)."""
