"""Metrics and the reproduction of the paper's tables on any cohort."""
