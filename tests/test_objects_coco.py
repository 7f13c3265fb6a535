"""Objects for prompted fine-tuning: masks split into objects, instance label folders, COCO annotations."""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import sam_peft.data
from sam_peft.data import (
    DataFileError,
    DataLayoutError,
    ObjectDecoder,
    load_coco,
    load_folder,
    masks_to_objects,
)
from sam_peft.data import objects as objects_module

# pycocotools' own array conversion (in the reference `annToMask` calls), deprecated by numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

HEIGHT, WIDTH = 30, 40


# ------------------------------------------------------------------------------------------------ masks -> objects


def _three_blobs() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[2:8, 3:10] = 255  # top left
    mask[15:25, 5:9] = 255  # bottom left
    mask[10:20, 25:38] = 255  # right
    return mask


def test_components_split_a_mask_and_min_area_drops_a_speck():
    mask = _three_blobs()
    objects = masks_to_objects(mask, "components")
    assert objects.shape == (3, HEIGHT, WIDTH) and objects.dtype == bool
    assert (objects.any(axis=0) == (mask > 0)).all() and objects.sum(axis=0).max() == 1  # union, no overlap
    assert objects.sum(axis=(1, 2)).tolist() == [42, 130, 40]  # scan order: top left, right, bottom left

    speckled = mask.copy()
    speckled[28, 38] = 255
    assert len(masks_to_objects(speckled, "components")) == 4
    kept = masks_to_objects(speckled, "components", min_area=2)
    assert (kept == objects).all()
    # a torch tensor and a 0/1 mask image give the same objects
    assert (masks_to_objects(torch.from_numpy(speckled), "components", min_area=2) == objects).all()
    assert (masks_to_objects(Image.fromarray(speckled // 255), "components", min_area=2) == objects).all()


def test_connectivity_and_the_whole_image_as_one_object():
    diagonal = np.eye(4, dtype=bool)
    assert len(masks_to_objects(diagonal, "components")) == 1
    assert len(masks_to_objects(diagonal, "components", connectivity=4)) == 4
    whole = masks_to_objects(_three_blobs(), "image")
    assert whole.shape == (1, HEIGHT, WIDTH) and (whole[0] == (_three_blobs() > 0)).all()
    assert masks_to_objects(np.zeros((5, 6)), "image").shape == (0, 5, 6)
    assert masks_to_objects(np.zeros((5, 6)), "components").shape == (0, 5, 6)


def test_instance_ids_give_one_object_per_id_in_id_order():
    labels = np.zeros((HEIGHT, WIDTH), np.uint16)
    labels[:, 20:] = 7
    labels[5:10, 5:10] = 3
    objects = masks_to_objects(labels, "instance")
    assert objects.shape == (2, HEIGHT, WIDTH)
    assert (objects[0] == (labels == 3)).all() and (objects[1] == (labels == 7)).all()
    with pytest.raises(DataFileError, match="negative"):
        masks_to_objects(np.array([[0, -1]]), "instance")
    with pytest.raises(ValueError, match="objects must be one of"):
        masks_to_objects(labels, "instances")


def test_load_folder_of_16_bit_label_images_skips_an_image_without_objects(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    masks.mkdir()
    labels = np.zeros((HEIGHT, WIDTH), np.uint16)
    labels[:, 20:] = 700  # ids above 255: a 16-bit PNG
    labels[5:10, 5:10] = 300
    for name, label in (("cells", labels), ("empty", np.zeros_like(labels))):
        Image.new("RGB", (WIDTH, HEIGHT), (90, 20, 20)).save(images / f"{name}.png")
        Image.fromarray(label).save(masks / f"{name}.png")
    with pytest.warns(UserWarning, match=r"1 of 2 image\(s\) have no object .*empty"):
        dataset = load_folder(images, masks, objects="instance")
    train = dataset["train"]
    assert train["id"] == ["cells"] and "1 image(s) without objects skipped" in train.info.description
    row = train[0]
    assert row["image"].mode == "RGB" and row["masks"].shape == (2, HEIGHT, WIDTH)
    assert (row["masks"][0] == (labels == 300)).all() and (row["masks"][1] == (labels == 700)).all()
    assert row["objects"]["id"] == [300, 700] and row["objects"]["category"] == ["object", "object"]
    assert row["objects"]["bbox"] == [[5, 5, 5, 5], [20, 0, 20, 30]] and row["objects"]["area"] == [25, 600]

    torch.manual_seed(0)
    first = [train.with_transform(ObjectDecoder("instance", max_objects=1))[0]["objects"]["id"] for _ in range(8)]
    torch.manual_seed(0)
    again = [train.with_transform(ObjectDecoder("instance", max_objects=1))[0]["objects"]["id"] for _ in range(8)]
    assert first == again and {tuple(ids) for ids in first} == {(300,), (700,)}


def test_load_folder_components_of_binary_masks(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (WIDTH, HEIGHT)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(_three_blobs()).save(tmp_path / "images" / "a_mask.png")
    dataset = load_folder(tmp_path / "images", tmp_path / "images", mask_suffix="_mask", objects="components")
    row = dataset["train"][0]
    assert row["masks"].shape == (3, HEIGHT, WIDTH) and row["objects"]["id"] == [1, 2, 3]
    assert (row["masks"] == masks_to_objects(_three_blobs(), "components")).all()


# ------------------------------------------------------------------------------------------------------- COCO


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a mask: run lengths in column-major order, starting with background."""
    flat = mask.flatten(order="F").astype(bool)
    counts, current, run = [], False, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def _disk(cy: int, cx: int, radius: int) -> np.ndarray:
    rows, columns = np.ogrid[:HEIGHT, :WIDTH]
    return ((rows - cy) ** 2 + (columns - cx) ** 2 <= radius**2).astype(np.uint8)


def _polygon(x: float, y: float, side: float) -> list[float]:
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def _write_coco(folder, annotations, images=("a.png", "b.png", "c.png"), extra_images=()):
    """Images of 40x30 px in `folder/images` and `folder/instances.json` listing `images` (ids 1, 2, ...)."""
    (folder / "images").mkdir(exist_ok=True)
    for index, name in enumerate((*images, *extra_images)):
        Image.new("RGB", (WIDTH, HEIGHT), (10 * index, 50, 90)).save(folder / "images" / name)
    data = {
        "images": [
            {"id": index + 1, "file_name": name, "width": WIDTH, "height": HEIGHT} for index, name in enumerate(images)
        ],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}],
    }
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return folder / "images", path


def _annotation(ann_id, image_id, segmentation, category_id=1, iscrowd=0):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "iscrowd": iscrowd,
        "area": 1.0,
        "bbox": [0, 0, 1, 1],
    }


def _sample_annotations():
    compressed = mask_utils.encode(np.asfortranarray(_disk(12, 20, 6)))
    crowd = np.zeros((HEIGHT, WIDTH), np.uint8)
    crowd[20:28, 2:30] = 1
    uncompressed_mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    uncompressed_mask[3:9, 30:37] = 1
    uncompressed_mask[6, 25:30] = 1
    return [
        _annotation(1, 1, [_polygon(10, 10, 10)]),  # an axis-aligned square
        _annotation(2, 1, [[25, 2, 38, 5, 30, 14], _polygon(2, 20, 6)], category_id=2),  # two parts
        _annotation(3, 1, [[1, 1, 5, 5]]),  # two points: degenerate
        _annotation(4, 1, [[1, 1, 5, 5, 9, 9]]),  # collinear: zero area
        _annotation(5, 2, {"size": [HEIGHT, WIDTH], "counts": compressed["counts"].decode("ascii")}),
        _annotation(6, 2, {"size": [HEIGHT, WIDTH], "counts": _uncompressed(uncompressed_mask)}, category_id=2),
        _annotation(7, 2, {"size": [HEIGHT, WIDTH], "counts": _uncompressed(crowd)}, iscrowd=1),
    ]


def test_coco_polygons_and_rles_decode_as_pycocotools_does(tmp_path):
    images, annotations_json = _write_coco(tmp_path, _sample_annotations())
    with pytest.warns(UserWarning, match=r"images without objects: c\.png.*degenerate annotation ids: 3, 4"):
        dataset, stats = load_coco(images, annotations_json, return_stats=True)
    train = dataset["train"]
    assert train["id"] == ["a", "b"] and train.column_names == ["image", "objects", "id", "image_id", "width", "height"]
    assert stats.images_without_objects == ("c.png",) and stats.degenerate == (3, 4) and stats.crowd_skipped == 1
    assert (stats.images, stats.rows, stats.annotations, stats.objects) == (3, 2, 7, 4)
    assert "1 image(s) without objects skipped" in train.info.description

    reference = COCO(str(annotations_json))
    a, b = train[0], train[1]
    assert a["objects"]["id"] == [1, 2] and b["objects"]["id"] == [5, 6]
    for row in (a, b):
        assert row["image"].size == (WIDTH, HEIGHT) and row["masks"].dtype == bool
        for mask, ann_id in zip(row["masks"], row["objects"]["id"], strict=True):
            assert (mask == reference.annToMask(reference.anns[ann_id]).astype(bool)).all()
    assert a["objects"]["category"] == ["cell", "nucleus"] and b["objects"]["category_id"] == [1, 2]
    # the square polygon's known answer: 10 x 10 pixels, rows and columns 10..19
    assert a["objects"]["area"][0] == 100 and a["objects"]["bbox"][0] == [10, 10, 10, 10]
    assert a["masks"][0].sum() == 100 and a["masks"][0][10:20, 10:20].all()
    assert b["objects"]["area"][0] == _disk(12, 20, 6).sum() and b["objects"]["iscrowd"] == [False, False]
    assert "segmentation" not in a["objects"]

    with pytest.warns(UserWarning, match="1 object.s. below min_area skipped"):
        kept, stats = load_coco(images, annotations_json, crowd="keep", min_area=50, return_stats=True)
    kept = kept["train"][1]  # annotation 6 has 47 pixels
    assert kept["objects"]["id"] == [5, 7] and kept["objects"]["iscrowd"] == [False, True]
    assert stats.below_min_area == 1 and stats.crowd_skipped == 0
    assert (kept["masks"][1] == reference.annToMask(reference.anns[7]).astype(bool)).all()


def test_max_objects_per_image_caps_reproducibly(tmp_path):
    annotations = [_annotation(10 + i, 1, [_polygon(1 + 6 * i, 2, 4)]) for i in range(6)]
    annotations += [_annotation(20, 2, [_polygon(3, 3, 5)])]
    images, annotations_json = _write_coco(tmp_path, annotations, images=("many.png", "one.png"))

    def kept(seed):
        dataset, stats = load_coco(images, annotations_json, max_objects_per_image=2, seed=seed, return_stats=True)
        assert stats.capped == 4 and stats.objects == 3
        rows = dataset["train"].with_format(None)  # stored rows, nothing decoded
        return [row["objects"]["id"] for row in rows]

    first = kept(0)
    assert len(first[0]) == 2 and first[1] == [20] and first[0] == sorted(first[0])
    assert kept(0) == first
    assert len({tuple(kept(seed)[0]) for seed in range(6)}) > 1  # the draw depends on the seed

    # ObjectDecoder(max_objects=k) draws k of the stored objects at every read, masks and objects alike
    train = load_coco(images, annotations_json)["train"].with_transform(ObjectDecoder("coco", max_objects=1))
    reference = COCO(str(annotations_json))
    torch.manual_seed(3)
    drawn = []
    for _ in range(10):
        row = train[0]
        (ann_id,) = row["objects"]["id"]
        assert row["masks"].shape == (1, HEIGHT, WIDTH) and len(row["objects"]["bbox"]) == 1
        assert (row["masks"][0] == reference.annToMask(reference.anns[ann_id]).astype(bool)).all()
        drawn.append(ann_id)
    torch.manual_seed(3)
    assert [train[0]["objects"]["id"][0] for _ in range(10)] == drawn and len(set(drawn)) > 1


def test_coco_whose_file_names_do_not_match_the_folder(tmp_path):
    images, annotations_json = _write_coco(
        tmp_path, _sample_annotations(), images=("a.jpg", "b.jpg", "c.jpg"), extra_images=()
    )
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (images / name).rename(images / name.replace(".jpg", ".png"))
    with pytest.raises(DataLayoutError) as error:
        load_coco(images, annotations_json)
    message = str(error.value)
    assert "3 of the 3 images listed in" in message and "a.jpg, b.jpg, c.jpg" in message
    assert "another extension (a.jpg -> a.png" in message and "missing_images='skip'" in message

    (images / "a.png").rename(images / "a.jpg")
    with pytest.warns(UserWarning, match="images not in the folder: b.jpg, c.jpg"):
        dataset, stats = load_coco(images, annotations_json, missing_images="skip", return_stats=True)
    assert dataset["train"]["id"] == ["a"] and stats.missing_images == ("b.jpg", "c.jpg")


def test_coco_annotations_of_unknown_image_ids(tmp_path):
    annotations = [_annotation(1, 1, [_polygon(2, 2, 5)]), _annotation(2, 41, [_polygon(2, 2, 5)])]
    images, annotations_json = _write_coco(tmp_path, annotations)
    with pytest.raises(DataFileError, match=r"1 of the 2 annotations .* annotation 2 -> image 41"):
        load_coco(images, annotations_json)


def test_coco_missing_file_and_malformed_annotations(tmp_path):
    images, annotations_json = _write_coco(tmp_path, [_annotation(1, 1, [[1, 2, 3, 4, 5]])])
    with pytest.raises(DataLayoutError, match=r"instances_val\.json does not exist\. JSON files in .*instances\.json"):
        load_coco(images, tmp_path / "instances_val.json")
    with pytest.raises(DataFileError, match=r"Annotation 1 .* odd number"):
        load_coco(images, annotations_json)
    _write_coco(tmp_path, [_annotation(1, 1, {"size": [HEIGHT, WIDTH], "counts": [5, 3]})])
    with pytest.raises(DataFileError, match=r"Annotation 1 .* sum to 8, not height x width = 1200"):
        load_coco(images, annotations_json)
    _write_coco(tmp_path, [_annotation(1, 1, [_polygon(1, 1, 3)], category_id=9)])
    with pytest.raises(DataFileError, match="category id 9"):
        load_coco(images, annotations_json)
    _write_coco(tmp_path, [_annotation(1, 1, [])])
    with pytest.raises(DataLayoutError, match=r"No image .* has objects: 0 of 3 images.*1 degenerate"):
        load_coco(images, annotations_json)


def test_coco_size_mismatch_is_found_when_read_or_verified(tmp_path):
    images, annotations_json = _write_coco(tmp_path, [_annotation(1, 1, [_polygon(1, 1, 3)])])
    Image.new("RGB", (20, 30)).save(images / "a.png")
    with pytest.warns(UserWarning, match="images without objects: b.png, c.png"):
        train = load_coco(images, annotations_json)["train"]
    with pytest.raises(DataFileError, match=r"Annotation 1 is 40x30 but its image .*a\.png is 20x30"):
        train[0]
    with pytest.warns(UserWarning), pytest.raises(DataFileError, match=r"a\.png is 20x30 but the JSON says 40x30"):
        load_coco(images, annotations_json, verify=True)


def test_load_coco_without_pycocotools_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(ImportError, match=r'pip install "sam-peft\[coco\]"'):
        load_coco(tmp_path, tmp_path / "instances.json")
    # the module imports without it (it is the only one of sam_peft.data that uses it)
    monkeypatch.delitem(sys.modules, "sam_peft.data.objects")
    monkeypatch.setattr(sam_peft.data, "objects", objects_module)  # restored after the fresh import replaces it
    fresh = importlib.import_module("sam_peft.data.objects")
    assert fresh is not objects_module and callable(fresh.load_coco)
