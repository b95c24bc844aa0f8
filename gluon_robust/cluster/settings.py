"""What a chunk needs besides its slice: the :class:`Loader` of the model and data, and the settings of the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Protocol, Tuple


class Loader(Protocol):
    """Builds the model and the data source on a worker (and on the client).

    It must be picklable (it travels to the workers) and say what it loads in
    ``key``: a worker keeps one loaded model per key and reuses it for every
    chunk (see :func:`run_chunk`).
    """

    key: str

    def load(self) -> Tuple[Any, Any]:
        """``(model, source)``: the classifier and the *whole* data source (chunks take their slices)."""


@dataclass(frozen=True)
class EvaluateSettings:
    """The settings of :func:`~gluon_robust.evaluation.evaluate` that a chunk runs with (its keyword arguments)."""

    recipe: str = "standard"
    attacks: Optional[Tuple[str, ...]] = None
    eps: Tuple[float, ...] = (8 / 255,)
    norm: str = "linf"
    batch_size: Optional[int] = None
    seed: int = 0
    max_examples: int = 8
    max_memory: Optional[int] = None
    probe_size: int = 32

    def prepare_kwargs(self) -> Dict[str, Any]:
        """The keywords of :func:`~gluon_robust.evaluation.evaluate.prepare`."""
        return {"recipe": self.recipe, "attacks": None if self.attacks is None else list(self.attacks),
                "eps": list(self.eps), "norm": self.norm, "batch_size": self.batch_size, "seed": self.seed,
                "max_memory": self.max_memory}

    def kwargs(self) -> Dict[str, Any]:
        """The keywords of :func:`~gluon_robust.evaluation.evaluate`."""
        return {**self.prepare_kwargs(), "max_examples": self.max_examples, "probe_size": self.probe_size}



@dataclass(frozen=True)
class CertifySettings:
    """The settings of ``certify`` (randomized smoothing, Cohen et al. 2019) that a chunk runs with."""

    sigma: float
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    batch_size: Optional[int] = None  # noise samples per forward pass; None: resolved on the client
    clip: bool = False
    seed: int = 0

    def identity(self) -> Dict[str, Any]:
        """What the chunks' numbers depend on besides weights and data (the recipe part of their fingerprint)."""
        from .._version import __version__

        return {"command": "certify", **asdict(self), "version": __version__}



@dataclass(frozen=True)
class AttackSettings:
    """The settings of ``attack`` that a chunk runs with: the attack, its options, the targets and the batch size.

    Attributes
    ----------
    attack : str
        The registered attack's name (see ``gluon-robust list attacks``).
    options : dict
        Its hyperparameters, as :func:`~gluon_robust.attacks.make_attack` takes them.
    target_mode : str, optional
        ``random``, ``least-likely`` or a label for a targeted attack; None for an untargeted one.
    seed : int
        The run's seed (random targets; attacks draw per sample from it).
    batch_size : int, optional
        Samples per batch; None: resolved on the client (as ``attack`` does) before the chunks go out.
    """

    attack: str
    options: Dict[str, Any] = field(default_factory=dict)
    target_mode: Optional[str] = None
    seed: int = 0
    batch_size: Optional[int] = None

    def make(self) -> Any:
        """A fresh attack object of these settings."""
        from ..attacks import make_attack

        return make_attack(self.attack, dict(self.options))

    def identity(self) -> Dict[str, Any]:
        """What the chunks' numbers depend on besides weights and data (the recipe part of their fingerprint)."""
        from .._version import __version__

        return {"command": "attack", **asdict(self), "version": __version__}
