"""What the runner does beyond classification: a task's loss, what it
predicts on the test set under the multiplier, and the metrics it scores
those predictions by (translation: BLEU; detection: COCO mAP)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
    loss: Callable  # (outputs, labels) -> (loss, metrics with accuracy and count)
    predict: Callable  # (params, inputs, multiplier) -> predictions of a batch
    inputs: Callable  # data -> the test inputs predict takes, batched along axis 0
    score: Callable  # (data, predictions of the whole test set) -> {metric: value}
    verb: str  # the progress bar's word


def task_for(data, model, cfg, under: Callable) -> Task | None:
    """The task of ``data`` (None: classification, scored by the loss alone)."""
    from approxjax._src.runner.detection import DetectionData
    from approxjax._src.runner.translation import TranslationData

    if isinstance(data, TranslationData):
        from approxjax._src.runner import translation as tr

        def bleu(data, ids: np.ndarray) -> dict[str, Any]:
            hyps = [data.target_vocab.decode(row) for row in ids]
            return {"bleu": tr.bleu(hyps, data.test_references)}

        return Task(
            tr.sequence_loss,
            tr.make_decoder(model, cfg.beam, under),
            lambda d: d.x_test[:, : d.source_len],
            bleu,
            "decode",
        )
    if isinstance(data, DetectionData):
        from approxjax._src.runner import detection as det

        def predict(params, x, multiplier):
            return under(model.apply, multiplier)(params, x)

        def mean_ap(data, outputs: np.ndarray) -> dict[str, Any]:
            size = data.x_test.shape[1]
            found = det.decode_boxes(outputs, size)
            map50, map_ = det.coco_map(data.y_test, found, size, data.num_classes)
            return {"map50": map50, "map": map_}

        return Task(det.detection_loss, predict, lambda d: d.x_test, mean_ap, "detect")
    return None
