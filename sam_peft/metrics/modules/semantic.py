"""Semantic segmentation metrics (mIoU, pixel accuracy, Trans10K's MAE and mBER) as an `evaluate` module.

Load it with `sam_peft.metrics.load("semantic", num_labels=K)` or
`evaluate.load(sam_peft.metrics.path("semantic"), num_labels=K)` (works offline; the Hub's `mean_iou` does not);
`num_labels` is required there. Each added image is reduced at once to the pixel counts of
its (reference, prediction) label pairs, so memory stays small; see `sam_peft.metrics.semantic`.
"""

import datasets
import evaluate

from sam_peft.metrics.semantic import SemanticMetrics, check_num_labels
from sam_peft.metrics.streaming import StreamingInputs

_DESCRIPTION = """
Mean IoU and per-category IoU with intersections and unions accumulated over the dataset (background
included, an ignore label left out), pixel accuracy, mean class accuracy, and the MAE and mean balanced
error rate of the Trans10K evaluation (TransLab's code).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of H x W integer label maps with H, W >= 1 (torch tensors on any device, numpy arrays
        or nested lists; any integer dtype, labels >= 0) or one B x H x W array. Sizes may differ between
        images. Float and bool maps are a TypeError, empty maps a ValueError.
    references: list of H x W integer reference label maps, or one B x H x W array (same forms).
    num_labels (int): number of classes (labels 0..num_labels-1). Required by `evaluate.load` /
        `sam_peft.metrics.load("semantic", num_labels=K)`, which raise a ValueError without it; `compute`
        may override it.
    ignore_index (int or None, default 255): reference label left out of every metric; given to
        `evaluate.load`, or to `compute` to override it.

Returns:
    mean_iou, accuracy, mean_accuracy, mae, mber: floats (mIoU and the accuracies are fractions; mae is in
    label units, as in TransLab; mber is a fraction, TransLab prints percent); per_category_iou: a list of
    num_labels floats (NaN for a class absent from references and predictions).

Examples:
    >>> import sam_peft.metrics
    >>> semantic = sam_peft.metrics.load("semantic", num_labels=2)
    >>> results = semantic.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]])
    >>> results["per_category_iou"], results["accuracy"]
    ([0.5, 0.5], 0.6666666666666666)
"""

_CITATION = """
@inproceedings{xie2020segmenting, title={Segmenting Transparent Objects in the Wild},
  author={Xie, Enze and Wang, Wenjia and Wang, Wenhai and Ding, Mingyu and Shen, Chunhua and Luo, Ping},
  booktitle={ECCV}, year={2020}}
"""


class Semantic(StreamingInputs, evaluate.Metric):
    """The metric class `evaluate.load` instantiates; `num_labels` (required) and `ignore_index` are given here."""

    def __init__(self, num_labels: int | None = None, ignore_index: int | None = 255, **kwargs):
        check_num_labels(num_labels, fix='sam_peft.metrics.load("semantic", num_labels=K)')
        super().__init__(**kwargs)
        if self.num_process > 1:
            raise ValueError(
                "This module does not use evaluate's multi-process cache: gather the predictions and "
                "references on every process first (e.g. with Accelerate's `gather_for_metrics`)."
            )
        self._metrics = SemanticMetrics(num_labels=num_labels, ignore_index=ignore_index)

    def _info(self):
        maps = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": maps, "references": maps}),
            reference_urls=["https://github.com/xieenze/Segment_Transparent_Objects"],
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Adds `predictions` and `references` if given, returns the metrics of everything added, and resets.

        `num_labels` and `ignore_index`, if given, override the values given to `evaluate.load`.
        """
        unexpected = set(kwargs) - {"num_labels", "ignore_index"}
        if unexpected:
            raise ValueError(f"Unexpected arguments {sorted(unexpected)}; expected num_labels and ignore_index.")
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references)
        results = self._metrics.compute(**kwargs)
        self._metrics.reset()
        return results
