"""Interactive evaluation: box then centre clicks, the first one multimask (highest predicted IoU kept), the previous
logits fed back, padding objects skipped; on an oracle prompted model and on the tiny random SAM."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader

from sam_peft import random_sam
from sam_peft.data import load_folder, prepare_objects_for_sam, sam_objects_collate_fn
from sam_peft.data.prompts import PADDING_POINT_LABEL
from sam_peft.training import evaluate_interactive

SIZE = 128
LOW = SIZE // 4  # the oracle's low-resolution logits, like SAM's 256 for 1024


class Oracle(nn.Module):
    """A prompted model with SAM's call and outputs that knows the objects: the box gives the object, a point
    prompt gives nothing before 2 clicks and the object from then on. Among its three first-click masks the
    empty one has the highest predicted IoU (the others cover everything). It checks every click it gets: a
    positive click inside the object, a negative one outside."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.logits = logits  # (T, LOW, LOW): each object's low-resolution logits
        self.targets = _upsampled(logits)  # (T, S, S): the objects, exactly what the logits predict
        self.calls: list[dict] = []

    def _object(self, row: int, col: int) -> int:
        found = torch.nonzero(self.targets[:, row, col]).flatten()
        assert len(found) == 1, f"({row}, {col}) is in no object"
        return int(found[0])

    def forward(
        self,
        pixel_values=None,
        image_embeddings=None,
        input_points=None,
        input_labels=None,
        input_boxes=None,
        input_masks=None,
        multimask_output=True,
    ):
        images = pixel_values if pixel_values is not None else image_embeddings
        count = len(images)
        self.calls.append(
            {
                "count": count,
                "embeddings": image_embeddings is not None,
                "points": None if input_points is None else input_points.clone(),
                "labels": None if input_labels is None else input_labels.clone(),
                "masks": None if input_masks is None else input_masks.clone(),
                "multimask": multimask_output,
            }
        )
        logits = torch.full((count, LOW, LOW), -10.0)
        for index in range(count):
            if input_boxes is not None:
                assert input_boxes.shape == (count, 1, 4)
                x0, y0, x1, y1 = input_boxes[index, 0].long().tolist()
                logits[index] = self.logits[self._object((y0 + y1) // 2, (x0 + x1) // 2)]
                continue
            points, labels = input_points[index, 0].long(), input_labels[index, 0]
            assert labels[0] == 1
            found = self._object(int(points[0, 1]), int(points[0, 0]))
            for (x, y), label in zip(points.tolist(), labels.tolist(), strict=True):
                if label != PADDING_POINT_LABEL:
                    assert bool(self.targets[found, y, x]) == (label == 1), f"click {label} at ({x}, {y})"
            if int((labels != PADDING_POINT_LABEL).sum()) >= 2:
                logits[index] = self.logits[found]
        if multimask_output:
            full = torch.full_like(logits, 10.0)
            pred_masks = torch.stack([full, logits, full], dim=1)
            scores = torch.tensor([0.1, 0.9, 0.2]).expand(count, 3)
        else:
            pred_masks, scores = logits[:, None], torch.ones(count, 1)
        return SimpleNamespace(pred_masks=pred_masks[:, None], iou_scores=scores[:, None])


class EmbeddingOracle(Oracle):
    """The oracle with `get_image_embeddings`: the evaluation must compute it once per batch and reuse it."""

    def __init__(self, targets: torch.Tensor):
        super().__init__(targets)
        self.embedded = 0

    def get_image_embeddings(self, pixel_values):
        self.embedded += 1
        return pixel_values[:, :, ::16, ::16] * 2


def _upsampled(logits: torch.Tensor) -> torch.Tensor:
    """`(N, LOW, LOW)` logits -> `(N, S, S)` masks, as the evaluation reads them (bilinear, > 0)."""
    return F.interpolate(logits[:, None], size=(SIZE, SIZE), mode="bilinear")[:, 0] > 0


def _examples() -> tuple[list[dict], torch.Tensor]:
    """Two images: one object (in an image padded below row 96) and two objects, each the upsampled prediction of
    a rectangle of low-resolution logits (a rectangle less its four corner pixels)."""
    boxes = [[(2, 5, 10, 15)], [(0, 4, 0, 6), (15, 25, 16, 30)]]  # (row0, row1, col0, col1) on the LOW grid
    examples, logits = [], []
    for index, image_boxes in enumerate(boxes):
        image_logits = torch.full((len(image_boxes), LOW, LOW), -10.0)
        for obj, (r0, r1, c0, c1) in enumerate(image_boxes):
            image_logits[obj, r0:r1, c0:c1] = 10.0
        valid = torch.ones(SIZE, SIZE, dtype=torch.bool)
        if index == 0:
            valid[96:] = False
        masks = _upsampled(image_logits)
        examples.append(
            {"pixel_values": torch.randn(3, SIZE, SIZE), "object_masks": masks, "valid": valid, "id": str(index)}
        )
        logits.append(image_logits)
    return examples, torch.cat(logits)


@pytest.mark.parametrize("oracle_class", [Oracle, EmbeddingOracle])
def test_oracle_needs_two_clicks_and_sees_the_protocol(oracle_class):
    examples, logits = _examples()
    model = oracle_class(logits)
    loader = DataLoader(examples, batch_size=2, collate_fn=sam_objects_collate_fn)
    results = evaluate_interactive(model, loader, max_clicks=3, progress=False)

    assert results["num_objects"] == 3  # the padding object of the first image is skipped
    assert results["miou_box"] == 1.0
    assert results["miou@1"] == 0.0  # the empty mask, the one of highest predicted IoU, was kept
    assert results["miou@2"] == results["miou@3"] == 1.0
    assert results["noc@90"] == results["noc@85"] == 2.0
    assert results["nof@90"] == 0
    assert results["iou_curve"] == [0.0, 1.0, 1.0]

    box, first, second, third = model.calls
    assert all(call["count"] == 3 for call in model.calls)  # the objects on the batch axis
    assert [call["multimask"] for call in model.calls] == [False, True, False, False]
    assert box["points"] is None and first["masks"] is None
    # click 1 at the centre of each object, click 2 again (nothing predicted), click 3 a padding (all done)
    assert first["points"].shape == (3, 1, 1, 2) and second["points"].shape == (3, 1, 2, 2)
    assert torch.equal(second["points"][:, :, :1], first["points"])
    assert torch.equal(second["points"][:, :, 1], first["points"][:, :, 0])
    for (x, y), target in zip(first["points"][:, 0, 0].long().tolist(), model.targets, strict=True):
        depth = ndimage.distance_transform_edt(np.pad(target.numpy(), 1))[1:-1, 1:-1]
        assert depth[y, x] == depth.max()  # the pixel farthest from the object's boundary
    assert (third["labels"][:, 0, 2] == PADDING_POINT_LABEL).all()
    assert (third["labels"][:, 0, :2] == 1).all()
    # the previous step's low-resolution logits of the kept mask come back as the mask prompt
    assert second["masks"].shape == (3, 1, LOW, LOW) and (second["masks"] == -10).all()
    assert torch.equal(third["masks"][:, 0], logits)
    if oracle_class is EmbeddingOracle:
        assert model.embedded == 1 and all(call["embeddings"] for call in model.calls)
    else:
        assert not any(call["embeddings"] for call in model.calls)


def _write(folder, stem: str, mask: np.ndarray, seed: int) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "images" / f"{stem}.png")
    Image.fromarray(mask).save(folder / "masks" / f"{stem}.png")


def test_tiny_sam_on_component_objects(tmp_path):
    one = np.zeros((60, 100), np.uint8)
    one[10:30, 40:80] = 255
    three = np.zeros((70, 70), np.uint8)
    three[2:14, 2:14], three[30:50, 20:40], three[55:68, 50:66] = 255, 255, 255
    _write(tmp_path, "one", one, 0)
    _write(tmp_path, "three", three, 1)
    data = load_folder(tmp_path / "images", tmp_path / "masks", split="validation", objects="components")
    dataset = prepare_objects_for_sam(data, SIZE)["validation"]
    loader = DataLoader(dataset, batch_size=2, collate_fn=sam_objects_collate_fn)

    torch.manual_seed(0)
    results = evaluate_interactive(random_sam("tiny"), loader, max_clicks=3, progress=False)

    assert results["num_objects"] == 4
    values = [results["miou_box"], results["mdice_box"]]
    values += [results[f"{name}@{k}"] for name in ("miou", "mdice") for k in (1, 2, 3)]
    assert all(0.0 <= value <= 1.0 for value in values)
    assert len(results["iou_curve"]) == 3
    for threshold in ("85", "90"):
        assert 1.0 <= results[f"noc@{threshold}"] <= 3.0
        assert 0 <= results[f"nof@{threshold}"] <= 4
    # objects taken a few at a time through the prompted calls give the same numbers
    for chunk in (1, 3):
        chunked = evaluate_interactive(
            random_sam("tiny"), loader, max_clicks=3, progress=False, objects_per_forward=chunk
        )
        assert chunked.keys() == results.keys()
        for key, value in results.items():
            assert chunked[key] == pytest.approx(value, abs=1e-6), key
