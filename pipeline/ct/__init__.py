"""CT input (issue 17): choose the series of a study to analyse and load it as a volume.

`series.select_series` picks one series from a study's instance headers by stated rules and
records why the others were ignored; `volume.load_volume` reads that series into a
Hounsfield-unit volume with its affine (built with highdicom), within a memory bound, or
refuses it with a `errors.CtRefusal`. `geometry` holds the slice-stack checks both share.
"""
