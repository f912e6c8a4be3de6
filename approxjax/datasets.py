"""Offline datasets for the runner (nothing is downloaded, ever): ``load(name, data_dir)``."""

from approxjax._src.runner.datasets import (
    Dataset,
    DatasetError,
    load,
    load_cifar10,
    load_digits,
    load_idx,
    load_text,
)

__all__ = [
    "Dataset",
    "DatasetError",
    "load",
    "load_cifar10",
    "load_digits",
    "load_idx",
    "load_text",
]
