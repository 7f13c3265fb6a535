"""`load_folder` (custom image / mask folders) and `load_hub` (offline, on a local parquet dataset folder)."""

from __future__ import annotations

import re
import traceback

import numpy as np
import pytest
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from sam_peft.data import DataFileError, DataLayoutError, load_folder, load_hub, prepare_for_sam, verify_dataset
from sam_peft.training import DataArguments, build_datasets


def _write_pairs(image_dir, mask_dir, count, mask_suffix="", mask_values=(0, 255)):
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = np.full((8, 10, 3), 20 * index, np.uint8)
        mask = np.full((8, 10), mask_values[0], np.uint8)
        mask[:, : 2 + index] = mask_values[1]
        PILImage.fromarray(image).save(image_dir / f"case{index}.jpg")
        PILImage.fromarray(mask).save(mask_dir / f"case{index}{mask_suffix}.png")


def test_load_folder_matches_masks_by_stem_and_suffix(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", 5, mask_suffix="_segmentation")
    (tmp_path / "masks" / "unrelated_segmentation.png").write_bytes(b"masks without images are ignored")
    dataset = load_folder(tmp_path / "images", tmp_path / "masks", mask_suffix="_segmentation")
    assert list(dataset) == ["train"] and dataset["train"]["id"] == [f"case{i}" for i in range(5)]
    example = dataset["train"][3]
    assert example["image"].mode == "RGB" and np.asarray(example["mask"]).sum() == 8 * 5


def test_load_folder_with_masks_beside_the_images_and_carved_splits(tmp_path):
    _write_pairs(tmp_path / "all", tmp_path / "all", 10, mask_suffix="_mask")
    dataset = load_folder(
        tmp_path / "all", tmp_path / "all", mask_suffix="_mask", validation_fraction=0.25, test_fraction=0.2
    )
    assert {split: len(part) for split, part in dataset.items()} == {"train": 6, "test": 2, "validation": 2}
    assert "seed 0" in dataset["test"].info.description


def test_load_folder_multiclass_with_palette(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    PILImage.new("RGB", (4, 2)).save(tmp_path / "img" / "a.png")
    colours = np.array([[[0, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 255]]] * 2, np.uint8)
    PILImage.fromarray(colours).save(tmp_path / "ann" / "a.png")
    dataset = load_folder(
        tmp_path / "img", tmp_path / "ann", num_labels=3, palette=[(0, 0, 0), (0, 255, 0), (0, 0, 255)]
    )
    assert dataset["train"].column_names == ["image", "label", "id"]
    assert np.asarray(dataset["train"][0]["label"]).tolist() == [[0, 1, 2, 2]] * 2


def test_load_folder_errors_name_the_folder_and_the_image(tmp_path):
    with pytest.raises(DataLayoutError, match=r"mask folder .*absent"):
        load_folder(tmp_path, tmp_path / "absent")
    _write_pairs(tmp_path / "images", tmp_path / "masks", 3)
    (tmp_path / "masks" / "case1.png").unlink()
    with pytest.raises(DataFileError, match=r"case1\.jpg"):
        load_folder(tmp_path / "images", tmp_path / "masks")


def _write_parquet_dataset(folder) -> None:
    """A local dataset folder laid out like a Hub repository: `data/<split>-00000-of-00001.parquet`."""
    features = Features({"img": Image(), "seg": Image(), "name": Value("string"), "extra": Value("int32")})
    for split, count in (("train", 3), ("test", 2)):
        masks = [np.eye(6, 8, dtype=np.uint8) * 255 for _ in range(count)]
        rows = {
            "img": [np.full((6, 8, 3), 9 * index, np.uint8) for index in range(count)],
            "seg": masks,
            "name": [f"{split}-{index}" for index in range(count)],
            "extra": list(range(count)),
        }
        (folder / "data").mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(rows, features=features).to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")


def test_load_hub_maps_columns_offline(tmp_path):
    _write_parquet_dataset(tmp_path / "repo")
    dataset = load_hub(
        str(tmp_path / "repo"),
        image_column="img",
        target_column="seg",
        id_column="name",
        cache_dir=str(tmp_path / "cache"),
    )
    assert {split: len(part) for split, part in dataset.items()} == {"train": 3, "test": 2}
    assert dataset["test"].column_names == ["image", "mask", "id"]
    example = dataset["test"][1]
    assert example["id"] == "test-1" and example["image"].mode == "RGB"
    assert np.array_equal(np.asarray(example["mask"]), np.eye(6, 8, dtype=np.uint8))
    assert prepare_for_sam(dataset, 16)["train"][0]["labels"].shape == (16, 16)


def test_load_hub_single_split_without_ids(tmp_path):
    _write_parquet_dataset(tmp_path / "repo")
    dataset = load_hub(
        str(tmp_path / "repo"),
        image_column="img",
        target_column="seg",
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert list(dataset) == ["train"] and dataset["train"]["id"] == ["0", "1", "2"]


def test_load_hub_reports_missing_columns_and_streaming(tmp_path):
    _write_parquet_dataset(tmp_path / "repo")
    with pytest.raises(ValueError, match=r"\['mask'\].*'img', 'seg'"):
        load_hub(str(tmp_path / "repo"), image_column="img", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="streaming"):
        load_hub(str(tmp_path / "repo"), streaming=True)


def test_load_hub_accepts_masks_stored_as_arrays(tmp_path):
    (tmp_path / "repo").mkdir()
    rows = {"image": [np.zeros((2, 3, 3), np.uint8)], "mask": [[[0, 1, 1], [0, 0, 1]]]}
    Dataset.from_dict(rows, features=Features({"image": Image(), "mask": List(List(Value("int64")))})).to_parquet(
        tmp_path / "repo" / "train.parquet"
    )
    dataset = load_hub(str(tmp_path / "repo"), cache_dir=str(tmp_path / "cache"))
    assert np.asarray(dataset["train"][0]["mask"]).tolist() == [[0, 1, 1], [0, 0, 1]]


def test_load_folder_rejects_two_images_of_one_stem(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", 3)
    PILImage.new("RGB", (10, 8)).save(tmp_path / "images" / "case1.png")
    with pytest.raises(DataFileError, match=r"Images .*case1\.jpg and .*case1\.png have the same name stem 'case1'"):
        load_folder(tmp_path / "images", tmp_path / "masks", validation_fraction=0.3)
    assert len(load_folder(tmp_path / "images", tmp_path / "masks", image_pattern="*.jpg")["train"]) == 3


def test_load_folder_rejects_two_masks_of_one_stem(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", 3)
    PILImage.new("L", (10, 8)).save(tmp_path / "masks" / "case2.jpg")
    with pytest.raises(DataFileError, match=r"case2\.jpg has several masks: .*case2\.jpg, .*case2\.png"):
        load_folder(tmp_path / "images", tmp_path / "masks")


def _break_files(image_dir, mask_dir) -> dict[str, str]:
    """Breaks four of the pairs written by `_write_pairs`; returns the bad file names and what must be said."""
    PILImage.new("L", (4, 4)).save(mask_dir / "case1.png")  # wrong size
    png = (mask_dir / "case2.png").read_bytes()
    (mask_dir / "case2.png").write_bytes(png[: len(png) // 2])  # truncated: its header is intact
    (image_dir / "case3.jpg").write_bytes(b"this is a text file")  # not an image
    jpeg = (image_dir / "case4.jpg").read_bytes()
    (image_dir / "case4.jpg").write_bytes(jpeg[: len(jpeg) - 40])  # truncated JPEG
    return {
        "case1.png": r"Mask .*case1\.png is 4x4 but its image .*case1\.jpg is 10x8",
        "case2.png": r"Cannot read image file .*case2\.png",
        "case3.jpg": r"Cannot read image file .*case3\.jpg: cannot identify image file",
        "case4.jpg": r"Cannot read image file .*case4\.jpg",
    }


def test_verify_reports_every_bad_file_in_one_error_without_a_chained_traceback(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", 8)
    expected = _break_files(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(DataFileError) as raised:
        load_folder(tmp_path / "images", tmp_path / "masks", verify=True)
    message = str(raised.value)
    assert message.startswith("4 problem(s) in the files of 8 image / mask pair(s):\n")
    for pattern in expected.values():
        assert re.search(pattern, message), pattern
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_verify_lists_twenty_problems_then_how_many_more(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for index in range(23):
        PILImage.new("RGB", (5, 4)).save(tmp_path / "images" / f"case{index}.png")
        PILImage.new("L", (3, 3)).save(tmp_path / "masks" / f"case{index}.png")
    with pytest.raises(DataFileError) as raised:
        load_folder(tmp_path / "images", tmp_path / "masks", verify=True)
    lines = str(raised.value).splitlines()
    assert lines[0] == "23 problem(s) in the files of 23 image / mask pair(s):"
    assert sum("is 3x3 but its image" in line for line in lines) == 20 and "  ... and 3 more" in lines


def test_verify_compares_sizes_after_the_exif_orientation(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", 2)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees: 8 wide, 10 high
    PILImage.new("RGB", (10, 8)).save(tmp_path / "images" / "case1.jpg", exif=exif)
    PILImage.new("L", (8, 10)).save(tmp_path / "masks" / "case1.png")
    dataset = load_folder(tmp_path / "images", tmp_path / "masks", verify=True)
    assert verify_dataset(dataset) == 2
    assert dataset["train"][1]["image"].size == (8, 10)


def _folder_arguments(tmp_path, **changes) -> DataArguments:
    return DataArguments(image_dir=str(tmp_path / "images"), mask_dir=str(tmp_path / "masks"), **changes)


def test_build_datasets_checks_every_file_of_a_folder_before_training(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", 10)
    raw, prepared = build_datasets(_folder_arguments(tmp_path), 1, 16, 0)
    assert {split: len(part) for split, part in raw.items()} == {"train": 8, "validation": 2}
    assert prepared["train"][0]["labels"].shape == (16, 16)
    expected = _break_files(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(DataFileError) as raised:
        build_datasets(_folder_arguments(tmp_path), 1, 16, 0)
    for pattern in expected.values():
        assert re.search(pattern, str(raised.value)), pattern
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert "".join(traceback.format_exception(raised.value)).count("Traceback") == 1


def test_build_datasets_checks_only_the_rows_it_uses(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", 10)
    ids = list(
        load_folder(tmp_path / "images", tmp_path / "masks", validation_fraction=0.2)["train"].with_format(None)["id"]
    )
    PILImage.new("L", (3, 3)).save(tmp_path / "masks" / f"{ids[-1]}.png")  # the last training image's mask
    arguments = _folder_arguments(tmp_path, max_train_samples=len(ids) - 1)
    assert len(build_datasets(arguments, 1, 16, 0)[0]["train"]) == len(ids) - 1
    with pytest.raises(DataFileError, match=rf"{ids[-1]}\.png is 3x3"):
        build_datasets(_folder_arguments(tmp_path), 1, 16, 0)


def test_verify_dataset_skips_rows_held_in_memory(tmp_path):
    _write_parquet_dataset(tmp_path / "repo")
    dataset = load_hub(str(tmp_path / "repo"), image_column="img", target_column="seg", cache_dir=str(tmp_path / "c"))
    assert verify_dataset(dataset) == 0


def _write_train_only(folder, ids) -> None:
    """A Hub-like dataset folder with one train split whose rows carry `ids`, in that order."""
    rows = {
        "image": [np.full((4, 4, 3), 10 * index, np.uint8) for index in range(len(ids))],
        "mask": [np.eye(4, dtype=np.uint8) * 255 for _ in ids],
        "id": list(ids),
    }
    (folder / "data").mkdir(parents=True)
    features = Features({"image": Image(), "mask": Image(), "id": Value("string")})
    Dataset.from_dict(rows, features=features).to_parquet(folder / "data" / "train-00000-of-00001.parquet")


def test_load_hub_carves_validation_by_id_whatever_the_row_order(tmp_path):
    ids = [f"{index:02d}" for index in range(10)]
    _write_train_only(tmp_path / "ordered", ids)
    _write_train_only(tmp_path / "reversed", ids[::-1])
    carved = [
        load_hub(str(tmp_path / name), validation_fraction=0.3, cache_dir=str(tmp_path / "cache"))
        for name in ("ordered", "reversed")
    ]
    for dataset in carved:
        assert list(dataset) == ["train", "validation"] and len(dataset["validation"]) == 3
        assert sorted([*dataset["train"]["id"], *dataset["validation"]["id"]]) == ids
        assert "validation: 30% of the train rows (3), carved with seed" in dataset["validation"].info.description
        assert np.asarray(dataset["validation"][0]["mask"]).max() == 1  # still decoded lazily
    assert sorted(carved[0]["validation"]["id"]) == sorted(carved[1]["validation"]["id"])
    # A dataset that has its own validation split keeps it; no fraction, no carving.
    assert list(load_hub(str(tmp_path / "ordered"), cache_dir=str(tmp_path / "cache"))) == ["train"]
    _write_parquet_dataset(tmp_path / "repo")
    (tmp_path / "repo" / "data" / "test-00000-of-00001.parquet").rename(
        tmp_path / "repo" / "data" / "validation-00000-of-00001.parquet"
    )
    own = load_hub(
        str(tmp_path / "repo"),
        image_column="img",
        target_column="seg",
        validation_fraction=0.5,
        cache_dir=str(tmp_path / "c"),
    )
    assert {split: len(part) for split, part in own.items()} == {"train": 3, "validation": 2}


def test_load_hub_refuses_to_carve_by_duplicate_ids(tmp_path):
    _write_train_only(tmp_path / "repo", ["a", "b", "a", "c"])
    with pytest.raises(ValueError, match="ids are not unique; name a column of unique ids with id_column"):
        load_hub(str(tmp_path / "repo"), validation_fraction=0.5, cache_dir=str(tmp_path / "cache"))


def test_recipe_hub_dataset_with_columns_and_carving(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    _write_parquet_dataset(tmp_path / "repo")  # train (3) and test (2), columns img / seg
    arguments = DataArguments(
        hub_dataset=str(tmp_path / "repo"), image_column="img", target_column="seg", validation_fraction=0.34
    )
    raw, prepared = build_datasets(arguments, 1, 16, 0)
    assert {split: len(part) for split, part in raw.items()} == {"train": 2, "validation": 1}
    assert prepared["validation"][0]["labels"].shape == (16, 16)
    with pytest.raises(ValueError, match="image_column applies to hub_dataset only"):
        DataArguments(image_dir="images", mask_dir="masks", image_column="img")
