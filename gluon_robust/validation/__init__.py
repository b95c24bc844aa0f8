"""Validation of user input, in one place for the API and the command line.

Every check raises an :class:`InvalidValue` (a :class:`~gluon_robust.errors.ConfigError`)
or a :class:`~gluon_robust.errors.DataError` *before* any work starts. An
:class:`InvalidValue` knows the name of the parameter it is about, so the
command line can say ``--step-size must be > 0, got nan`` where the Python API
says ``step_size must be > 0, got nan`` (see :func:`flag_message`).

The checks:

* numbers: :func:`check_real`, :func:`check_positive`, :func:`check_int`,
  :func:`check_probability`, :func:`check_choice`, :func:`check_bool`;
* labels: :func:`check_labels` (integers in ``[0, classes)``);
* sizes: :func:`check_sample_count` (a count that cannot be processed in
  bounded memory, e.g. ``certify --n 1e11``, is refused up front);
* budgets: :func:`check_eps` (an epsilon in the units of the model's bounds);
* files and directories: :func:`check_out_dir`, :func:`check_distinct_paths`,
  :func:`check_file_name`, :func:`same_path`;
* devices: :func:`check_contexts` (a device that does not exist, or more
  devices than a command can use).
"""

from .system import check_contexts, check_distinct_paths, check_file_name, check_host, check_out_dir, same_path
from .values import (  # noqa: F401 -- FLOAT32_MAX re-exported
    FLAG_NAMES, FLOAT32_MAX, FLOAT32_TINY, MAX_SAMPLE_COUNT, InvalidValue, MissingValue, check_bool, check_choice,
    check_eps, check_int, check_labels, check_positive, check_probability, check_real, check_sample_count,
    check_source_labels, flag_message,
)

__all__ = [
    "InvalidValue", "MissingValue", "check_real", "check_positive", "check_int", "check_probability", "check_choice",
    "check_bool", "check_labels", "check_sample_count", "check_eps", "check_out_dir", "check_distinct_paths",
    "check_file_name", "same_path",
    "check_contexts", "check_host", "check_source_labels", "flag_message", "FLAG_NAMES", "MAX_SAMPLE_COUNT", "FLOAT32_TINY",
]
