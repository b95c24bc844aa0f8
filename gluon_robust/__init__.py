"""gluon_robust: adversarial robustness for Apache MXNet Gluon and GluonCV.

Attack, evaluate, adversarially fine-tune and defend Gluon classifiers.
:func:`load_classifier` builds a model to evaluate (BatchNorm folded,
parameters frozen), :func:`trainable_classifier` one to train or fine-tune;
:func:`evaluate`, :func:`attack` and :func:`certify` run the command line's
jobs on arrays, a Gluon DataLoader or a data source.
Inputs are always pixel-space (float32 NCHW inside the model's ``bounds``);
normalisation lives inside the :class:`~gluon_robust.model.Classifier`.
"""

from .allocator import tune_allocator

tune_allocator()  # before MXNet runs an operator: see gluon_robust.allocator

from ._compat import check_versions  # noqa: E402

check_versions()

from ._version import __version__  # noqa: E402
from .errors import ConfigError, DataError, GluonRobustError, ModelError  # noqa: E402
from .folding import fold_batchnorm  # noqa: E402
from .model import Classifier, load_classifier, replace_head, trainable_classifier  # noqa: E402
from .api import attack, certify, evaluate  # noqa: E402

__all__ = [
    "__version__",
    "Classifier",
    "load_classifier",
    "trainable_classifier",
    "replace_head",
    "evaluate",
    "attack",
    "certify",
    "fold_batchnorm",
    "GluonRobustError",
    "ConfigError",
    "DataError",
    "ModelError",
]
