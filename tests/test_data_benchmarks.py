"""`load_benchmark` on small fake trees in every distributed layout: splits, counts, masks, sizes and errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_peft.data import BENCHMARKS, DataFileError, DataLayoutError, load_benchmark
from sam_peft.training import DataArguments, build_datasets


@dataclass
class Folder:
    """`count` images in `images` and their masks in `masks` (paths relative to the tree root)."""

    images: str
    masks: str
    count: int
    image_ext: str = ".jpg"
    mask_ext: str = ".png"
    mask_suffix: str = ""
    prefix: str = "img_"
    masks_missing: bool = False


@dataclass
class Tree:
    """A fake extracted archive: its folder name, its folders, and the split sizes `load_benchmark` must give."""

    root: str
    folders: list[Folder]
    splits: dict[str, int]
    labels: str = "binary"
    extra_files: list[str] = field(default_factory=list)


TREES = {
    "kvasir": Tree(
        "Kvasir-SEG", [Folder("images", "masks", 110, mask_ext=".jpg")], {"train": 8, "validation": 2, "test": 100}
    ),
    "cvc-clinicdb": Tree(
        "CVC-ClinicDB",
        [Folder("Original", "Ground Truth", 70, image_ext=".tif", mask_ext=".tif")],
        {"train": 6, "validation": 2, "test": 62},
    ),
    "pranet": Tree(
        "PraNet",
        [
            Folder("TrainDataset/image", "TrainDataset/mask", 5, image_ext=".png"),
            *[
                Folder(f"TestDataset/TestDataset/{name}/images", f"TestDataset/TestDataset/{name}/masks", 2, ".png")
                for name in ("Kvasir", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "CVC-300")
            ],
        ],
        {
            "train": 4,
            "validation": 1,
            "test_kvasir": 2,
            "test_cvc_clinicdb": 2,
            "test_cvc_colondb": 2,
            "test_etis": 2,
            "test_cvc_300": 2,
        },
    ),
    "isic2017": Tree(
        "ISIC2017",
        [
            Folder(f"ISIC-2017_{part}_Data", f"ISIC-2017_{part}_Part1_GroundTruth", n, mask_suffix="_segmentation")
            for part, n in (("Training", 3), ("Validation", 2), ("Test_v2", 2))
        ],
        {"train": 3, "validation": 2, "test": 2},
        extra_files=["ISIC-2017_Training_Data/img_0000_superpixels.png", "ISIC-2017_Training_Data/metadata.csv"],
    ),
    "cod10k": Tree(
        "COD10K-v3",
        [
            Folder("Train/Image", "Train/GT_Object", 10, prefix="COD10K-CAM-1-Aquatic-1-BatFish-"),
            Folder("Train/Image", "Train/GT_Object", 2, prefix="COD10K-NonCAM-5-Background-1-", masks_missing=True),
            Folder("Test/Image", "Test/GT_Object", 3, prefix="COD10K-CAM-2-Terrestrial-23-Cat-"),
            Folder("Test/Image", "Test/GT_Object", 1, prefix="COD10K-NonCAM-5-Background-2-", masks_missing=True),
        ],
        {"train": 9, "validation": 1, "test": 3},
    ),
    "camo": Tree(
        "CAMO-V.1.0-CVIU2019",
        [Folder("Images/Train", "GT", 10, prefix="camourflage_"), Folder("Images/Test", "GT", 3, prefix="test_")],
        {"train": 9, "validation": 1, "test": 3},
    ),
    "chameleon": Tree("CHAMELEON", [Folder("Imgs", "GT", 3)], {"test": 3}),
    "sinet": Tree(
        "COD",
        [
            Folder("TrainDataset/Imgs", "TrainDataset/GT", 10),
            *[
                Folder(f"TestDataset/{name}/Imgs", f"TestDataset/{name}/GT", 2)
                for name in ("CAMO", "CHAMELEON", "COD10K")
            ],
        ],
        {"train": 9, "validation": 1, "test_camo": 2, "test_chameleon": 2, "test_cod10k": 2},
    ),
    "sbu": Tree(
        "SBU-shadow",
        [
            Folder("SBUTrain4KRecoveredSmall/ShadowImages", "SBUTrain4KRecoveredSmall/ShadowMasks", 10),
            Folder("SBU-Test/ShadowImages", "SBU-Test/ShadowMasks", 3),
        ],
        {"train": 9, "validation": 1, "test": 3},
    ),
    "istd": Tree(
        "ISTD_Dataset",
        [Folder("train/train_A", "train/train_B", 10, ".png"), Folder("test/test_A", "test/test_B", 3, ".png")],
        {"train": 9, "validation": 1, "test": 3},
        extra_files=["train/train_C/img_0000.png"],
    ),
    "leaf": Tree(
        "orig_data",
        [Folder("train_images", "train_masks", 10), Folder("valid_images", "valid_masks", 3)],
        {"train": 8, "validation": 2, "test": 3},
    ),
    "roads": Tree(
        "tiff",
        [
            Folder(split, f"{split}_labels", n, image_ext=".tiff", mask_ext=".tif")
            for split, n in (("train", 3), ("val", 2), ("test", 2))
        ],
        {"train": 3, "validation": 2, "test": 2},
        extra_files=["metadata.csv"],
    ),
    "trans10k-v1": Tree(
        "Trans10K",
        [
            Folder("train/images", "train/masks", 3, mask_suffix="_mask"),
            Folder("validation/easy/images", "validation/easy/masks", 2, mask_suffix="_mask"),
            Folder("validation/hard/images", "validation/hard/masks", 1, mask_suffix="_mask"),
            Folder("test/easy/images", "test/easy/masks", 1, mask_suffix="_mask"),
            Folder("test/hard/images", "test/hard/masks", 2, mask_suffix="_mask"),
        ],
        {"train": 3, "validation": 3, "test": 3},
        labels="trans10k-v1",
    ),
    "trans10k-v2": Tree(
        "Trans10K_cls12",
        [
            Folder(f"{split}/images", f"{split}/masks_12", n, mask_suffix="_mask")
            for split, n in (("train", 3), ("validation", 2), ("test", 2))
        ],
        {"train": 3, "validation": 2, "test": 2},
        labels="trans10k-v2",
    ),
}


def _size(index: int) -> tuple[int, int]:
    """(width, height) of the index-th fake image: small and not all equal."""
    return 12 + index % 3, 10 + index % 2


def _binary_mask(width: int, height: int, index: int) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    mask[2 : height - 2, 1 + index % 3 : width - 3] = 255
    return Image.fromarray(mask)


def _trans10k_v1_mask(width: int, height: int) -> Image.Image:
    mask = np.zeros((height, width, 3), np.uint8)
    mask[:4] = (255, 0, 0)
    mask[-3:] = (255, 255, 255)
    return Image.fromarray(mask)


def _trans10k_v2_mask(width: int, height: int, index: int) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    mask[:3] = 1 + index % 11
    mask[-2:] = 11
    image = Image.fromarray(mask).convert("P")
    image.putpalette([value for class_id in range(256) for value in (class_id * 20 % 256, class_id, 255 - class_id)])
    return image


def _mask_image(labels: str, width: int, height: int, index: int) -> Image.Image:
    if labels == "trans10k-v1":
        return _trans10k_v1_mask(width, height)
    if labels == "trans10k-v2":
        return _trans10k_v2_mask(width, height, index)
    return _binary_mask(width, height, index)


def write_folder(root: Path, folder: Folder, labels: str = "binary") -> None:
    """Writes `folder.count` images (and their masks) under `root`."""
    (root / folder.images).mkdir(parents=True, exist_ok=True)
    (root / folder.masks).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(folder.prefix) + folder.count)
    for index in range(folder.count):
        width, height = _size(index)
        stem = f"{folder.prefix}{index:04d}"
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / folder.images / f"{stem}{folder.image_ext}")
        if not folder.masks_missing:
            mask = _mask_image(labels, width, height, index)
            mask.save(root / folder.masks / f"{stem}{folder.mask_suffix}{folder.mask_ext}")


def write_tree(parent: Path, name: str) -> Path:
    """Writes the fake tree of benchmark `name` in `parent / <its root folder>`; returns that folder."""
    tree = TREES[name]
    root = parent / tree.root
    for folder in tree.folders:
        write_folder(root, folder, tree.labels)
    for extra in tree.extra_files:
        (root / extra).parent.mkdir(parents=True, exist_ok=True)
        (root / extra).write_bytes(b"not part of the dataset")
    return root


def test_every_benchmark_has_a_fake_tree():
    assert set(TREES) == set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(TREES))
def test_benchmark_splits_counts_and_masks(tmp_path, name):
    write_tree(tmp_path, name)
    dataset = load_benchmark(name, tmp_path)
    layout = BENCHMARKS[name]
    assert {split: len(part) for split, part in dataset.items()} == TREES[name].splits
    for split, part in dataset.items():
        assert part.column_names == ["image", layout.target, "id"]
        assert len(set(part["id"])) == len(part)
        for example in part.select(range(min(len(part), 3))):
            image, target = example["image"], np.asarray(example[layout.target])
            assert image.mode == "RGB" and image.size == target.shape[::-1], (split, example["id"])
            if layout.target == "mask":
                assert set(np.unique(target)) <= {0, 1} and target.any()
            else:
                assert target.max() < layout.num_labels


def test_trans10k_v1_colours_map_to_class_ids(tmp_path):
    write_tree(tmp_path, "trans10k-v1")
    label = np.asarray(load_benchmark("trans10k-v1", tmp_path)["test"][0]["label"])
    assert label[0, 0] == 1 and label[-1, 0] == 2 and label[5, 0] == 0


def test_trans10k_v2_reads_palette_indices(tmp_path):
    write_tree(tmp_path, "trans10k-v2")
    dataset = load_benchmark("trans10k-v2", tmp_path)
    label = np.asarray(dataset["train"][2]["label"])
    assert label[0, 0] == 3 and label[-1, 0] == 11 and label[4, 0] == 0
    assert dataset["train"][0]["id"] == "img_0000"


def test_trans10k_v1_ids_name_the_difficulty(tmp_path):
    write_tree(tmp_path, "trans10k-v1")
    assert load_benchmark("trans10k-v1", tmp_path)["validation"]["id"] == [
        "easy/img_0000",
        "easy/img_0001",
        "hard/img_0000",
    ]


def test_data_dir_may_be_the_extracted_folder_or_its_parent(tmp_path):
    root = write_tree(tmp_path, "camo")
    from_parent = load_benchmark("camo", tmp_path)
    from_folder = load_benchmark("CAMO", root)
    assert from_parent["test"]["id"] == from_folder["test"]["id"]


def test_carving_is_seeded_recorded_and_independent_of_listing_order(tmp_path):
    write_tree(tmp_path, "sbu")
    first, again = load_benchmark("sbu", tmp_path), load_benchmark("sbu", tmp_path)
    other = load_benchmark("sbu", tmp_path, seed=3)
    assert first["validation"]["id"] == again["validation"]["id"]
    assert first["validation"]["id"] != other["validation"]["id"]
    assert set(first["validation"]["id"]).isdisjoint(first["train"]["id"])
    assert "seed 0" in first["validation"].info.description and "seed 3" in other["train"].info.description
    assert load_benchmark("sbu", tmp_path, validation_fraction=0.5)["validation"].num_rows == 5


def test_folder_and_pattern_overrides(tmp_path):
    write_folder(tmp_path / "mine", Folder("pictures", "annotations", 4, image_ext=".png", mask_suffix="_gt"))
    write_folder(tmp_path / "mine", Folder("held_out", "held_out_gt", 2, image_ext=".png", mask_suffix="_gt"))
    dataset = load_benchmark(
        "camo",
        tmp_path / "mine",
        train_images="pictures/*.png",
        train_masks="annotations",
        test_images="held_out",
        test_masks=tmp_path / "mine" / "held_out_gt",
        mask_suffix="_gt",
        validation_fraction=0.25,
    )
    assert {split: len(part) for split, part in dataset.items()} == {"train": 3, "validation": 1, "test": 2}


def test_unknown_benchmark_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown benchmark 'kvasr'.*kvasir.*trans10k-v2"):
        load_benchmark("kvasr", tmp_path)


def test_unknown_override_is_an_error(tmp_path):
    write_tree(tmp_path, "camo")
    with pytest.raises(TypeError, match="valid_images"):
        load_benchmark("camo", tmp_path, valid_images="x")


def test_missing_data_dir_names_it_and_the_layout(tmp_path):
    with pytest.raises(DataLayoutError, match=r"(?s)nowhere.*Kvasir-SEG.*images"):
        load_benchmark("kvasir", tmp_path / "nowhere")


def test_missing_sub_folder_says_which_layout_was_expected(tmp_path):
    write_folder(
        tmp_path / "SBU-shadow",
        Folder("SBUTrain4KRecoveredSmall/ShadowImages", "SBUTrain4KRecoveredSmall/ShadowMasks", 2),
    )
    with pytest.raises(DataLayoutError, match=r"SBU shadow.*SBU-Test/ShadowImages.*SBU-Test/ShadowMasks"):
        load_benchmark("sbu", tmp_path)


def test_image_without_mask_is_named(tmp_path):
    root = write_tree(tmp_path, "chameleon")
    (root / "GT" / "img_0001.png").unlink()
    with pytest.raises(DataFileError, match=r"(?s)no mask.*img_0001\.jpg"):
        load_benchmark("chameleon", tmp_path)


def test_corrupt_image_is_named_when_first_read(tmp_path):
    root = write_tree(tmp_path, "chameleon")
    (root / "Imgs" / "img_0002.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    dataset = load_benchmark("chameleon", tmp_path)["test"]
    assert dataset[0]["image"].mode == "RGB"
    with pytest.raises(DataFileError, match=r"Cannot read image file .*img_0002\.jpg"):
        dataset[2]


def test_truncated_image_is_named_when_first_read(tmp_path):
    root = write_tree(tmp_path, "chameleon")
    path = root / "Imgs" / "img_0001.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataFileError, match=r"img_0001\.jpg"):
        load_benchmark("chameleon", tmp_path)["test"][1]


def test_mask_size_mismatch_is_named_when_read_or_verified(tmp_path):
    root = write_tree(tmp_path, "chameleon")
    Image.new("L", (5, 5)).save(root / "GT" / "img_0000.png")
    with pytest.raises(DataFileError, match=r"Mask .*img_0000\.png is 5x5 but its image .*img_0000\.jpg is 12x10"):
        load_benchmark("chameleon", tmp_path)["test"][0]
    with pytest.raises(DataFileError, match=r"img_0000\.png is 5x5"):
        load_benchmark("chameleon", tmp_path, verify=True)


def test_unknown_colour_in_a_colour_coded_mask_is_named(tmp_path):
    root = write_tree(tmp_path, "trans10k-v1")
    mask = np.zeros((10, 12, 3), np.uint8)
    mask[0, 0] = (10, 200, 30)
    Image.fromarray(mask).save(root / "train" / "masks" / "img_0000_mask.png")
    with pytest.raises(DataFileError, match=r"img_0000_mask\.png.*\(10, 200, 30\)"):
        load_benchmark("trans10k-v1", tmp_path)["train"][0]


def test_verify_lists_the_bad_files_of_every_split_in_one_error(tmp_path):
    root = write_tree(tmp_path, "camo")
    Image.new("L", (5, 5)).save(root / "GT" / "camourflage_0003.png")
    (root / "Images" / "Test" / "test_0001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataFileError) as raised:
        load_benchmark("camo", tmp_path, verify=True)
    message = str(raised.value)
    assert message.startswith("2 problem(s) in the files of 13 image / mask pair(s):")
    assert re.search(r"camourflage_0003\.png is 5x5 but its image .*camourflage_0003\.jpg is 12x11", message)
    assert re.search(r"Cannot read image file .*test_0001\.jpg", message)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_two_images_of_one_stem_in_a_benchmark_folder_are_named(tmp_path):
    root = write_tree(tmp_path, "chameleon")
    Image.new("RGB", (12, 10)).save(root / "Imgs" / "img_0001.png")
    with pytest.raises(DataFileError, match=r"Images .*img_0001\.jpg and .*img_0001\.png have the same name stem"):
        load_benchmark("chameleon", tmp_path)


def test_build_datasets_checks_the_benchmark_splits_it_trains_and_evaluates_on(tmp_path):
    root = write_tree(tmp_path, "camo")
    arguments = DataArguments(benchmark="camo", data_dir=str(tmp_path))
    (root / "Images" / "Test" / "test_0001.jpg").write_bytes(b"not a jpeg")  # the test split is not used
    raw, _ = build_datasets(arguments, 1, 16, 0)
    assert {split: len(part) for split, part in raw.items()} == {"train": 9, "validation": 1}
    Image.new("L", (5, 5)).save(root / "GT" / "camourflage_0003.png")
    path = root / "Images" / "Train" / "camourflage_0007.jpg"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataFileError) as raised:
        build_datasets(arguments, 1, 16, 0)
    message = str(raised.value)
    assert message.startswith("2 problem(s) in the files of 10 image / mask pair(s):")
    assert "camourflage_0003.png is 5x5" in message and "camourflage_0007.jpg" in message
    assert "test_0001" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_build_datasets_does_not_check_synthetic_data():
    raw, _ = build_datasets(
        DataArguments(benchmark="synthetic", synthetic_train_size=2, synthetic_eval_size=1), 1, 16, 0
    )
    assert len(raw["train"]) == 2
