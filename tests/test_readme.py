"""Every Python block of README.md runs as written, offline, on a tiny SAM served as `facebook/sam-vit-base`
from a locally built Hub cache, in a working directory holding the data folders the blocks name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants
from PIL import Image

from sam_peft import random_sam

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def _write_pairs(images: Path, masks: Path, count: int, seed: int) -> None:
    """`count` small image / 0-255 mask pairs with the same stems (`img_000.jpg` / `img_000.png`)."""
    rng = np.random.default_rng(seed)
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(images / f"img_{index:03d}.jpg")
        mask = np.zeros((24, 32), np.uint8)
        mask[4:18, 6 + index % 8 : 20 + index % 8] = 255
        Image.fromarray(mask).save(masks / f"img_{index:03d}.png")


@pytest.fixture(scope="module")
def readme_world(tmp_path_factory):
    """A Hub cache holding the tiny SAM as facebook/sam-vit-base, and the data folders of the README's blocks."""
    root = tmp_path_factory.mktemp("readme")
    snapshot = root / "hub" / "models--facebook--sam-vit-base" / "snapshots" / ("0" * 40)
    random_sam("tiny").save_pretrained(snapshot)
    (root / "hub" / "models--facebook--sam-vit-base" / "refs").mkdir()
    (root / "hub" / "models--facebook--sam-vit-base" / "refs" / "main").write_text("0" * 40)
    work = root / "work"
    _write_pairs(work / "my_data" / "images", work / "my_data" / "masks", 6, seed=0)
    _write_pairs(work / "data" / "Kvasir-SEG" / "images", work / "data" / "Kvasir-SEG" / "masks", 104, seed=1)
    camo = work / "data" / "CAMO-V.1.0-CVIU2019"
    _write_pairs(camo / "Images" / "Train", camo / "GT", 6, seed=2)
    rng = np.random.default_rng(3)
    (camo / "Images" / "Test").mkdir()
    for index in range(2):  # test images, their masks in the same GT folder
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(camo / "Images/Test" / f"t{index}.jpg")
        Image.fromarray(np.eye(24, 32, dtype=np.uint8) * 255).save(camo / "GT" / f"t{index}.png")
    _write_objects(work)
    return root


def _write_objects(work: Path) -> None:
    """The prompted section's data: instance label images (images/, labels/) and a COCO folder (val2017/)."""
    (work / "images").mkdir()
    (work / "labels").mkdir()
    (work / "val2017").mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    for index in range(3):
        Image.fromarray(np.full((24, 32, 3), 40 * index, np.uint8)).save(work / "images" / f"cell_{index}.png")
        label = np.zeros((24, 32), np.uint16)
        label[2:10, 3:12], label[12:20, 15:28] = 1, 2
        Image.fromarray(label).save(work / "labels" / f"cell_{index}.png")
        Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(work / "val2017" / f"{index:012d}.jpg")
        coco["images"].append({"id": index, "file_name": f"{index:012d}.jpg", "width": 32, "height": 24})
        square = [4.0, 4.0, 14.0, 4.0, 14.0, 14.0, 4.0, 14.0]
        coco["annotations"].append(
            {"id": index, "image_id": index, "category_id": 1, "segmentation": [square], "iscrowd": 0}
        )
    (work / "instances_val2017.json").write_text(json.dumps(coco))


@pytest.fixture
def offline_readme(readme_world, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(readme_world / "hub"))
    monkeypatch.chdir(readme_world / "work")
    return readme_world


def test_readme_has_the_blocks_this_test_runs():
    assert len(BLOCKS) == 7 and sum("facebook/sam-vit-base" in block for block in BLOCKS) == 3


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[block.splitlines()[0][:40] for block in BLOCKS])
def test_readme_block_runs(index, offline_readme):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})
