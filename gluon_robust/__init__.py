"""gluon_robust: adversarial robustness for Apache MXNet Gluon and GluonCV.

Attack, evaluate, adversarially fine-tune and defend Gluon classifiers.
Inputs are always pixel-space (float32 NCHW inside the model's ``bounds``);
normalisation lives inside the :class:`~gluon_robust.model.Classifier`.
"""

from ._compat import check_versions

check_versions()

from ._version import __version__  # noqa: E402
from .errors import ConfigError, DataError, GluonRobustError, ModelError  # noqa: E402
from .folding import fold_batchnorm  # noqa: E402
from .model import Classifier, load_classifier  # noqa: E402

__all__ = [
    "__version__",
    "Classifier",
    "load_classifier",
    "fold_batchnorm",
    "GluonRobustError",
    "ConfigError",
    "DataError",
    "ModelError",
]
