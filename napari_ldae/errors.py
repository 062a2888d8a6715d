"""Errors that napari-ldae reports to users. Each message says what is wrong and what to do."""


class LDAEError(Exception):
    """Base class: a problem with the user's input or environment, shown as one clear message."""


class BundleError(LDAEError):
    """A model bundle (or an official release file) is missing, malformed or incompatible."""


class ScanError(LDAEError):
    """A scan cannot be read, written or preprocessed."""


class CohortError(LDAEError):
    """A cohort folder or table is malformed."""


class TrainingError(LDAEError):
    """A training stage cannot start or continue."""
