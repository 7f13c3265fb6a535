"""Semantic segmentation metrics: hand-computed examples, a per-image restatement of TransLab's definitions,
ignore index, label validation and streaming."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from sam_peft.metrics import SemanticMetrics, compute_semantic_metrics, joint_label_counts
from sam_peft.metrics import semantic as semantic_module

# Two 2 x 3 images, 3 classes, 255 ignored.
PREDICTIONS = [torch.tensor([[0, 1, 1], [2, 2, 0]]), torch.tensor([[1, 1, 0], [0, 2, 2]])]
REFERENCES = [torch.tensor([[0, 1, 2], [2, 2, 255]]), torch.tensor([[1, 1, 1], [0, 0, 2]])]


def test_hand_computed_example():
    results = compute_semantic_metrics(PREDICTIONS, REFERENCES, num_labels=3)
    # Non-ignored (reference, prediction) pixels:
    #   image 0: (0,0) (1,1) (2,1) (2,2) (2,2); image 1: (1,1) (1,1) (1,0) (0,0) (0,2) (2,2)
    # Confusion rows = reference: class 0 -> [2, 0, 1], class 1 -> [1, 3, 0], class 2 -> [0, 1, 3].
    # IoU: 0: 2 / (3 + 3 - 2); 1: 3 / (4 + 4 - 3); 2: 3 / (4 + 4 - 3).
    assert results["per_category_iou"] == pytest.approx([0.5, 0.6, 0.6])
    assert results["mean_iou"] == pytest.approx((0.5 + 0.6 + 0.6) / 3)
    assert results["accuracy"] == pytest.approx(8 / 11)
    assert results["mean_accuracy"] == pytest.approx((2 / 3 + 3 / 4 + 3 / 4) / 3)
    # MAE per image: |pred - ref| = 0,0,1,0,0 -> 1/5; 0,0,1,0,2,0 -> 3/6.
    assert results["mae"] == pytest.approx((1 / 5 + 3 / 6) / 2)
    # BER per image and class (TN: correct pixels of the other classes):
    #   image 0, class 1: N_p 1, TP 1, N_n 4, TN 3 -> 1 - (1 + 3/4) / 2 = 0.125
    #   image 0, class 2: N_p 3, TP 2, N_n 2, TN 2 -> 1 - (2/3 + 1) / 2 = 1/6
    #   image 1, class 1: N_p 3, TP 2, N_n 3, TN 2 -> 1 - (2/3 + 2/3) / 2 = 1/3
    #   image 1, class 2: N_p 1, TP 1, N_n 5, TN 3 -> 1 - (1 + 3/5) / 2 = 0.2
    assert results["mber"] == pytest.approx(((0.125 + 1 / 3) / 2 + (1 / 6 + 0.2) / 2) / 2)


def _translab_per_image(pred: np.ndarray, ref: np.ndarray, num_labels: int) -> tuple[float, list[float | None]]:
    """TransLab's batch_mae and batch_ber for one image without ignored pixels, restated with numpy."""
    mae = np.abs(pred.astype(float) - ref.astype(float)).mean()
    bers = []
    for c in range(1, num_labels):
        positive = ref == c
        if not positive.any():
            bers.append(None)
            continue
        correct = pred == ref
        tp, tn = (correct & positive).sum(), (correct & ~positive).sum()
        bers.append(1 - 0.5 * (tp / positive.sum() + tn / (~positive).sum()))
    return mae, bers


def test_trans10k_mae_and_mber_match_their_definition():
    rng = np.random.default_rng(0)
    num_labels = 3
    preds, refs, maes, bers = [], [], [], {c: [] for c in range(1, num_labels)}
    for height, width in [(7, 9), (7, 9), (12, 5), (6, 6), (9, 9)]:
        ref = rng.integers(0, num_labels, (height, width))
        ref[: height // 2] = 0  # some images lack some classes
        pred = np.where(rng.random((height, width)) < 0.7, ref, rng.integers(0, num_labels, (height, width)))
        mae, image_bers = _translab_per_image(pred, ref, num_labels)
        maes.append(mae)
        for c, value in zip(range(1, num_labels), image_bers, strict=True):
            if value is not None:
                bers[c].append(value)
        preds.append(pred)
        refs.append(ref)
    results = compute_semantic_metrics(preds, refs, num_labels=num_labels)
    assert results["mae"] == pytest.approx(np.mean(maes), abs=1e-12)
    assert results["mber"] == pytest.approx(np.mean([np.mean(v) for v in bers.values()]), abs=1e-12)


def test_mean_iou_matches_a_direct_confusion_matrix():
    rng = np.random.default_rng(1)
    num_labels = 5
    preds = [rng.integers(0, num_labels, (8, 11)) for _ in range(4)]
    refs = [rng.integers(0, num_labels, (8, 11)) for _ in range(4)]
    refs[0][2:4] = 255
    confusion = np.zeros((num_labels, num_labels))
    for pred, ref in zip(preds, refs, strict=True):
        keep = ref != 255
        np.add.at(confusion, (ref[keep], pred[keep]), 1)
    iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
    results = compute_semantic_metrics(preds, refs, num_labels=num_labels)
    np.testing.assert_allclose(results["per_category_iou"], iou)
    assert results["mean_iou"] == pytest.approx(iou.mean())
    assert results["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())


def test_absent_class_is_nan_and_left_out_of_the_means():
    zeros = torch.zeros(2, 2, dtype=torch.long)
    results = compute_semantic_metrics([zeros], [zeros], num_labels=3)
    assert results["per_category_iou"][0] == 1
    assert all(math.isnan(v) for v in results["per_category_iou"][1:])
    assert results["mean_iou"] == 1 and results["mean_accuracy"] == 1
    assert math.isnan(results["mber"])  # no non-background class anywhere


def test_num_labels_is_required_and_compute_overrides_it_and_ignore_index():
    with pytest.raises(ValueError, match=re.escape("`num_labels` is required: pass the number of classes K, e.g. `")):
        SemanticMetrics(num_labels=None)
    metrics = SemanticMetrics(num_labels=2)
    metrics.update(PREDICTIONS, REFERENCES)
    with pytest.raises(ValueError, match="The reference of image 0 contains label id 2, but num_labels is 2"):
        metrics.compute()
    assert metrics.compute(num_labels=3) == compute_semantic_metrics(PREDICTIONS, REFERENCES, num_labels=3)
    # Without an ignore label, 255 is a label id and must be < num_labels.
    with pytest.raises(ValueError, match="The reference of image 0 contains label id 255, but num_labels is 3"):
        metrics.compute(num_labels=3, ignore_index=None)
    assert metrics.compute(num_labels=256, ignore_index=None)["accuracy"] == pytest.approx(8 / 12)
    # Ignoring class 0 instead of 255.
    refs = [torch.where(r == 255, 0, r) for r in REFERENCES]
    ignore_zero = compute_semantic_metrics(PREDICTIONS, refs, num_labels=3, ignore_index=0)
    assert ignore_zero["accuracy"] == pytest.approx(6 / 8)


def test_prediction_label_out_of_range_names_the_image():
    preds = [PREDICTIONS[0], torch.tensor([[1, 1, 0], [0, 3, 2]])]
    with pytest.raises(ValueError, match="The prediction of image 1 contains label id 3, but num_labels is 3"):
        compute_semantic_metrics(preds, REFERENCES, num_labels=3)
    # Predictions under ignored pixels are not checked.
    preds = [torch.tensor([[0, 1, 1], [2, 2, 7]]), PREDICTIONS[1]]
    compute_semantic_metrics(preds, REFERENCES, num_labels=3)


@pytest.mark.parametrize(
    ("preds", "refs", "error", "message"),
    [
        ([], [], ValueError, "must not be empty"),
        ([torch.zeros(2, 3, dtype=torch.long)], [torch.zeros(3, 2, dtype=torch.long)], ValueError, "Prediction 0"),
        ([torch.rand(2, 2)], [torch.zeros(2, 2, dtype=torch.long)], TypeError, "integer label maps"),
    ],
)
def test_bad_inputs(preds, refs, error, message):
    with pytest.raises(error, match=message):
        SemanticMetrics(num_labels=3).update(preds, refs)


def test_negative_labels_name_the_image():
    zeros = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="Reference 1 contains negative label ids"):
        SemanticMetrics(num_labels=3).update([zeros, zeros], [zeros, zeros - 1])


def test_streaming_sizes_and_sparse_path_agree(monkeypatch):
    rng = np.random.default_rng(2)
    preds = [rng.integers(0, 4, shape) for shape in [(5, 6), (7, 3), (5, 6), (4, 4)]]
    refs = [rng.integers(0, 4, p.shape) for p in preds]
    one_shot = compute_semantic_metrics(preds, refs, num_labels=4)
    metrics = SemanticMetrics(num_labels=4)
    for p, r in zip(preds, refs, strict=True):
        metrics.update([p], [r])
    assert metrics.num_images == 4
    assert metrics.compute() == one_shot  # integer counts: exactly equal
    monkeypatch.setattr(semantic_module, "_DENSE_BINS", 1)  # force torch.unique
    assert compute_semantic_metrics(preds, refs, num_labels=4) == one_shot


def test_joint_label_counts():
    counts = joint_label_counts(torch.tensor([[[0, 1], [1, 1]]]), torch.tensor([[[0, 1], [0, 255]]]))
    assert sorted(map(tuple, counts.tolist())) == [(0, 0, 0, 1), (0, 0, 1, 1), (0, 1, 1, 1), (0, 255, 1, 1)]
