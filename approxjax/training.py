"""Training and evaluation steps under a multiplier (shared by the runner,
notebooks, benchmarks and tests): see :func:`make_train_step`."""

from approxjax._src.runner.steps import (
    classification_loss,
    make_eval_step,
    make_loss,
    make_train_step,
)

__all__ = ["classification_loss", "make_eval_step", "make_loss", "make_train_step"]
