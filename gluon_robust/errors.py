"""Exceptions that carry a message meant for the user.

Every error a user can cause by bad input (a missing file, a wrong shape, an
unknown name, corrupt weights) is raised as a :class:`GluonRobustError`
subclass with a one-line, actionable message. The command-line interface
prints that line and exits non-zero; library users can catch the base class.
"""

__all__ = ["GluonRobustError", "ConfigError", "DataError", "ModelError", "TrainingDiverged"]


class GluonRobustError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ConfigError(GluonRobustError, ValueError):
    """A model config, a command-line value or a hyperparameter is invalid."""


class DataError(GluonRobustError, ValueError):
    """A data source is missing, empty, unreadable or of the wrong shape or range."""


class ModelError(GluonRobustError, ValueError):
    """A model name, architecture or weights file cannot be used."""


class TrainingDiverged(GluonRobustError, ArithmeticError):
    """The training loss or the parameters became NaN or infinite; the last finite checkpoint is kept."""
