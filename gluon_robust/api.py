"""The Python API of the command line: ``attack`` and ``certify`` on any data (``evaluate`` is re-exported).

Each function takes the model and the data the way a Python user holds them
-- ``(x, y)`` NumPy arrays or NDArrays, a Gluon ``DataLoader``, or a
:class:`~gluon_robust.data.DataSource` (see :func:`~gluon_robust.data.as_source`)
-- and runs the same code as the matching ``gluon-robust`` command::

    import gluon_robust as gr

    model = gr.load_classifier("mnist_resnet20")
    summary = gr.attack(model, (x, y), attack="pgd", eps=0.1, steps=40)
    report = gr.evaluate(model, (x, y), attacks=["fgsm", "pgd"], eps=[0.1])
    report = gr.certify(model, (x, y), sigma=0.25, n=1000)

``out_dir`` is optional everywhere: without it nothing is written and the
result is only returned.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from .data import as_source
from .evaluation import evaluate
from .validation import check_int

__all__ = ["attack", "certify", "evaluate"]

logger = logging.getLogger(__name__)


def attack(
    model: Any,
    data: Any,
    labels: Any = None,
    *,
    attack: str = "pgd",
    eps: Optional[float] = None,
    target: Optional[Union[int, str]] = None,
    out_dir: Optional[Union[str, Path]] = None,
    batch_size: Optional[int] = None,
    max_memory: Optional[int] = None,
    seed: int = 0,
    max_images: int = 100,
    **options: Any,
) -> Dict[str, Any]:
    """Attack ``model`` on ``data`` as ``gluon-robust attack`` does, and return the summary.

    Parameters
    ----------
    model : Classifier
        The attacked model (pixel inputs inside ``model.bounds``).
    data : arrays, DataLoader, Dataset or DataSource
        See :func:`~gluon_robust.data.as_source`; image arrays take ``labels``.
    labels : array-like, optional
        The labels of image arrays.
    attack : str
        A registered attack name (``gluon-robust list attacks``).
    eps : float, optional
        Budget in pixel units (the attack's default when None).
    target : int or str, optional
        A targeted attack: ``"random"``, ``"least-likely"`` or a class label
        (``--targeted --target``); None (default) is untargeted.
    out_dir : str or path, optional
        Write ``summary.json``, ``adversarial.npz``, ``per_sample.csv`` and
        PNG pairs here (all or nothing); None keeps nothing.
    batch_size : int, optional
        As ``--batch-size``; None (default) picks the largest batch that fits
        ``max_memory`` bytes (default 4 GiB, see :mod:`gluon_robust.memory`).
    max_memory : int, optional
        As ``--max-memory``, in bytes.
    seed, max_images : int
        As the flags ``--seed`` and ``--max-images``.
    **options
        Any other hyperparameter of the attack (``steps=40``, ``norm="l2"``...);
        an option the attack does not take is a ConfigError listing those it does.

    Returns
    -------
    dict
        The summary: ``n``, ``clean_accuracy``, ``robust_accuracy``,
        ``success_rate``, ``max_perturbation``, ``seconds`` and more (see
        :func:`~gluon_robust.jobs.run_attack_job`).
    """
    from .attacks import ATTACKS, make_attack
    from .jobs import run_attack_job

    seed = check_int("seed", seed, minimum=0, maximum=2 ** 32 - 1)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size)
    max_images = check_int("max_images", max_images, minimum=0)
    if eps is not None:
        options["eps"] = eps
    if "seed" in ATTACKS.parameters(attack):
        options.setdefault("seed", seed)
    built = make_attack(attack, options)  # validates every option before any data is read
    source = as_source(data, labels)
    return run_attack_job(
        model, source, built, attack_name=attack.strip().lower(), out_dir=out_dir, batch_size=batch_size,
        max_memory=max_memory, target_mode=target, seed=seed, max_images=max_images, options=options,
    )


def certify(
    model: Any,
    data: Any,
    labels: Any = None,
    *,
    sigma: float = 0.25,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    batch_size: int = 1000,
    clip: bool = False,
    seed: int = 0,
    out_dir: Optional[Union[str, Path]] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Certified L2 accuracy under randomized smoothing, as ``gluon-robust certify`` computes it.

    Parameters
    ----------
    model : Classifier
        The base classifier (ideally trained with Gaussian noise).
    data : arrays, DataLoader, Dataset or DataSource
        See :func:`~gluon_robust.data.as_source`; image arrays take ``labels``.
    labels : array-like, optional
        The labels of image arrays.
    sigma, n0, n, alpha, radii, batch_size, clip, seed
        As the flags ``--sigma``, ``--n0``, ``--n``, ``--alpha``, ``--radii``,
        ``--batch-size``, ``--clip-noise``, ``--seed``.
    out_dir : str or path, optional
        Also write the report to ``out_dir/certify.json`` (atomically).
    progress : bool
        A progress bar over the samples.

    Returns
    -------
    dict
        ``certified_accuracy`` (radius -> fraction), ``abstain_rate``,
        per-sample ``points`` and the settings.
    """
    from .evaluation.certify import certify_source
    from .io import atomic_write_json
    from .reporting import staged_output, versions
    from .validation import check_out_dir

    if out_dir is not None:
        check_out_dir("out_dir", out_dir)
    report = certify_source(
        model, as_source(data, labels), sigma=sigma, n0=n0, n=n, alpha=alpha, radii=radii, batch_size=batch_size,
        clip=clip, seed=seed, progress=progress,
    )
    report["versions"] = versions()
    if out_dir is not None:
        with staged_output(out_dir) as stage:
            atomic_write_json(stage / "certify.json", report)
        logger.info("wrote %s", Path(out_dir) / "certify.json")
    return report
