"""recipes/continual.py end to end: the offline quickstart's stream of generated domains, outputs and bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sam_peft.continual import ContinualSam
from sam_peft.data import binary_dataset, prepare_for_sam, sam_collate_fn

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "continual.py"
QUICKSTART = ROOT / "recipes" / "configs" / "continual_quickstart.yaml"


def load_recipe():
    spec = importlib.util.spec_from_file_location("continual_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_samcl_config_holds_the_papers_protocol():
    recipe = load_recipe()
    (args, training), structured = recipe.parse_config(
        (recipe.ContinualArguments, recipe.DomainTrainingArguments),
        [str(ROOT / "recipes" / "configs" / "continual_samcl.yaml")],
        structured_keys=("domains", "base_domain"),
    )
    assert [d["name"] for d in structured["domains"]] == ["kvasir", "camo", "istd", "isic", "cod10k"]
    assert [d["benchmark"] for d in structured["domains"]] == ["kvasir", "camo", "istd", "isic2017", "cod10k"]
    assert (args.base_model, args.r, args.layers_to_transform, args.prompt_augmentation) == (
        "facebook/sam-vit-base",
        10,
        None,  # the last five blocks: 7..11 on ViT-B
        True,
    )
    assert (args.entries_per_domain, args.selector_epochs, args.selector_lr, args.selector_batch_size) == (
        300,
        25,
        0.01,
        24,
    )
    assert (training.learning_rate, training.num_epochs, training.batch_size, training.points_per_image) == (
        5e-3,
        20,
        8,
        3,
    )
    assert (training.focal_alpha, training.focal_gamma, training.dice_weight) == (0.8, 2.0, 10.0)


def run_continual(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(RECIPE), *args, "--progress", "false"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"continual.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    """The quickstart config as shipped, into a temporary folder."""
    tmp_path = tmp_path_factory.mktemp("continual")
    run_continual(str(QUICKSTART), "--output_dir", str(tmp_path / "run"), "--base_model", str(tmp_path / "base"))
    return tmp_path


def test_quickstart_routes_and_does_not_forget(quickstart):
    metrics = json.loads((quickstart / "run" / "continual_metrics.json").read_text())
    assert metrics["domains"] == ["polyp", "shadow", "lesion"]
    assert metrics["selector_accuracy"] >= 0.9 and metrics["FM"] <= 0.02
    matrix = metrics["accuracy_matrix"]
    assert matrix[0][2] is None and all(v is not None for row in matrix[1:] for v in row)  # j <= i + 1 only
    # AA: the last row's mean; FT: the mean score on the next domain before learning it
    assert metrics["AA"] == pytest.approx(sum(matrix[2]) / 3)
    assert metrics["FT"] == pytest.approx((matrix[0][1] + matrix[1][2]) / 2)
    # every module improves on the base SAM in its own domain
    for index, domain in enumerate(metrics["domains"]):
        assert matrix[index][index] > metrics["base_sam"][domain], domain
    assert (quickstart / "run" / "accuracy_matrix.png").stat().st_size > 0


def test_quickstart_model_reloads_and_routes(quickstart):
    model = ContinualSam.from_pretrained(quickstart / "run")
    images = prepare_for_sam(binary_dataset(4, 128, seed=123, split="validation", appearance="shadow"), 128)
    batch = sam_collate_fn([images[i] for i in range(4)])
    with torch.no_grad():
        assert model.route(batch["pixel_values"]) == ["shadow"] * 4


def test_bad_configs_are_named(tmp_path):
    config = tmp_path / "none.yaml"
    config.write_text("random_base: tiny\n")
    result = run_continual(str(config), "--base_model", str(tmp_path / "base"), check=False)
    assert result.returncode != 0 and "needs a `domains` list" in result.stderr
    config.write_text(
        "random_base: tiny\ndomains:\n  - {name: a, benchmark: synthetic}\n  - {name: a, benchmark: synthetic}\n"
    )
    result = run_continual(str(config), "--base_model", str(tmp_path / "base"), check=False)
    assert result.returncode != 0 and "Domain names must be distinct" in result.stderr
    config.write_text(
        "random_base: tiny\nlayers_to_transform: [2, 3]\n"
        "domains:\n  - {name: a, benchmark: synthetic, learning_rat: 1}\n"
    )
    result = run_continual(str(config), "--base_model", str(tmp_path / "base"), check=False)
    assert result.returncode != 0 and "domains entry 'a'" in result.stderr and "learning_rat" in result.stderr
