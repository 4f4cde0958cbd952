"""Sweeps: one Caffe net and its TensorFlow port on many inputs, one verdict (docs/sweep.md).

``layerparity.sweep`` is :func:`~layerparity.sweeper.runner.sweep`; ``layerparity sweep``
is :mod:`layerparity.sweeper.cli`. Importing this package imports neither framework.
"""

from .runner import SweepResult, default_workers, sweep

__all__ = ["sweep", "SweepResult", "default_workers"]
