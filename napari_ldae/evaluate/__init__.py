"""Metrics and the reproduction of the paper's tables on any cohort."""

#: Sections of ``napari-ldae evaluate`` (each can be skipped); kept here, import-light, for the CLI.
SECTIONS = ("reconstruction", "semantic_only", "probe", "interpolation", "extrapolation",
            "manipulation", "code_use")

#: How the linear probes are fitted: the trainer's defaults (``probe`` section of a training
#: config) and what ``evaluate`` refits with. Here, import-light, so that ``train`` takes them
#: from ``evaluate`` and never the other way round.
PROBE_FITS = {
    "positive": "AD",
    "negative": "CN",
    "classifier": {"optimizer": "adam", "lr": 1e-3, "steps": 2000},
    "age": {"optimizer": "sgd", "lr": 1e-3, "steps": 2000},
}

#: ``evaluate --probe-fit``: ``paper``, the trainer's probes above (the reference's fits);
#: ``regularised``, L2-penalised fits to convergence, the penalty chosen in each fold by
#: subject-grouped inner cross-validation.
PROBE_FIT_KINDS = ("paper", "regularised")
