"""The training configuration: types and ranges of every field, the data source, and command-line overrides."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from sam_peft.training.arguments import DataArguments, ModelArguments, TrainArguments, parse_args


def exactly(message: str) -> str:
    """A `pytest.raises` pattern that matches `message` and nothing more."""
    return f"^{re.escape(message)}$"


@pytest.fixture
def config(tmp_path):
    """Writes a YAML config and returns its path, as the first item of an argv."""

    def write(text: str) -> str:
        path = tmp_path / "config.yaml"
        path.write_text(text)
        return str(path)

    return write


KVASIR = "benchmark: kvasir\ndata_dir: data/kvasir\nvalidation_fraction: 0.1\n"


# 1. types of YAML values


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("num_epochs: 1.5", "num_epochs must be an integer, got 1.5"),
        ("num_epochs: true", "num_epochs must be an integer, got True"),
        ("num_epochs: '3 epochs'", "num_epochs must be an integer, got '3 epochs'"),
        ("hflip: true", "hflip must be a number, got True"),
        ("learning_rate: fast", "learning_rate must be a number, got 'fast'"),
        ("seed: null", "seed must be an integer, got None"),
        ("max_steps: 2.5", "max_steps must be an integer or null, got 2.5"),
        ("max_grad_norm: false", "max_grad_norm must be a number or null, got False"),
        ("activation_checkpointing: 1", "activation_checkpointing must be true or false, got 1"),
        ("cache_embeddings: 'yes'", "cache_embeddings must be true or false, got 'yes'"),
        ("base_model: 12", "base_model must be a string, got 12"),
        ("benchmark: [kvasir]", "benchmark must be a string or null, got ['kvasir']"),
        ("method: null", "method must be a string, got None"),
    ],
)
def test_a_yaml_value_of_the_wrong_type_is_named(config, yaml_text, message):
    with pytest.raises(ValueError, match=exactly(message)):
        parse_args([config(yaml_text)])


def test_yaml_strings_and_ints_become_the_fields_numbers(config):
    # PyYAML reads 1e-4 (no dot) as a string; an int for a float field is a float
    text = "learning_rate: 1e-4\nnum_epochs: '3'\nlora_alpha: 16\nhflip: 1\nmax_steps: null\n"
    model_args, data_args, train_args = parse_args([config(text)])
    assert train_args.learning_rate == 1e-4 and isinstance(train_args.learning_rate, float)
    assert train_args.num_epochs == 3 and isinstance(train_args.num_epochs, int)
    assert model_args.lora_alpha == 16.0 and isinstance(model_args.lora_alpha, float)
    assert data_args.hflip == 1.0 and isinstance(data_args.hflip, float)
    assert train_args.max_steps is None


def test_fields_given_directly_are_checked_too():
    # recipes/continual.py builds DataArguments from the entries of its `domains` list
    assert DataArguments(hflip="0.25", max_train_samples="8").hflip == 0.25
    with pytest.raises(ValueError, match=exactly("max_train_samples must be an integer or null, got 8.0")):
        DataArguments(max_train_samples=8.0)
    with pytest.raises(ValueError, match=exactly("r must be an integer, got '3x'")):
        ModelArguments(r="3x")


# 2. ranges


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num_epochs", "0"], "num_epochs must be >= 1, got 0"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be >= 1, got 0"),
        (["--eval_every_epochs", "0"], "eval_every_epochs must be >= 1, got 0"),
        (["--batch_size", "0"], "batch_size must be >= 1, got 0"),
        (["--eval_batch_size", "-2"], "eval_batch_size must be >= 1, got -2"),
        (["--max_steps", "0"], "max_steps must be >= 1, got 0 (use null for no limit)"),
        (["--learning_rate", "0"], "learning_rate must be > 0, got 0.0"),
        (["--weight_decay", "-0.1"], "weight_decay must be >= 0, got -0.1"),
        (["--warmup_steps", "-1"], "warmup_steps must be >= 0, got -1"),
        (["--max_grad_norm", "0"], "max_grad_norm must be > 0, got 0.0 (use null to disable clipping)"),
        (["--mixed_precision", "fp8"], "Unknown mixed_precision 'fp8'; expected no, fp16 or bf16."),
        (["--hflip", "1.5"], "hflip must be in [0, 1], got 1.5"),
        (["--hflip", "-0.1"], "hflip must be in [0, 1], got -0.1"),
        (["--validation_fraction", "0"], "validation_fraction must be in (0, 1), got 0.0"),
        (["--validation_fraction", "1"], "validation_fraction must be in (0, 1), got 1.0"),
        (["--image_size", "0"], "image_size must be >= 1, got 0"),
        (["--num_workers", "-1"], "num_workers must be >= 0, got -1"),
        (["--synthetic_train_size", "0"], "synthetic_train_size must be >= 1, got 0"),
        (["--synthetic_eval_size", "0"], "synthetic_eval_size must be >= 1, got 0"),
        (["--max_train_samples", "0"], "max_train_samples must be >= 1, got 0"),
        (["--max_eval_samples", "0"], "max_eval_samples must be >= 1, got 0"),
        (["--num_labels", "0"], "num_labels must be >= 1, got 0"),
        (["--r", "0"], "r must be >= 1, got 0"),
        (["--num_experts", "0"], "num_experts must be >= 1, got 0"),
        (["--top_k", "0"], "top_k must be between 1 and num_experts (8), got 0"),
        (["--num_experts", "2", "--top_k", "3"], "top_k must be between 1 and num_experts (2), got 3"),
        (["--cad_image_size", "0"], "cad_image_size must be >= 1, got 0"),
        (["--checkpoint_every_steps", "0"], "checkpoint_every_steps must be >= 1, got 0"),
    ],
)
def test_a_value_out_of_range_is_named(argv, message):
    with pytest.raises(ValueError, match=exactly(message)):
        parse_args(argv)


def test_the_ends_of_the_ranges_are_accepted(config):
    text = "hflip: 0\nweight_decay: 0\nwarmup_steps: 0\nnum_workers: 0\nmax_steps: 1\nnum_experts: 2\ntop_k: 2\n"
    model_args, data_args, train_args = parse_args([config(text), "--validation_fraction", "0.99"])
    assert (data_args.hflip, data_args.num_workers, data_args.validation_fraction) == (0.0, 0, 0.99)
    assert (train_args.weight_decay, train_args.warmup_steps, train_args.max_steps) == (0.0, 0, 1)
    assert (model_args.num_experts, model_args.top_k) == (2, 2)


def test_the_existing_checks_still_apply():
    with pytest.raises(
        ValueError, match=exactly("Unknown lr_schedule 'linear'; expected polynomial, cosine or constant.")
    ):
        parse_args(["--lr_schedule", "linear"])
    with pytest.raises(ValueError, match=exactly("push_to_hub needs hub_model_id (e.g. 'user/sam-conv-lora-kvasir').")):
        parse_args(["--push_to_hub"])


# 3. checkpoint_every_steps


def test_checkpoint_every_steps(config):
    names = [field.name for field in fields(TrainArguments)]
    assert names[names.index("eval_every_epochs") + 1] == "checkpoint_every_steps"
    assert parse_args([])[2].checkpoint_every_steps is None
    assert parse_args(["--checkpoint_every_steps", "500"])[2].checkpoint_every_steps == 500
    assert parse_args([config("checkpoint_every_steps: 20")])[2].checkpoint_every_steps == 20
    with pytest.raises(ValueError, match=exactly("checkpoint_every_steps must be an integer or null, got 0.5")):
        parse_args([config("checkpoint_every_steps: 0.5")])


# 4. the data source


def sources(data_args: DataArguments) -> tuple:
    return data_args.benchmark, data_args.data_dir, data_args.image_dir, data_args.mask_dir, data_args.hub_dataset


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--image_dir", "imgs", "--mask_dir", "masks"], (None, None, "imgs", "masks", None)),
        (["--image-dir=imgs", "--mask-dir", "masks"], (None, None, "imgs", "masks", None)),
        (["--hub_dataset=user/polyps"], (None, None, None, None, "user/polyps")),
        (["--benchmark", "cvc-clinicdb"], ("cvc-clinicdb", None, None, None, None)),
        (["--benchmark", "cvc-clinicdb", "--data_dir", "/data/cvc"], ("cvc-clinicdb", "/data/cvc", None, None, None)),
        (["--benchmark", "null", "--hub_dataset", "user/polyps"], (None, None, None, None, "user/polyps")),
    ],
)
def test_a_command_line_source_replaces_the_yamls(config, argv, expected):
    _, data_args, _ = parse_args([config(KVASIR), *argv])
    assert sources(data_args) == expected
    assert data_args.validation_fraction == 0.1  # the YAML's other data keys stay


def test_data_dir_on_the_command_line_completes_the_yamls_benchmark(config):
    _, data_args, _ = parse_args([config(KVASIR), "--data_dir", "/data/kvasir"])
    assert sources(data_args) == ("kvasir", "/data/kvasir", None, None, None)


def test_a_yaml_folder_source_is_replaced_by_a_command_line_benchmark(config):
    _, data_args, _ = parse_args([config("image_dir: imgs\nmask_dir: masks\n"), "--benchmark", "synthetic"])
    assert sources(data_args) == ("synthetic", None, None, None, None)


@pytest.mark.parametrize(
    ("yaml_text", "argv", "given"),
    [
        (KVASIR + "hub_dataset: user/polyps\n", [], "benchmark='kvasir', hub_dataset='user/polyps'"),
        (KVASIR + "image_dir: imgs\n", [], "benchmark='kvasir', image_dir='imgs'"),
        ("", ["--benchmark", "kvasir", "--mask_dir", "masks"], "benchmark='kvasir', mask_dir='masks'"),
        (
            KVASIR,
            ["--image_dir", "i", "--mask_dir", "m", "--hub_dataset", "u/d"],
            "image_dir='i', mask_dir='m', hub_dataset='u/d'",
        ),
    ],
)
def test_two_data_sources_are_refused(config, yaml_text, argv, given):
    message = (
        f"More than one data source: {given}; name one of benchmark (with data_dir), image_dir and mask_dir, "
        "or hub_dataset."
    )
    with pytest.raises(ValueError, match=exactly(message)):
        parse_args([config(yaml_text), *argv])


def test_two_data_sources_given_directly_are_refused():
    # recipes/continual.py builds DataArguments from the entries of its `domains` list
    with pytest.raises(ValueError, match="More than one data source: benchmark='kvasir', hub_dataset='u/d'; "):
        DataArguments(benchmark="kvasir", hub_dataset="u/d")


def test_no_data_source_is_left_to_the_data_loader():
    assert sources(parse_args([])[1]) == (None, None, None, None, None)


# 5. null on the command line


def test_null_on_the_command_line_is_none_where_the_field_admits_it(config):
    argv = [config(KVASIR + "max_steps: 10\nimage_size: 512\nreport_to: tensorboard\n")]
    argv += ["--max_steps", "null", "--image_size", "None", "--report_to", "none", "--max_grad_norm", "null"]
    argv += ["--benchmark", "null"]
    _, data_args, train_args = parse_args(argv)
    assert (train_args.max_steps, train_args.report_to, train_args.max_grad_norm) == (None, None, None)
    assert (data_args.image_size, data_args.benchmark, data_args.data_dir) == (None, None, None)
    # a field that does not admit None keeps the string
    assert parse_args(["--base_model", "null"])[0].base_model == "null"


def test_an_unknown_command_line_argument_is_named():
    with pytest.raises(ValueError, match=exactly("Unknown command-line argument(s): extra")):
        parse_args(["--num_epochs", "2", "extra"])


def test_a_local_base_model_is_recorded_absolutely(tmp_path, monkeypatch):
    """A relative local folder (existing, or one random_base creates) becomes absolute; a Hub id stays as it is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "sam").mkdir(parents=True)
    model_args, _, _ = parse_args(["--base_model", "models/sam"])
    assert model_args.base_model == str(tmp_path / "models" / "sam")
    model_args, _, _ = parse_args(["--base_model", "new/base", "--random_base", "tiny"])
    assert model_args.base_model == str(tmp_path / "new" / "base")
    model_args, _, _ = parse_args(["--base_model", "facebook/sam-vit-base"])
    assert model_args.base_model == "facebook/sam-vit-base"
