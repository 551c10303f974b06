"""Fuzz targets: the live node over DIMSE and STOW-RS, and the pipeline's decode path."""
