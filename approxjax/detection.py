"""Object detection under simulated arithmetic: COCO-format data (or synthetic
shapes), the YOLO-style ``Detector`` whose every convolution is approximate,
its loss, decoding with non-maximum suppression, and COCO mAP (pycocotools).
See the implementation's docstring for the data forms and definitions."""

from approxjax._src.runner.detection import (
    SHAPES,
    DetectionData,
    Detector,
    coco_map,
    decode_boxes,
    detection_loss,
    iou,
    load_detection,
    nms,
    read_coco,
    synthetic_shapes,
)

__all__ = [
    "SHAPES",
    "DetectionData",
    "Detector",
    "coco_map",
    "decode_boxes",
    "detection_loss",
    "iou",
    "load_detection",
    "nms",
    "read_coco",
    "synthetic_shapes",
]
