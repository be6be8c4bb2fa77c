"""User-facing errors. The CLI prints their message as one line and exits with code 2."""

from __future__ import annotations


class SteerkitError(Exception):
    """Base class: a problem the user can fix. The message says what to do."""


class ModelLoadError(SteerkitError):
    """A model spec could not be resolved or loaded."""


class UnsupportedArchitectureError(SteerkitError):
    """No adapter knows this model family."""


class PreflightError(SteerkitError):
    """The apparatus check failed (weights not loaded, degenerate generation, ...)."""


class LayerSpecError(SteerkitError):
    """A layer specification is invalid or out of range."""


class CorpusError(SteerkitError):
    """The story corpus is malformed."""


class ReadoutError(SteerkitError):
    """A concept-vector directory is missing, malformed or inconsistent."""


class RunDirError(SteerkitError):
    """A run directory is missing, malformed or not what the command needs."""


class ExperimentError(SteerkitError):
    """An intervention experiment was given bad input (R levels, prompts, readout)."""


class TrainingConfigError(SteerkitError, ValueError):
    """A training hyper-parameter is invalid (also a ValueError, as the conventions ask)."""
