"""Every method of the registry in the training recipe's model: sam-peft's tuners, peft's own methods through a
`peft_config` mapping, and the partial fine-tunings of the base model's own weights. Each builds on the tiny SAM,
trains exactly the parameters it names (checked against sets computed here from the parameter names), lowers the
loss in a few steps, and reloads from its run folder to identical outputs; the arguments say what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from prompted_checks import train_prompted

from sam_peft import SamForSemanticSegmentation
from sam_peft.data import binary_dataset, instance_dataset, prepare_for_sam, sam_collate_fn
from sam_peft.data.prompted import prepare_objects_for_sam, sam_objects_collate_fn
from sam_peft.hub import adapter_model_card
from sam_peft.modeling import input_image_size, random_sam
from sam_peft.modeling.methods import METHODS, adapter_peft_type, make_peft_config
from sam_peft.training import (
    InteractiveTraining,
    InteractiveTrainingConfig,
    PromptSeeds,
    build_model,
    load_trained,
    parse_args,
    save_trained,
    write_run_file,
)
from sam_peft.training.arguments import TRAINED_METHODS, ModelArguments
from sam_peft.training.builders import check_embedding_cache
from sam_peft.training.checkpoints import DECODER_FILE, RUN_FILE
from sam_peft.training.run_folder import run_config

SIZE = 128  # the tiny SAM's input size: 4 ViT blocks of width 32, fused qkv (96 x 32), MLP 32 -> 64 -> 32
BLOCKS = 4
PARTIAL = ("decoder_only", "bias_only", "norm_only", "attention_only", "last_blocks", "full")

# (id, model arguments) of every method the recipe trains, and of peft's methods worth checking on SAM
CASES = [
    ("conv_lora", {"method": "conv_lora"}),
    ("lora", {"method": "lora"}),
    ("lora-last-block", {"method": "lora", "last_blocks": 1}),
    ("cad", {"method": "cad", "cad_image_size": 64}),
    ("sam_adapter", {"method": "sam_adapter"}),
    ("slora", {"method": "slora", "r": 4}),  # its learned constant prompt, without points
    ("decoder_only", {"method": "decoder_only"}),
    ("bias_only", {"method": "bias_only"}),
    ("norm_only", {"method": "norm_only"}),
    ("attention_only", {"method": "attention_only"}),
    ("last_blocks", {"method": "last_blocks", "last_blocks": 1}),
    ("full", {"method": "full"}),
    ("peft-lora", {"method": "peft", "peft_config": {"peft_type": "LORA", "r": 4}}),
    ("peft-dora", {"method": "peft", "peft_config": {"peft_type": "LORA", "r": 4, "use_dora": True}}),
    ("peft-ia3", {"method": "peft", "peft_config": {"peft_type": "IA3"}}),
    ("peft-ia3-last-blocks", {"method": "peft", "peft_config": {"peft_type": "IA3"}, "last_blocks": 2}),
    ("peft-loha", {"method": "peft", "peft_config": {"peft_type": "LOHA", "r": 4}}),
    ("peft-lokr", {"method": "peft", "peft_config": {"peft_type": "LOKR", "r": 4}}),
    ("peft-vera", {"method": "peft", "peft_config": {"peft_type": "VERA", "r": 8}}),
    ("peft-boft", {"method": "peft", "peft_config": {"peft_type": "BOFT", "boft_block_size": 4}}),
    ("peft-ln-tuning", {"method": "peft", "peft_config": {"peft_type": "LN_TUNING"}}),
]


def test_the_cases_cover_every_method_the_recipe_trains():
    assert {values["method"] for _, values in CASES} == set(TRAINED_METHODS)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("base") / "tiny"
    random_sam("tiny", seed=0).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def base_names(base) -> list[str]:
    """The parameter names of the tiny prompt-free SAM, as the partial methods select them."""
    return [name for name, _ in SamForSemanticSegmentation.from_pretrained(base).named_parameters()]


@pytest.fixture(scope="module")
def batch():
    data = prepare_for_sam(binary_dataset(2, size=SIZE, seed=0), SIZE, augmentation=None)
    return sam_collate_fn([data[i] for i in range(2)])


def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _train(model, batch, steps: int = 4) -> list[float]:
    """`steps` AdamW steps on the batch; every trained parameter must get a gradient at the first."""
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-2, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        outputs = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
        outputs.loss.backward()
        if step == 0:  # several processes need a gradient for every trained weight
            assert all(p.grad is not None for p in trained)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(outputs.loss.item())
    return losses


@pytest.mark.parametrize("values", [values for _, values in CASES], ids=[name for name, _ in CASES])
def test_each_method_trains_lowers_the_loss_and_reloads_identically(values, base, batch, tmp_path):
    args = ModelArguments(base_model=base, **values)
    torch.manual_seed(0)
    model = build_model(args)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    losses = _train(model, batch)
    assert losses[-1] < losses[0], losses
    # the method's own weights train, not the mask decoder alone
    encoder = [name for name in before if "mask_decoder" not in name]
    assert (not encoder) == (args.method == "decoder_only")
    changed = [name for name in encoder if not torch.equal(before[name], model.get_parameter(name))]
    assert not encoder or changed

    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=batch["pixel_values"]).logits
    save_trained(model, tmp_path)
    write_run_file(tmp_path, args, SIZE)
    if isinstance(model, PeftModel):
        assert (tmp_path / "adapter_config.json").is_file()
    else:  # the trained weights of the base model, by name
        from safetensors.torch import load_file

        assert set(load_file(tmp_path / DECODER_FILE)) == _trainable(model)
    torch.manual_seed(1)  # another draw for any weight that the file would fail to restore
    reloaded = load_trained(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=batch["pixel_values"]).logits, expected)


def _decoder(names) -> set[str]:
    return {name for name in names if name.startswith("mask_decoder.")}


def _encoder(names) -> list[str]:
    return [name for name in names if name.startswith("vision_encoder.")]


# what each partial method trains besides the mask decoder, by name (the tiny SAM's encoder: layers.<i>, neck)
EXPECTED_PARTIAL = {
    "decoder_only": lambda names: set(),
    "bias_only": lambda names: {n for n in _encoder(names) if n.endswith(".bias")},
    "norm_only": lambda names: {n for n in _encoder(names) if re.search(r"\.layer_norm\d\.(weight|bias)$", n)},
    "attention_only": lambda names: {
        n for n in _encoder(names) if re.fullmatch(r"vision_encoder\.layers\.\d\.attn\.(qkv|proj)\.(weight|bias)", n)
    },
    "last_blocks": lambda names: {n for n in _encoder(names) if n.startswith(f"vision_encoder.layers.{BLOCKS - 1}.")},
    "full": lambda names: set(_encoder(names)),
}


@pytest.mark.parametrize("method", PARTIAL)
def test_a_partial_method_trains_exactly_its_weights_and_the_mask_decoder(method, base, base_names):
    extra = {"last_blocks": 1} if method == "last_blocks" else {}
    model = build_model(ModelArguments(base_model=base, method=method, **extra))
    assert not isinstance(model, PeftModel)
    expected = _decoder(base_names) | EXPECTED_PARTIAL[method](base_names)
    assert _trainable(model) == expected
    assert method == "decoder_only" or expected - _decoder(base_names)
    # every trained weight of the encoder is the base model's own: nothing is added
    assert [name for name, _ in model.named_parameters()] == base_names


def test_the_partial_selections_are_what_their_names_say(base, base_names):
    selected = {
        method: _trainable(
            build_model(
                ModelArguments(base_model=base, method=method, last_blocks=2 if method == "last_blocks" else None)
            )
        )
        - _decoder(base_names)
        for method in PARTIAL
    }
    assert all(name.endswith(".bias") for name in selected["bias_only"])
    assert any(".qkv.bias" in name for name in selected["bias_only"]) and any(
        ".neck.layer_norm1.bias" in name for name in selected["bias_only"]
    )
    assert selected["norm_only"] >= {
        "vision_encoder.neck.layer_norm2.weight",
        "vision_encoder.layers.0.layer_norm1.bias",
    }
    assert not any("rel_pos" in name for name in selected["attention_only"])  # the attention's layers only
    assert {int(name.split(".")[2]) for name in selected["last_blocks"]} == {BLOCKS - 2, BLOCKS - 1}
    assert selected["full"] == set(_encoder(base_names))
    assert all(selected[m] < selected["full"] for m in ("bias_only", "norm_only", "attention_only", "last_blocks"))


def _adapter_weights(model) -> dict[str, tuple[int, ...]]:
    """The adapter's own trainable weights (the mask decoder's copies left out), by name after `base_model.model.`."""
    prefix = "base_model.model."
    return {
        name.removeprefix(prefix): tuple(p.shape)
        for name, p in model.named_parameters()
        if p.requires_grad and ".modules_to_save." not in name
    }


@pytest.mark.parametrize(
    ("values", "blocks"),
    [
        ({"method": "lora"}, range(BLOCKS)),
        ({"method": "lora", "last_blocks": 1}, [BLOCKS - 1]),
        ({"method": "peft", "peft_config": {"peft_type": "LORA", "r": 2}}, range(BLOCKS)),
        ({"method": "peft", "peft_config": {"peft_type": "LORA", "r": 2}, "last_blocks": 3}, range(1, BLOCKS)),
    ],
)
def test_lora_adapts_the_qkv_of_the_chosen_blocks_and_saves_the_decoder(values, blocks, base, base_names):
    model = build_model(ModelArguments(base_model=base, **values))
    r = values.get("peft_config", {}).get("r", 3)
    expected = {}
    for i in blocks:
        expected[f"vision_encoder.layers.{i}.attn.qkv.lora_A.default.weight"] = (r, 32)
        expected[f"vision_encoder.layers.{i}.attn.qkv.lora_B.default.weight"] = (96, r)
    assert _adapter_weights(model) == expected
    saved = {name for name in _trainable(model) if ".modules_to_save." in name}
    assert saved == {f"base_model.model.mask_decoder.modules_to_save.default.{n[13:]}" for n in _decoder(base_names)}


def test_ia3_scales_the_qkv_output_and_the_mlp_inner_activations(base):
    # (IA)^3's paper: keys and values at their output, the feed-forward layer (the MLP's second) at its input
    model = build_model(ModelArguments(base_model=base, method="peft", peft_config={"peft_type": "IA3"}, last_blocks=2))
    expected = {}
    for i in (2, 3):
        expected[f"vision_encoder.layers.{i}.attn.qkv.ia3_l.default"] = (96, 1)
        expected[f"vision_encoder.layers.{i}.mlp.lin2.ia3_l.default"] = (1, 64)
    assert _adapter_weights(model) == expected
    # targets of one's own: none of them is a feed-forward module unless named
    own = {"peft_type": "IA3", "target_modules": ["attn.proj"]}
    model = build_model(ModelArguments(base_model=base, method="peft", peft_config=own))
    assert set(_adapter_weights(model).values()) == {(32, 1)}
    assert model.peft_config["default"].feedforward_modules == set()


def test_the_peft_config_is_built_by_peft_and_left_untouched(base):
    mapping = {"peft_type": "lora", "r": 8, "use_dora": True, "lora_dropout": "1e-1", "modules_to_save": ["x"]}
    args = ModelArguments(base_model=base, method="peft", peft_config=mapping)
    config = make_peft_config(args.peft_config, args, SamForSemanticSegmentation.from_pretrained(base))
    assert type(config).__name__ == "LoraConfig" and config.use_dora and config.r == 8
    assert config.lora_dropout == 0.1  # YAML's `1e-1` is a string
    assert config.target_modules == r"vision_encoder\.layers\.\d+\.attn\.qkv"
    assert config.modules_to_save == ["mask_decoder", "x"]
    assert args.peft_config == {
        "peft_type": "lora",
        "r": 8,
        "use_dora": True,
        "lora_dropout": "1e-1",
        "modules_to_save": ["x"],
    }
    assert adapter_peft_type(args) == "LORA"
    assert adapter_peft_type(ModelArguments(method="bias_only")) == "BIAS_ONLY"


# Arguments and errors


def _write(path: Path, values: dict) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_peft_config_travels_from_the_yaml_to_the_run_record(tmp_path, base, batch):
    peft_config = {"peft_type": "LOKR", "r": 4, "alpha": 8}
    _write(tmp_path / "parent.yaml", {"base_model": base, "method": "peft", "peft_config": peft_config})
    config = _write(tmp_path / "run.yaml", {"extends": "parent.yaml", "last_blocks": 2})
    model_args, data_args, train_args = parse_args([config, "--benchmark", "synthetic", "--r", "5"])
    assert (model_args.peft_config, model_args.last_blocks) == (peft_config, 2)
    # the run's configuration (what resuming compares) holds it, unchanged by a trip through JSON
    recorded = run_config(model_args, data_args, train_args, 1)
    assert recorded["model"]["peft_config"] == peft_config and json.loads(json.dumps(recorded)) == recorded
    model = build_model(model_args)
    adapter = model.peft_config["default"]
    assert adapter.peft_type.value == "LOKR" and adapter.alpha == 8
    assert adapter.target_modules == r"vision_encoder\.layers\.(2|3)\.attn\.qkv"
    _train(model, batch, steps=2)
    save_trained(model, tmp_path / "run")
    write_run_file(tmp_path / "run", model_args, SIZE)
    assert json.loads((tmp_path / "run" / RUN_FILE).read_text())["model"]["peft_config"] == peft_config
    reloaded = load_trained(tmp_path / "run")
    assert reloaded.peft_config["default"].target_modules == adapter.target_modules
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=batch["pixel_values"]).logits
        assert torch.equal(reloaded(pixel_values=batch["pixel_values"]).logits, expected)


def test_peft_config_is_a_yaml_mapping_only(tmp_path):
    with pytest.raises(ValueError, match=r"peft_config is a mapping of the YAML config file; it cannot be given on"):
        parse_args(["--method", "peft", "--peft_config", "{peft_type: LORA}"])
    config = _write(tmp_path / "c.yaml", {"method": "peft", "peft_config": "LORA"})
    with pytest.raises(ValueError, match=r"peft_config must be a mapping .*got 'LORA'"):
        parse_args([config])


def test_an_unknown_method_lists_every_method_of_the_recipe():
    with pytest.raises(ValueError, match="Unknown method 'unknown'; expected one of") as error:
        parse_args(["--method", "unknown"])
    for name in (*PARTIAL, "peft", "lora", "conv_lora", "cad", "sam_adapter"):
        assert repr(name) in str(error.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "peft"}, r"method peft needs peft_config: a mapping .* peft_type \(one of .*LORA"),
        (
            {"method": "lora", "peft_config": {"peft_type": "LORA"}},
            r"peft_config applies to method peft; this run's method is lora",
        ),
        ({"method": "peft", "peft_config": {"r": 4}}, r"peft_config needs a peft_type: one of .*IA3"),
        (
            {"method": "peft", "peft_config": {"peft_type": "DORA"}},
            r"Unknown peft_type 'DORA' in peft_config; expected one of ADAMSS, .*LORA, .*VERA",
        ),
        (
            {"method": "peft", "peft_config": {"peft_type": "LORA", "rank": 4, "alpha": 1}},
            r"LoraConfig \(LORA\) has no field 'alpha', 'rank'",
        ),
        (
            {"method": "peft", "peft_config": {"peft_type": "OFT"}},
            r"peft_type OFT is not available: its layers read .*\(batch, height, width, channels\)",
        ),
        (
            {"method": "peft", "peft_config": {"peft_type": "ADALORA"}},
            r"peft_type ADALORA is not available: .*update_and_allocate",
        ),
        (
            {"method": "peft", "peft_config": {"peft_type": "CONV_LORA"}},
            r"CONV_LORA is sam-peft's Conv-LoRA: use method: conv_lora",
        ),
        (
            {"method": "peft", "peft_config": {"peft_type": "LORA", "layers_pattern": "layers"}},
            r"peft_config \(LORA, LoraConfig\) is refused by peft: When `layers_pattern` is specified",
        ),
        ({"method": "last_blocks"}, r"method last_blocks needs last_blocks: how many"),
        ({"method": "last_blocks", "last_blocks": 0}, r"last_blocks must be >= 1, got 0"),
        (
            {"method": "bias_only", "last_blocks": 2},
            r"last_blocks applies to method lora, peft or last_blocks; this run's method is bias_only",
        ),
    ],
)
def test_method_arguments_are_checked_as_they_are_parsed(values, message):
    with pytest.raises(ValueError, match=message):
        ModelArguments(**values)


def test_errors_that_need_the_model(base):
    with pytest.raises(
        ValueError, match=rf"last_blocks must be between 1 and the image encoder's {BLOCKS} blocks, got 5"
    ):
        build_model(ModelArguments(base_model=base, method="last_blocks", last_blocks=BLOCKS + 1))
    with pytest.raises(ValueError, match=rf"between 1 and the image encoder's {BLOCKS} blocks, got 9"):
        build_model(ModelArguments(base_model=base, method="lora", last_blocks=9))
    own = {"peft_type": "LORA", "target_modules": ["attn.qkv"]}
    with pytest.raises(ValueError, match=r"last_blocks restricts the default targets .* target_modules of your own"):
        build_model(ModelArguments(base_model=base, method="peft", peft_config=own, last_blocks=1))
    layers = {"peft_type": "LORA", "layers_to_transform": [3]}
    with pytest.raises(ValueError, match=r"layers_to_transform needs target_modules of your own, as a list"):
        build_model(ModelArguments(base_model=base, method="peft", peft_config=layers))
    # with a list of names, peft's own layers_to_transform works
    model = build_model(
        ModelArguments(base_model=base, method="peft", peft_config={**layers, "target_modules": ["attn.qkv"]})
    )
    assert {name.split(".")[2] for name in _adapter_weights(model)} == {"3"}


def test_only_frozen_encoder_methods_may_cache_embeddings(base):
    assert {name for name in TRAINED_METHODS if METHODS[name].frozen_encoder} == {"cad", "decoder_only"}
    with pytest.raises(ValueError, match=r"cache_embeddings needs .* \(cad, decoder_only\); bias_only changes"):
        parse_args(["--method", "bias_only", "--cache_embeddings", "true"])
    # the builders' check holds for a model built directly
    from sam_peft.training.arguments import DataArguments

    model = build_model(ModelArguments(base_model=base, method="norm_only"))
    with pytest.raises(ValueError, match=r"needs a frozen image encoder; this one trains 'layers\.0\.layer_norm1"):
        check_embedding_cache(DataArguments(cache_embeddings=True), model, SIZE)


@pytest.mark.parametrize("name", [name for name in METHODS if name in TRAINED_METHODS])
def test_each_method_has_its_card(name):
    method = METHODS[name]
    card = adapter_model_card(base_model="facebook/sam-vit-base", peft_type=method.peft_type, adapter_id="me/run")
    assert method.title in card.text and method.description in card.text
    assert set(method.required) <= set(method.hyperparameters)


# The prompted task and the later generations


@pytest.fixture(scope="module")
def objects():
    data = PromptSeeds(prepare_objects_for_sam(instance_dataset(2, seed=0), SIZE, augmentation=None))
    return sam_objects_collate_fn([data[i] for i in range(2)])


@pytest.mark.parametrize(
    "values",
    [
        {"method": "peft", "peft_config": {"peft_type": "LORA", "r": 4}},
        {"method": "bias_only"},
        {"method": "last_blocks", "last_blocks": 1},
    ],
    ids=["peft-lora", "bias_only", "last_blocks"],
)
def test_the_prompted_task_trains_the_method_and_the_mask_decoder(values, base, objects, tmp_path):
    args = ModelArguments(base_model=base, task="prompted", **values)
    torch.manual_seed(0)
    model = build_model(args)
    trained = _trainable(model)
    assert any("mask_decoder" in name for name in trained) and any("vision_encoder" in name for name in trained)
    assert not any("prompt_encoder" in name or "shared_image_embedding" in name for name in trained)
    if values["method"] == "bias_only":
        encoder = {name for name in trained if not name.startswith("mask_decoder.")}
        assert encoder and all(name.startswith("vision_encoder.") and name.endswith(".bias") for name in encoder)
    training = InteractiveTraining(model, InteractiveTrainingConfig(num_correction_clicks=1, box_probability=0.5))
    losses = train_prompted(training, objects, steps=6)
    assert losses[-1] < losses[0], losses
    save_trained(model, tmp_path)
    write_run_file(tmp_path, args, SIZE)
    reloaded = load_trained(tmp_path)
    model.eval()
    prompts = {"pixel_values": objects["pixel_values"], "input_boxes": torch.tensor([[[8.0, 8.0, 96.0, 80.0]]] * 2)}
    with torch.no_grad():
        expected = model(**prompts)
        outputs = reloaded(**prompts)
    assert torch.equal(outputs.pred_masks, expected.pred_masks) and torch.equal(outputs.iou_scores, expected.iou_scores)


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
def test_partial_methods_and_peft_on_sam2_and_sam3(variant, tmp_path):
    random_sam(variant, seed=0).save_pretrained(tmp_path)
    size = input_image_size(random_sam(variant, seed=0).config)
    data = prepare_for_sam(binary_dataset(2, size=size, seed=0), size, augmentation=None)
    batch = sam_collate_fn([data[i] for i in range(2)])
    blocks = {"sam2-tiny": "vision_encoder.backbone.blocks.", "sam3-tiny": "vision_encoder.backbone.layers."}[variant]
    cases = [
        {"method": "bias_only"},
        {"method": "norm_only"},
        {"method": "attention_only"},
        {"method": "last_blocks", "last_blocks": 1},
        {"method": "full"},
        {"method": "peft", "peft_config": {"peft_type": "IA3"}, "last_blocks": 1},
    ]
    for values in cases:
        model = build_model(ModelArguments(base_model=str(tmp_path), **values))
        own = {name for name in _trainable(model) if "mask_decoder" not in name}
        assert own and all("vision_encoder." in name for name in own), values
        if "last_blocks" in values:
            indices = {int(name.split(blocks)[1].split(".")[0]) for name in own}
            assert len(indices) == 1, (values, indices)
        model.train()
        model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad), values
