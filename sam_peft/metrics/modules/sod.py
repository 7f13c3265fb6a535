"""Salient / camouflaged object detection and binary mask metrics as an `evaluate` module.

Load it with `sam_peft.metrics.load("sod")` or `evaluate.load(sam_peft.metrics.path("sod"))` (works offline).
Statistics are computed when a batch is added and only their sums are kept, so `add_batch` can be called
for a whole test set; the values equal PySODMetrics 1.6's apart from its degenerate cases (NaN S-alpha, E-phi
above 1), which are documented in `sam_peft.metrics.sod.definitions`.
"""

import datasets
import evaluate

from sam_peft.metrics.sod import SODMetrics
from sam_peft.metrics.streaming import StreamingInputs

_DESCRIPTION = """
Structure measure S-alpha, enhanced-alignment measure E-phi (adaptive, mean and max over 256 thresholds),
weighted F-beta, MAE, F-measure (adaptive, mean, max; beta^2 = 0.3), IoU, Dice, thresholded Jaccard
(ISIC 2017), accuracy, and the balanced error rate with the shadow / non-shadow errors. Computed where the
inputs are (numpy threads for CPU inputs, batched torch on a GPU), equal to PySODMetrics 1.6 wherever its values
are defined and in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of H x W maps (torch tensors on any device, numpy arrays or nested lists) or one
        B x H x W array; sizes may differ between images, and every map needs H, W >= 1. Each map is a
        float map of probabilities in [0, 1], a bool mask, or a uint8 map: a uint8 map whose max is at most
        1 is a 0/1 mask, any other uint8 map holds grey levels 0..255 (read as level / 255, as PySODMetrics
        reads PNGs). Other dtypes are a TypeError.
    references: list of H x W ground-truth masks or one B x H x W array, each either a bool mask, a mask of
        0s and 1s or of 0s and 255s in any integer or float dtype (foreground 1 or 255; all-zero maps
        included), or a float mask in [0, 1] (foreground > 0.5). Other values (e.g. {0, 7}, or 1s and 255s
        mixed, or grey levels) are a ValueError naming the image.

Module options (keyword arguments of `evaluate.load` / `sam_peft.metrics.load`):
    normalize (bool, default True): min-max normalise each prediction before S-alpha, E-phi, weighted F,
        MAE and the F-measure, as PySODMetrics does. IoU, Dice, T-Jac, accuracy and the BER family always
        threshold the raw prediction.
    weighted_f_beta (float, default 1.0): PySODMetrics' beta of the weighted F-measure (AutoGluon's port,
        used by the Conv-LoRA code, uses 0.3).
    f_beta2 (float, default 0.3), threshold (float, default 0.5), jaccard_threshold (float, default 0.65),
    chunk_size (int, default 8): images processed at once on a GPU (or any device but the CPU).
    num_threads (int, default None): threads over images for CPU inputs; None: the CPUs the process may run on
        (for images of at least 256 x 256 pixels on average). The values do not depend on it.

Returns:
    dict of floats, each in [0, 1] for images of any size: s_alpha, e_phi (mean of the 256-threshold curve,
    what papers report), e_phi_adaptive, e_phi_max, f_beta_w, mae, f_beta_adaptive, f_beta_mean, f_beta_max,
    iou, dice, jaccard_thresholded, accuracy (all means over images), ber, shadow_error, non_shadow_error
    (pooled over all pixels).

Examples:
    >>> import numpy as np
    >>> import sam_peft.metrics
    >>> sod = sam_peft.metrics.load("sod")
    >>> mask = np.zeros((8, 8), dtype=bool); mask[2:6, 2:6] = True
    >>> results = sod.compute(predictions=[mask.astype(np.float32)], references=[mask])
    >>> round(results["s_alpha"], 4), results["mae"], results["ber"]
    (1.0, 0.0, 0.0)
"""

_CITATION = """
@inproceedings{Smeasure, title={Structure-measure: A new way to evaluate foreground maps},
  author={Fan, Deng-Ping and Cheng, Ming-Ming and Liu, Yun and Li, Tao and Borji, Ali}, booktitle={ICCV}, year={2017}}
@inproceedings{Emeasure, title={Enhanced-alignment Measure for Binary Foreground Map Evaluation},
  author={Fan, Deng-Ping and Gong, Cheng and Cao, Yang and Ren, Bo and Cheng, Ming-Ming and Borji, Ali},
  booktitle={IJCAI}, year={2018}}
@inproceedings{wFmeasure, title={How to evaluate foreground maps?},
  author={Margolin, Ran and Zelnik-Manor, Lihi and Tal, Ayellet}, booktitle={CVPR}, year={2014}}
"""


class Sod(StreamingInputs, evaluate.Metric):
    """The metric class `evaluate.load` instantiates; the options are described in `_KWARGS_DESCRIPTION`."""

    def __init__(
        self,
        normalize: bool = True,
        weighted_f_beta: float = 1.0,
        f_beta2: float = 0.3,
        threshold: float = 0.5,
        jaccard_threshold: float = 0.65,
        chunk_size: int = 8,
        num_threads: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if self.num_process > 1:
            raise ValueError(
                "This module does not use evaluate's multi-process cache: gather the predictions and "
                "references on every process first (e.g. with Accelerate's `gather_for_metrics`)."
            )
        self._metrics = SODMetrics(
            normalize=normalize,
            weighted_f_beta=weighted_f_beta,
            f_beta2=f_beta2,
            threshold=threshold,
            jaccard_threshold=jaccard_threshold,
            chunk_size=chunk_size,
            num_threads=num_threads,
        )

    def _info(self):
        maps = datasets.Sequence(datasets.Sequence(datasets.Value("float32")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": maps, "references": maps}),
            reference_urls=["https://github.com/lartpang/PySODMetrics"],
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Adds `predictions` and `references` if given, returns the metrics of everything added, and resets."""
        if kwargs:
            raise ValueError(f"Unexpected arguments {sorted(kwargs)}; options go to `evaluate.load`.")
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references)
        results = self._metrics.compute()
        self._metrics.reset()
        return results
