"""A guard against catastrophic overfitting in single-step adversarial training.

Wong, Rice & Kolter (2020), "Fast is better than free: Revisiting adversarial
training", https://arxiv.org/abs/2001.03994, Section 5: FGSM training can
suddenly overfit to its own single-step attack; within an epoch the PGD
accuracy drops to near zero while the FGSM accuracy rises. They detect it
with a PGD check on a held-out batch once per epoch and stop early, keeping
the weights from before the collapse. This guard implements that decision;
the loop (or the user) measures the PGD accuracy, calls :meth:`OverfittingGuard.update`
and acts on the answer.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import numpy as np
from mxnet import gluon, nd

from ..validation import check_choice, check_positive

__all__ = ["OverfittingGuard", "GUARD_ACTIONS"]

logger = logging.getLogger(__name__)

#: Values of ``on_collapse``.
GUARD_ACTIONS = ("rollback", "stop", "warn")


class OverfittingGuard:
    """Detect a collapse of PGD accuracy and keep the best weights.

    A *collapse* is a PGD accuracy more than ``max_drop`` below the best one
    seen so far (absolute, accuracies in ``[0, 1]``). Catastrophic
    overfitting takes the PGD accuracy from tens of percent to near zero
    within an epoch, while ordinary fluctuations are a few points.

    Parameters
    ----------
    max_drop : float
        Largest tolerated drop below the best PGD accuracy (default 0.2).
    on_collapse : str
        ``"rollback"`` (default): stop and restore the best epoch's weights;
        ``"stop"``: stop and keep the current weights; ``"warn"``: log and go on.

    Examples
    --------
    >>> guard = OverfittingGuard(max_drop=0.2)
    >>> for epoch in range(epochs):
    ...     train_one_epoch()
    ...     verdict = guard.update(epoch, pgd_accuracy(model, held_out), params=net.collect_params())
    ...     if verdict == "collapse" and guard.on_collapse != "warn":
    ...         if guard.on_collapse == "rollback":
    ...             guard.restore(net.collect_params())
    ...         break
    """

    def __init__(self, *, max_drop: float = 0.2, on_collapse: str = "rollback") -> None:
        self.max_drop = check_positive("max_drop", max_drop, upper=1.0)
        self.on_collapse = check_choice("on_collapse", on_collapse, GUARD_ACTIONS)
        self.best_accuracy = -1.0
        self.best_epoch: Optional[int] = None
        self.collapsed_epoch: Optional[int] = None
        self.history: List[float] = []
        self.best_params: Optional[Dict[str, np.ndarray]] = None

    def __repr__(self) -> str:
        return f"OverfittingGuard(max_drop={self.max_drop}, on_collapse={self.on_collapse!r})"

    def update(self, epoch: int, pgd_accuracy: float, params: Optional[gluon.ParameterDict] = None) -> str:
        """Record the PGD accuracy after ``epoch``.

        Parameters
        ----------
        epoch : int
            The epoch just finished.
        pgd_accuracy : float
            PGD accuracy on the held-out batch, in ``[0, 1]``.
        params : ParameterDict, optional
            The network's parameters: copied when this is the best epoch so
            far, for :meth:`restore`.

        Returns
        -------
        str
            ``"best"`` (a new best), ``"ok"`` or ``"collapse"``.
        """
        accuracy = check_positive("pgd_accuracy", pgd_accuracy, allow_zero=True, upper=1.0)
        self.history.append(accuracy)
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, int(epoch)
            if params is not None:
                self.best_params = {name: p.data(p.list_ctx()[0]).asnumpy() for name, p in params.items()}
            return "best"
        if self.best_accuracy - accuracy > self.max_drop:
            self.collapsed_epoch = int(epoch)
            logger.warning(
                "catastrophic overfitting: PGD accuracy fell from %.1f%% (epoch %d) to %.1f%% (epoch %d)",
                100 * self.best_accuracy, (self.best_epoch or 0) + 1, 100 * accuracy, epoch + 1,
            )
            return "collapse"
        return "ok"

    def restore(self, params: gluon.ParameterDict) -> int:
        """Copy the best epoch's values back into ``params`` on every context; returns the epoch restored."""
        if self.best_params is None or self.best_epoch is None:
            raise RuntimeError("no best weights recorded: pass params= to update()")
        for name, p in params.items():
            p.set_data(nd.array(self.best_params[name], dtype=self.best_params[name].dtype))
        logger.warning("rolled back to the weights after epoch %d", self.best_epoch + 1)
        return self.best_epoch

    def state_dict(self) -> Dict[str, Any]:
        """JSON-friendly state (the best weights are returned separately by :attr:`best_params`)."""
        return {"best_accuracy": self.best_accuracy, "best_epoch": self.best_epoch,
                "collapsed_epoch": self.collapsed_epoch, "history": list(self.history)}

    def load_state_dict(self, state: Dict[str, Any], best_params: Optional[Dict[str, np.ndarray]] = None) -> None:
        """Restore what :meth:`state_dict` (and :attr:`best_params`) held."""
        self.best_accuracy = float(state["best_accuracy"])
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        self.collapsed_epoch = None if state.get("collapsed_epoch") is None else int(state["collapsed_epoch"])
        self.history = [float(v) for v in state.get("history", [])]
        self.best_params = best_params
