"""Scans in and out: NIfTI I/O, the preprocessing contract and its inverse, cohorts."""
