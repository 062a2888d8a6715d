"""Metrics and the reproduction of the paper's tables on any cohort."""

#: Sections of ``napari-ldae evaluate`` (each can be skipped); kept here, import-light, for the CLI.
SECTIONS = ("reconstruction", "semantic_only", "probe", "interpolation", "manipulation",
            "code_use")
