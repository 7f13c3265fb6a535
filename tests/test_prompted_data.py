"""Object datasets -> SAM inputs for prompted fine-tuning: the same pixels as prepare_for_sam, masks in the input
frame, augmentation of image and masks together, seeded object caps, vanished objects, padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam_peft import random_sam
from sam_peft.data import (
    IGNORE_INDEX,
    Augmentation,
    boxes_from_masks,
    load_folder,
    object_boxes,
    object_present,
    object_targets,
    prepare_for_sam,
    prepare_objects_for_sam,
    sam_image_processor,
    sam_objects_collate_fn,
)
from sam_peft.data.preprocessing import sam_inputs

SIZE = 128  # the tiny SAM's input


def _write(folder, stem, image: np.ndarray, mask: np.ndarray) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "images" / f"{stem}.png")
    Image.fromarray(mask).save(folder / "masks" / f"{stem}.png")


def _noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def binary_folder(tmp_path):
    """Non-square images with binary masks: one rectangle (a), two rectangles (b), three blobs (c)."""
    folder = tmp_path / "binary"
    a = np.zeros((60, 100), np.uint8)
    a[10:20, 50:80] = 255
    b = np.zeros((90, 40), np.uint8)
    b[5:30, 5:20], b[50:80, 10:35] = 255, 255
    c = np.zeros((70, 70), np.uint8)
    c[2:12, 2:12], c[30:50, 20:40], c[55:68, 50:66] = 255, 255, 255
    for seed, (stem, mask) in enumerate({"a": a, "b": b, "c": c}.items()):
        _write(folder, stem, _noise(*mask.shape, seed), mask)
    return folder


@pytest.fixture
def instance_folder(tmp_path):
    """Hand-made 8-bit instance label images: ten objects (ids 1..10, two packing planes) and one object."""
    folder = tmp_path / "instance"
    many = np.zeros((80, 120), np.uint8)
    for index in range(10):
        row, col = divmod(index, 5)
        many[5 + 40 * row : 30 + 40 * row, 4 + 23 * col : 20 + 23 * col] = index + 1
    one = np.zeros((50, 50), np.uint8)
    one[10:40, 20:30] = 7
    _write(folder, "many", _noise(80, 120, 10), many)
    _write(folder, "one", _noise(50, 50, 11), one)
    return folder


def _by_id(dataset) -> dict:
    return {dataset[i]["id"]: dataset[i] for i in range(len(dataset))}


def _load(folder, **kwargs):
    return load_folder(folder / "images", folder / "masks", **{"split": "validation", **kwargs})


def test_pixel_values_equal_prepare_for_sam_and_whole_image_objects_equal_its_labels(binary_folder):
    semantic = _by_id(prepare_for_sam(_load(binary_folder), SIZE)["validation"])
    objects = _by_id(prepare_objects_for_sam(_load(binary_folder, objects="image"), SIZE)["validation"])
    assert semantic.keys() == objects.keys() == {"a", "b", "c"}
    for row_id, example in objects.items():
        reference = semantic[row_id]
        assert torch.equal(example["pixel_values"], reference["pixel_values"])
        assert torch.equal(example["original_sizes"], reference["original_sizes"])
        assert torch.equal(example["reshaped_input_sizes"], reference["reshaped_input_sizes"])
        assert example["object_masks"].dtype == torch.bool and example["object_masks"].shape == (1, SIZE, SIZE)
        assert torch.equal(example["object_masks"][0], reference["labels"] == 1)  # resized exactly as labels
        assert torch.equal(example["valid"], reference["labels"] != IGNORE_INDEX)
        assert int(example["vanished_objects"]) == 0


def test_augmentation_draws_as_prepare_for_sam_and_moves_masks_with_the_image(binary_folder):
    augmentation = Augmentation(hflip=0.5, vflip=0.5, rotate90=0.5, crop_scale=(0.5, 1.0), brightness=0.3)
    semantic = prepare_for_sam(_load(binary_folder, split="train"), SIZE, augmentation=augmentation)["train"]
    data = _load(binary_folder, split="train", objects="image")
    objects = prepare_objects_for_sam(data, SIZE, augmentation=augmentation)["train"]
    plain = prepare_objects_for_sam(data, SIZE, augmentation=None)["train"]
    changed = 0
    for index in range(len(semantic)):
        for seed in range(4):
            torch.manual_seed(seed)
            reference = semantic[index]
            torch.manual_seed(seed)
            example = objects[index]
            assert torch.equal(example["pixel_values"], reference["pixel_values"])
            assert torch.equal(example["object_masks"][0], reference["labels"] == 1)
            assert torch.equal(example["valid"], reference["labels"] != IGNORE_INDEX)
            changed += not torch.equal(example["object_masks"], plain[index]["object_masks"])
    assert changed > 0  # the draws did move the masks


def test_a_flip_moves_image_and_masks_together(binary_folder, tmp_path):
    flipped_folder = tmp_path / "flipped"
    for stem in "abc":
        image = np.asarray(Image.open(binary_folder / "images" / f"{stem}.png"))[:, ::-1]
        mask = np.asarray(Image.open(binary_folder / "masks" / f"{stem}.png"))[:, ::-1]
        _write(flipped_folder, stem, np.ascontiguousarray(image), np.ascontiguousarray(mask))
    flip = Augmentation(hflip=1.0)
    augmented = _by_id(
        prepare_objects_for_sam(
            _load(binary_folder, objects="components"), SIZE, augmentation=flip, train_splits=("validation",)
        )["validation"]
    )
    stored = _by_id(prepare_objects_for_sam(_load(flipped_folder, objects="components"), SIZE)["validation"])
    for row_id, example in augmented.items():
        assert torch.equal(example["pixel_values"], stored[row_id]["pixel_values"])
        # the same objects, found in the flipped files in another order (components are numbered in scan order)
        ours = sorted(mask.flatten().nonzero().flatten().tolist() for mask in example["object_masks"])
        theirs = sorted(mask.flatten().nonzero().flatten().tolist() for mask in stored[row_id]["object_masks"])
        assert ours == theirs


def test_an_object_lands_at_its_resized_place_and_the_padding_is_not_valid(binary_folder):
    example = _by_id(prepare_objects_for_sam(_load(binary_folder, objects="components"), SIZE)["validation"])["a"]
    scale = SIZE / 100  # 60 x 100 -> 77 x 128, padded below to 128 x 128
    assert example["reshaped_input_sizes"].tolist() == [77, 128]
    assert example["original_sizes"].tolist() == [60, 100]
    valid = example["valid"]
    assert valid[:77].all() and not valid[77:].any()
    (mask,) = example["object_masks"]
    assert not (mask & ~valid).any()
    x0, y0, x1, y1 = boxes_from_masks(mask[None])[0, 0].tolist()  # inclusive first / last column and row
    assert abs(x0 - 50 * scale) <= 1 and abs(x1 + 1 - 80 * scale) <= 1
    assert abs(y0 - 10 * scale) <= 1 and abs(y1 + 1 - 20 * scale) <= 1
    assert abs(int(mask.sum()) - 300 * scale**2) <= 2 * (30 + 10) * scale  # the area, up to a pixel around
    assert example["objects"]["bbox"] == [[50.0, 10.0, 30.0, 10.0]]  # metadata stays in the original pixels


def test_ten_objects_are_each_resized_as_a_mask_of_their_own(instance_folder):
    example = _by_id(prepare_objects_for_sam(_load(instance_folder, objects="instance"), SIZE)["validation"])["many"]
    assert example["objects"]["id"] == list(range(1, 11))
    labels = np.asarray(Image.open(instance_folder / "masks" / "many.png"))
    rgb = Image.open(instance_folder / "images" / "many.png").convert("RGB")
    single = [Image.fromarray((labels == i).astype(np.uint8)) for i in range(1, 11)]
    expected = sam_inputs(sam_image_processor(SIZE), [rgb], single)["labels"] == 1
    assert torch.equal(example["object_masks"], expected)


def test_max_objects_caps_reproducibly(instance_folder):
    def ids(seed):
        data = _load(instance_folder, objects="instance")
        return _by_id(prepare_objects_for_sam(data, SIZE, max_objects=3, seed=seed)["validation"])

    first, again = ids(0), ids(0)
    chosen = first["many"]["objects"]["id"]
    assert len(chosen) == 3 and chosen == sorted(chosen) and again["many"]["objects"]["id"] == chosen
    assert torch.equal(first["many"]["object_masks"], again["many"]["object_masks"])
    assert first["one"]["objects"]["id"] == [7]  # fewer objects than the cap: all kept
    assert len({tuple(ids(seed)["many"]["objects"]["id"]) for seed in range(5)}) > 1
    # the masks are those of the chosen ids
    every = _by_id(prepare_objects_for_sam(_load(instance_folder, objects="instance"), SIZE)["validation"])["many"]
    for position, object_id in enumerate(chosen):
        assert torch.equal(first["many"]["object_masks"][position], every["object_masks"][object_id - 1])
    # training splits draw anew at each read from torch's generator: reproducible under a seed
    train = prepare_objects_for_sam(
        _load(instance_folder, objects="instance", split="train"), SIZE, max_objects=3, augmentation=None
    )["train"]
    index = next(i for i in range(len(train)) if train[i]["id"] == "many")
    draws = []
    for seed in (1, 1, 2, 3, 4):
        torch.manual_seed(seed)
        draws.append(tuple(train[index]["objects"]["id"]))
    assert draws[0] == draws[1] and len(set(draws)) > 1


def test_vanished_objects_are_dropped_and_counted(tmp_path):
    folder = tmp_path / "tiny"
    big = np.zeros((256, 512), np.uint8)
    big[1, 1] = 255  # one pixel at a 4x downsizing: no output pixel samples it
    big[100:200, 200:400] = 255
    speck = np.zeros((256, 512), np.uint8)
    speck[1, 1] = 255
    _write(folder, "big", _noise(256, 512, 0), big)
    _write(folder, "speck", _noise(256, 512, 1), speck)
    examples = _by_id(prepare_objects_for_sam(_load(folder, objects="components"), SIZE)["validation"])
    assert examples["big"]["object_masks"].shape == (1, SIZE, SIZE)
    assert examples["big"]["objects"]["area"] == [20000] and int(examples["big"]["vanished_objects"]) == 1
    assert examples["speck"]["object_masks"].shape == (0, SIZE, SIZE)  # no object left, counted
    assert int(examples["speck"]["vanished_objects"]) == 1 and examples["speck"]["objects"]["id"] == []

    batch = sam_objects_collate_fn([examples["speck"], examples["big"]])
    assert batch["object_masks"].shape == (2, 1, SIZE, SIZE) and batch["object_counts"].tolist() == [0, 1]
    assert batch["vanished_objects"].tolist() == [1, 1]
    targets = object_targets(batch)
    assert (targets[0] == IGNORE_INDEX).all()  # an image without objects only pads
    assert torch.equal(object_boxes(batch)[0, 0], torch.zeros(4))
    only_speck = sam_objects_collate_fn([examples["speck"]])
    assert only_speck["object_masks"].shape == (1, 1, SIZE, SIZE) and not object_present(only_speck).any()


def test_batches_of_one_and_three_objects_run_through_tiny_sam(binary_folder, instance_folder):
    one = _by_id(prepare_objects_for_sam(_load(instance_folder, objects="instance"), SIZE)["validation"])["one"]
    three = _by_id(prepare_objects_for_sam(_load(binary_folder, objects="components"), SIZE)["validation"])["c"]
    batch = sam_objects_collate_fn([one, three])
    assert batch["pixel_values"].shape == (2, 3, SIZE, SIZE)
    assert batch["object_masks"].shape == (2, 3, SIZE, SIZE) and batch["object_counts"].tolist() == [1, 3]
    assert batch["valid"].shape == (2, SIZE, SIZE) and batch["original_sizes"].tolist() == [[50, 50], [70, 70]]
    assert batch["id"] == ["one", "c"] and len(batch["objects"][1]["id"]) == 3
    present = object_present(batch)
    assert present.tolist() == [[True, False, False], [True, True, True]]
    assert not batch["object_masks"][0, 1:].any()

    targets = object_targets(batch)
    assert targets.shape == (2, 3, SIZE, SIZE) and targets.dtype == torch.uint8
    assert (targets[0, 1:] == IGNORE_INDEX).all()
    assert torch.equal(targets[1, :, :128, :128] == 1, batch["object_masks"][1])  # square image: nothing padded
    assert torch.equal(targets[0, 0] == 1, batch["object_masks"][0, 0])

    boxes = object_boxes(batch)
    assert boxes.shape == (2, 3, 4)
    assert torch.equal(boxes[1], boxes_from_masks(batch["object_masks"][1])[:, 0])
    assert torch.equal(boxes[0, 1:], torch.zeros(2, 4))

    model = random_sam("tiny", seed=0)
    with torch.no_grad():
        outputs = model(pixel_values=batch["pixel_values"], input_boxes=boxes, multimask_output=False)
    assert outputs.pred_masks.shape[:3] == (2, 3, 1)
    assert outputs.iou_scores.shape == (2, 3, 1)
