"""Every recipe config parses into the training dataclasses, and the paper configs hold the paper's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sam_peft.data.layouts import BENCHMARKS
from sam_peft.metrics import SEMANTIC_METRIC_NAMES, SOD_METRIC_NAMES
from sam_peft.training.arguments import TRAINED_METHODS, parse_args

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
# recipes/train.py's configs (the continual recipe's are checked in test_continual_recipe.py)
ALL = sorted(path for path in CONFIGS.glob("*.yaml") if not path.stem.startswith("continual_"))
# the Conv-LoRA paper's methods and datasets; CAD has its own paper, datasets and settings
CONV_LORA_METHODS = ("conv_lora", "lora", "decoder_only")
DATASETS = ("kvasir", "cvc612", "isic2017", "camouflage", "sbu", "leaf", "road", "trans10k_v1", "trans10k_v2")
CAD_DATASETS = {"cod10k": ("cod10k", "s_alpha"), "camo": ("camo", "s_alpha"), "istd": ("istd", "ber")}
PAPER = [path for path in ALL if path.stem.startswith(CONV_LORA_METHODS)]
CAD = [path for path in ALL if path.stem.startswith("cad_")]


def _parse(name: str):
    return parse_args([str(CONFIGS / f"{name}.yaml")])


def test_one_config_per_method_and_dataset():
    expected = {f"{method}_{dataset}" for method in CONV_LORA_METHODS for dataset in DATASETS}
    assert {path.stem for path in PAPER} == expected
    assert {path.stem for path in CAD} == {f"cad_{dataset}" for dataset in CAD_DATASETS}
    partial = {"bias_only", "norm_only", "attention_only", "last_blocks", "full"}
    assert set(TRAINED_METHODS) == {*CONV_LORA_METHODS, "cad", "sam_adapter", "slora", "peft", *partial}
    assert {path.stem for path in ALL} == {path.stem for path in PAPER + CAD} | {"quickstart", "quickstart_prompted"}


@pytest.mark.parametrize("dataset", CAD_DATASETS)
def test_cad_configs_hold_the_cad_papers_settings(dataset):
    model_args, data_args, train_args = _parse(f"cad_{dataset}")
    benchmark, metric = CAD_DATASETS[dataset]
    assert (model_args.base_model, model_args.method, model_args.num_labels) == ("facebook/sam-vit-base", "cad", 1)
    assert (model_args.cad_image_size, model_args.cad_scale, model_args.semantic_loss) == (512, 0.1, "bce_iou")
    assert data_args.benchmark == benchmark and benchmark in BENCHMARKS and data_args.data_dir == f"data/{benchmark}"
    assert (data_args.image_size, data_args.hflip, data_args.cache_embeddings) == (1024, 0.5, False)
    assert (train_args.learning_rate, train_args.weight_decay, train_args.lr_schedule) == (2e-4, 1e-2, "cosine")
    assert (train_args.batch_size, train_args.num_epochs) == (4, 20)
    assert train_args.metric_for_best_model == metric and train_args.output_dir == f"outputs/cad_{dataset}"


@pytest.mark.parametrize("path", ALL, ids=lambda path: path.stem)
def test_config_parses_with_known_keys_only(path):
    model_args, data_args, train_args = parse_args([str(path)])
    # every key of the file reached its dataclass field
    values = {**vars(model_args), **vars(data_args), **vars(train_args)}
    for key, value in yaml.safe_load(path.read_text()).items():
        if key == "base_model" and model_args.random_base is not None:  # a local folder: recorded absolutely
            value = str(Path(value).resolve())
        assert values[key] == value, key


@pytest.mark.parametrize("path", PAPER, ids=lambda path: path.stem)
def test_paper_config_common_settings(path):
    model_args, data_args, train_args = parse_args([str(path)])
    assert path.stem.startswith(f"{model_args.method}_")
    assert model_args.base_model == "facebook/sam-vit-huge"
    assert data_args.benchmark in BENCHMARKS and data_args.data_dir == f"data/{data_args.benchmark}"
    assert model_args.num_labels == BENCHMARKS[data_args.benchmark].num_labels
    assert data_args.hflip == 0.5 and data_args.eval_split == "validation" and data_args.image_size == 1024
    assert train_args.weight_decay == 1e-4 and train_args.batch_size == 4 and train_args.lr_schedule == "polynomial"
    assert train_args.output_dir == f"outputs/{path.stem}"
    metrics = SOD_METRIC_NAMES if model_args.num_labels == 1 else SEMANTIC_METRIC_NAMES
    assert train_args.metric_for_best_model in metrics
    if model_args.method != "decoder_only":
        assert (model_args.r, model_args.lora_alpha) == (3, 32)
    if model_args.method == "conv_lora":
        assert (model_args.num_experts, model_args.top_k) == (8, 1)
        assert model_args.moe_loss_weight == (1.0 if model_args.num_labels == 1 else 2.0)


@pytest.mark.parametrize("method", CONV_LORA_METHODS)
def test_paper_hyperparameters_per_task(method):
    expected = {
        # dataset: (benchmark, epochs, learning rate, metric_for_best_model, semantic_loss)
        "kvasir": ("kvasir", 30, 1e-4, "s_alpha", "structure"),
        "cvc612": ("cvc-clinicdb", 30, 1e-4, "s_alpha", "structure"),
        "isic2017": ("isic2017", 30, 1e-4, "iou", "structure"),
        "camouflage": ("sinet", 20, 1e-4, "s_alpha", "structure"),
        "sbu": ("sbu", 10, 1e-4, "ber", "balanced_bce"),
        "leaf": ("leaf", 30, 3e-4, "iou", "structure"),
        "road": ("roads", 20, 3e-4, "iou", "structure"),
        "trans10k_v1": ("trans10k-v1", 30, 1e-4, "mean_iou", "structure"),
        "trans10k_v2": ("trans10k-v2", 30, 1e-4, "mean_iou", "structure"),
    }
    for dataset, (benchmark, epochs, learning_rate, metric, loss) in expected.items():
        model_args, data_args, train_args = _parse(f"{method}_{dataset}")
        assert data_args.benchmark == benchmark, dataset
        assert train_args.num_epochs == epochs and train_args.learning_rate == learning_rate, dataset
        assert train_args.metric_for_best_model == metric and model_args.semantic_loss == loss, dataset


def test_spot_checks():
    model_args, _, train_args = _parse("conv_lora_leaf")
    assert train_args.learning_rate == 3e-4 and isinstance(train_args.learning_rate, float)
    model_args, _, train_args = _parse("conv_lora_sbu")
    assert train_args.num_epochs == 10 and model_args.semantic_loss == "balanced_bce"
    model_args, data_args, _ = _parse("conv_lora_trans10k_v2")
    assert model_args.num_labels == 12 and model_args.moe_loss_weight == 2.0 and data_args.benchmark == "trans10k-v2"
    model_args, _, _ = _parse("conv_lora_trans10k_v1")
    assert model_args.num_labels == 3 and model_args.moe_loss_weight == 2.0


def test_command_line_overrides_a_paper_config():
    _, data_args, train_args = parse_args(
        [str(CONFIGS / "lora_road.yaml"), "--data_dir", "/data/mass_roads", "--learning_rate", "1e-3"]
    )
    assert data_args.data_dir == "/data/mass_roads" and train_args.learning_rate == 1e-3
    assert train_args.num_epochs == 20


def test_an_unknown_key_is_named(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text((CONFIGS / "conv_lora_kvasir.yaml").read_text() + "learning_rat: 1.0e-3\n")
    with pytest.raises(ValueError, match="learning_rat"):
        parse_args([str(config)])


def test_the_embedding_cache_needs_a_frozen_encoder_method():
    with pytest.raises(ValueError, match="cache_embeddings needs a method that keeps the image encoder frozen"):
        parse_args([str(CONFIGS / "conv_lora_kvasir.yaml"), "--cache_embeddings"])
    _, data_args, _ = parse_args([str(CONFIGS / "cad_istd.yaml"), "--cache_embeddings"])
    assert data_args.cache_embeddings is True
    with pytest.raises(ValueError, match="Unknown embedding_cache_dtype 'int8'"):
        parse_args([str(CONFIGS / "cad_istd.yaml"), "--embedding_cache_dtype", "int8"])


SAM2_BASES = ("sam2.1-hiera-small", "sam2.1-hiera-base-plus")


@pytest.mark.parametrize("base", SAM2_BASES)
def test_sam_2_1_configs_are_the_papers_with_another_base_model(base):
    """`recipes/configs/<base>/` holds every paper config (Conv-LoRA's three methods and CAD's) on SAM 2.1: the
    same values as the SAM config it extends, but the base model and the output folder."""
    folder = CONFIGS / base
    assert {path.name for path in folder.glob("*.yaml")} == {path.name for path in PAPER + CAD}
    for path in sorted(folder.glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["extends"] == f"../{path.name}"
        derived = [vars(instance) for instance in parse_args([str(path)])]
        original = [vars(instance) for instance in parse_args([str(CONFIGS / path.name)])]
        assert derived[0].pop("base_model") == f"facebook/{base}" and original[0].pop("base_model").startswith("face")
        assert derived[2].pop("output_dir") == f"outputs/{base}/{path.stem}"
        original[2].pop("output_dir")
        assert derived == original, path.name


def test_extends_overrides_and_refuses_loops(tmp_path):
    (tmp_path / "parent.yaml").write_text((CONFIGS / "conv_lora_kvasir.yaml").read_text())
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\nlearning_rate: 3.0e-4\n")
    _, _, train_args = parse_args([str(tmp_path / "child.yaml"), "--num_epochs", "2"])
    assert (train_args.learning_rate, train_args.num_epochs, train_args.batch_size) == (3e-4, 2, 4)
    (tmp_path / "parent.yaml").write_text("extends: child.yaml\n")
    with pytest.raises(ValueError, match=r"parent.yaml extends .*child.yaml, which is already on its chain"):
        parse_args([str(tmp_path / "child.yaml")])
    (tmp_path / "parent.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml does not exist"):
        parse_args([str(tmp_path / "child.yaml")])
    (tmp_path / "parent.yaml").write_text("lerning_rate: 1\n")
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) in .*parent.yaml: lerning_rate"):
        parse_args([str(tmp_path / "child.yaml")])
