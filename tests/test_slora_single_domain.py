"""SLoRA for one domain in the training recipe: the learned constant prompt of prompt-free use (identity at start,
trained, saved and loaded, added to the points' heat map, every generation), the recipe's SLoRA config, prompted
training and interactive evaluation that give the encoder each image's first prompts as a heat map (checked against
an independent recomputation), prompted prediction, and activation checkpointing with those heat maps."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from test_slora_official import randomised  # every SLoRA weight drawn, so each part shows
from torch.utils.data import DataLoader
from transformers import PretrainedConfig

from sam_peft.data import binary_dataset, instance_dataset, prepare_for_sam, sam_collate_fn
from sam_peft.data.prompted import prepare_objects_for_sam, sam_objects_collate_fn
from sam_peft.data.prompts import next_click
from sam_peft.modeling import SamForSemanticSegmentation, random_sam
from sam_peft.modeling.methods import get_method
from sam_peft.modeling.prompted import promptable_class
from sam_peft.prompted_prediction import predict_prompted
from sam_peft.training import InteractiveTraining, InteractiveTrainingConfig, PromptSeeds, evaluate_interactive
from sam_peft.tuners.slora import (
    SloraConfig,
    encoder_prompts,
    object_points_by_image,
    points_to_heat_map,
    slora_tuner,
    uses_prompt_heat_maps,
)

SIZE, GRID = 128, 16  # the tiny SAM's input and embedding grid
POINTS = torch.tensor([[[[40.0, 70.0], [100.0, 20.0]]], [[[3.0, 90.0], [64.0, 64.0]]]])
LABELS = torch.tensor([[[1, 1]], [[1, 0]]])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    random_sam("tiny", seed=0).save_pretrained(folder)
    return folder


def semantic(base_dir) -> SamForSemanticSegmentation:
    return SamForSemanticSegmentation.from_pretrained(base_dir)


def learned(model: PeftModel, adapter: str = "default") -> torch.nn.Parameter:
    return model.base_model.slora_learned_prompt[adapter].heat_map


# ------------------------------------------------------------------------------------------------ learned prompt


def test_learned_prompt_is_off_by_default_and_needs_the_prompt_path():
    assert SloraConfig().learned_prompt is False
    with pytest.raises(ValueError, match="learned_prompt feeds a learned heat map into the prompt path"):
        SloraConfig(learned_prompt=True, prompt_augmentation=False)
    with pytest.raises(ValueError, match="learned_prompt must be True or False"):
        SloraConfig(learned_prompt="yes")


def test_a_fresh_learned_prompt_is_zero_and_leaves_the_model_unchanged(base_dir, pixel_values):
    model = get_peft_model(semantic(base_dir), SloraConfig(r=4, learned_prompt=True)).eval()
    assert learned(model).shape == (GRID, GRID) and not learned(model).any() and learned(model).requires_grad
    with torch.no_grad():
        assert torch.equal(
            model(pixel_values=pixel_values).logits, semantic(base_dir)(pixel_values=pixel_values).logits
        )
    sam = get_peft_model(random_sam("tiny", seed=0), SloraConfig(r=4, learned_prompt=True)).eval()
    with torch.no_grad():
        for prompts in ({}, {"input_points": POINTS, "input_labels": LABELS}):
            expected = random_sam("tiny", seed=0)(pixel_values=pixel_values, **prompts).pred_masks
            assert torch.equal(sam(pixel_values=pixel_values, **prompts).pred_masks, expected)


def test_the_learned_prompt_is_added_to_each_forwards_heat_map(pixel_values):
    model = randomised(get_peft_model(random_sam("tiny", seed=0), SloraConfig(r=4, learned_prompt=True))).eval()
    tuner, prompt = model.base_model, learned(model).detach().clone()
    encoder = tuner.model.vision_encoder
    heat_map = points_to_heat_map(POINTS, LABELS, SIZE, GRID)
    with torch.no_grad():
        without_points = encoder(pixel_values).last_hidden_state
        with tuner.prompts(POINTS, LABELS):
            with_points = encoder(pixel_values).last_hidden_state
        learned(model).zero_()  # the same model without its learned prompt, given the sums as heat maps
        with tuner.prompt_heat_map(prompt.expand(2, -1, -1)):
            torch.testing.assert_close(encoder(pixel_values).last_hidden_state, without_points, rtol=0, atol=1e-5)
        with tuner.prompt_heat_map(heat_map + prompt):
            torch.testing.assert_close(encoder(pixel_values).last_hidden_state, with_points, rtol=0, atol=1e-5)
        assert not torch.allclose(encoder(pixel_values).last_hidden_state, without_points, atol=1e-4)


def test_the_learned_prompt_trains_after_the_first_step_and_changes_the_output(base_dir, pixel_values):
    torch.manual_seed(0)
    model = get_peft_model(semantic(base_dir), SloraConfig(r=4, learned_prompt=True)).train()
    labels = (pixel_values[:, 0] > 0).long()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    grads = []
    for _ in range(3):
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        grads.append(learned(model).grad.clone())
        optimizer.step()
        optimizer.zero_grad()
    # B and the neck projections start at zero: nothing reaches the prompt before they move (as LoRA's A)
    assert not grads[0].any() and grads[1].count_nonzero() > GRID * GRID // 2 and grads[2].any()
    assert learned(model).abs().max() > 0
    model.eval()
    with torch.no_grad():
        trained = model(pixel_values=pixel_values).logits
        learned(model).zero_()
        assert not torch.allclose(model(pixel_values=pixel_values).logits, trained, atol=1e-5)


@pytest.mark.parametrize("variant", ["tiny", "sam2-tiny", "sam3-tiny"])
def test_the_learned_prompt_is_saved_and_loaded(variant, tmp_path):
    model = randomised(get_peft_model(random_sam(variant, seed=0), SloraConfig(r=4, learned_prompt=True))).eval()
    grid = model.base_model.grid_size
    assert learned(model).shape == (grid, grid)
    size = model.base_model.prompt_input_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved["base_model.slora_learned_prompt.heat_map"].shape == (grid, grid)
    loaded = PeftModel.from_pretrained(random_sam(variant, seed=0), tmp_path).eval()
    assert loaded.peft_config["default"].learned_prompt is True
    assert torch.equal(learned(loaded), learned(model))
    with torch.no_grad():
        expected = model(pixel_values=pixels, multimask_output=False).pred_masks
        assert torch.equal(loaded(pixel_values=pixels, multimask_output=False).pred_masks, expected)
        with loaded.disable_adapter():
            base = loaded(pixel_values=pixels, multimask_output=False).pred_masks
        assert not torch.allclose(expected, base, atol=1e-5)


def test_an_adapter_saved_without_the_option_loads_unchanged(tmp_path, pixel_values):
    model = randomised(get_peft_model(random_sam("tiny", seed=0), SloraConfig(r=4))).eval()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "adapter_config.json"
    config = json.loads(config_file.read_text())
    del config["learned_prompt"]  # as sam-peft wrote it before the option
    config_file.write_text(json.dumps(config))
    loaded = PeftModel.from_pretrained(random_sam("tiny", seed=0), tmp_path).eval()
    assert loaded.peft_config["default"].learned_prompt is False and len(loaded.base_model.slora_learned_prompt) == 0
    with torch.no_grad():
        for prompts in ({}, {"input_points": POINTS, "input_labels": LABELS}):
            expected = model(pixel_values=pixel_values, **prompts).pred_masks
            assert torch.equal(loaded(pixel_values=pixel_values, **prompts).pred_masks, expected)


@pytest.mark.parametrize(("variant", "grid", "extra"), [("tiny", 16, 256), ("vit-b", 64, 4096)])
def test_counts_with_a_learned_prompt_on_meta(variant, grid, extra):
    counts = {}
    for learned_prompt in (False, True):
        model = get_peft_model(random_sam(variant, device="meta"), SloraConfig(learned_prompt=learned_prompt))
        counts[learned_prompt] = model.get_nb_trainable_parameters()[0]
        assert model.base_model.grid_size == grid
    assert counts[True] - counts[False] == extra == grid * grid
    if variant == "vit-b":
        assert counts == {False: 61_524, True: 65_620}


# ----------------------------------------------------------------------------------------- the recipe's config


def slora_config(args, model=None):
    """The recipe's SLoRA config (`recipes/train.py --method slora`) for these model arguments."""
    return get_method("slora").build(args, model)


def test_the_recipes_config_learns_a_prompt_without_points_and_reads_points_with_them():
    prompt_free = slora_config(SimpleNamespace(r=10, lora_alpha=32, lora_dropout=0.0, task="prompt_free"), None)
    prompted = slora_config(SimpleNamespace(r=4, lora_alpha=32, lora_dropout=0.0, task="prompted"), None)
    assert (prompt_free.r, prompt_free.learned_prompt, prompt_free.prompt_augmentation) == (10, True, True)
    assert (prompted.r, prompted.learned_prompt, prompted.prompt_augmentation) == (4, False, True)
    assert prompt_free.modules_to_save == prompted.modules_to_save == ["mask_decoder"]


def test_prompt_free_training_with_a_learned_prompt_lowers_the_loss(base_dir):
    data = prepare_for_sam(binary_dataset(4, size=SIZE, seed=0), SIZE, augmentation=None)
    batch = sam_collate_fn([data[i] for i in range(4)])
    torch.manual_seed(0)
    config = slora_config(SimpleNamespace(r=4, task="prompt_free"))
    model = get_peft_model(semantic(base_dir), config).train()
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "base_model.slora_learned_prompt.default.heat_map" in trained
    assert any("mask_decoder.modules_to_save" in name for name in trained)
    assert not any("prompt_encoder" in name for name in trained)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert learned(model).abs().max() > 0


# --------------------------------------------------------------------------------------- prompted: the heat maps


def test_object_points_are_gathered_per_image():
    points = torch.arange(5 * 2 * 2, dtype=torch.float32).reshape(5, 1, 2, 2)
    labels = torch.tensor([[[1, 0]], [[1, 1]], [[1, -10]], [[0, 1]], [[1, 1]]])
    image_index = torch.tensor([2, 0, 2, 0, 2])  # image 1 has no object
    gathered, gathered_labels = object_points_by_image(points, labels, image_index, 3)
    assert gathered.shape == (3, 1, 6, 2) and gathered_labels.shape == (3, 1, 6)
    assert torch.equal(gathered[0, 0, :4], torch.cat([points[1, 0], points[3, 0]]))
    assert torch.equal(gathered_labels[0, 0], torch.tensor([1, 1, 0, 1, -10, -10]))
    assert torch.equal(gathered_labels[1, 0], torch.full((6,), -10))
    assert torch.equal(gathered[2, 0], torch.cat([points[0, 0], points[2, 0], points[4, 0]]))
    assert torch.equal(gathered_labels[2, 0], torch.tensor([1, 0, 1, -10, 1, 1]))


def test_models_without_slora_are_left_alone(pixel_values):
    sam = random_sam("tiny", seed=0)
    lora = get_peft_model(random_sam("tiny", seed=0), SloraConfig(r=4, prompt_augmentation=False))
    assert slora_tuner(sam) is None and not uses_prompt_heat_maps(sam)
    assert slora_tuner(lora) is lora.base_model and not uses_prompt_heat_maps(lora)
    with encoder_prompts(sam, POINTS, LABELS) as heat_map:
        assert heat_map is None


@pytest.fixture(scope="module")
def objects_batch():
    """Three generated images of 1..4 objects, with prompt seeds."""
    data = PromptSeeds(prepare_objects_for_sam(instance_dataset(3, seed=0), SIZE, augmentation=None))
    torch.manual_seed(0)
    return sam_objects_collate_fn([data[i] for i in range(3)])


def prompted_slora(base_dir, **options) -> PeftModel:
    torch.manual_seed(0)
    config = slora_config(SimpleNamespace(r=4, task="prompted"))
    for key, value in options.items():
        setattr(config, key, value)
    model_type = PretrainedConfig.get_config_dict(str(base_dir))[0]["model_type"]
    return get_peft_model(promptable_class(model_type).from_pretrained(base_dir), config)


class Spy:
    """Records the heat map the SLoRA encoder reads at each of its forwards and the prompts of each model call."""

    def __init__(self, model: PeftModel) -> None:
        tuner = model.base_model
        self.heat_maps, self.calls = [], []

        def encoder_hook(module, args):
            heat_map = tuner._slora_state.heat_map
            self.heat_maps.append(None if heat_map is None else heat_map.clone())

        def model_hook(module, args, kwargs):
            self.calls.append({k: v.detach().clone() for k, v in kwargs.items() if torch.is_tensor(v)})

        self.handles = [
            tuner.model.vision_encoder.register_forward_pre_hook(encoder_hook),
            tuner.model.register_forward_pre_hook(model_hook, with_kwargs=True),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def expected_heat_maps(points, labels, batch, size: int = SIZE, grid: int = GRID) -> torch.Tensor:
    """Each image's heat map of its objects' first points, recomputed image by image (independently of
    `object_points_by_image`)."""
    counts = batch["object_counts"].tolist()
    maps, start = [], 0
    for count in counts:
        image_points = points[start : start + count].reshape(1, 1, -1, 2)
        image_labels = labels[start : start + count].reshape(1, 1, -1)
        maps.append(points_to_heat_map(image_points, image_labels, size, grid)[0])
        start += count
    return torch.stack(maps)


@pytest.mark.parametrize("first", ["point", "box"])
def test_interactive_training_gives_the_encoder_each_images_first_prompts(base_dir, objects_batch, first):
    model = prompted_slora(base_dir)
    spy = Spy(model)
    training = InteractiveTraining(
        model, InteractiveTrainingConfig(num_correction_clicks=2, box_probability=float(first == "box"))
    )
    training(**objects_batch)
    spy.remove()
    assert len(spy.heat_maps) == 1 and len(spy.calls) == 3  # the encoder once, the decoder once per iteration
    first_call = spy.calls[0]
    if first == "point":
        points, labels = first_call["input_points"], first_call["input_labels"]
        assert points.shape[1:] == (1, 1, 2)
    else:
        boxes = first_call["input_boxes"][:, 0]
        points = ((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None, None]
        labels = torch.ones(points.shape[:3], dtype=torch.long)
    expected = expected_heat_maps(points, labels, objects_batch)
    torch.testing.assert_close(spy.heat_maps[0], expected)
    assert spy.heat_maps[0].amax(dim=(1, 2)).min() > 0  # every image has objects, each a mark
    # the clicks that follow reach the decoder only: after the forward, no heat map is left
    assert model.base_model._slora_state.heat_map is None and not model.base_model._slora_state.pinned


def test_prompted_slora_training_lowers_the_loss_and_trains_the_prompt_path(base_dir, objects_batch):
    model = prompted_slora(base_dir)
    training = InteractiveTraining(model, InteractiveTrainingConfig(num_correction_clicks=2, box_probability=0.5))
    optimizer = torch.optim.AdamW([p for p in training.parameters() if p.requires_grad], lr=3e-3)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("mask_decoder.modules_to_save" in n for n in trained) and not any("learned" in n for n in trained)
    losses, prompt_grads = [], []
    for _ in range(10):
        step = training(**objects_batch)
        step["loss"].backward()
        assert all(p.grad is not None for p in optimizer.param_groups[0]["params"])
        prompt_grads.append(model.base_model.slora_prompt_linear["default"].weight.grad.abs().sum().item())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(step["loss"].item())
    assert losses[-1] < losses[0], losses
    # the points' heat map reaches the prompt path: its projection's weight, which the zero map leaves without
    # gradient, gets one once B has moved from zero
    assert prompt_grads[0] == 0 and prompt_grads[-1] > 0


def test_activation_checkpointing_recomputes_with_the_same_heat_map(base_dir, objects_batch):
    grads = []
    for checkpointing in (False, True):
        model = randomised(prompted_slora(base_dir))
        if checkpointing:
            model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        training = InteractiveTraining(model, InteractiveTrainingConfig(num_correction_clicks=1, box_probability=0.0))
        training.train()
        training(**objects_batch)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if "slora_" in n})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
def test_sam2_and_sam3_train_and_evaluate_with_their_heat_maps(variant, tmp_path):
    random_sam(variant, seed=0).save_pretrained(tmp_path)
    model = prompted_slora(tmp_path, init_weights=False)  # every part of the adapter shows
    tuner = model.base_model
    size, grid = tuner.prompt_input_size, tuner.grid_size
    data = PromptSeeds(prepare_objects_for_sam(instance_dataset(2, seed=0), size, augmentation=None))
    batch = sam_objects_collate_fn([data[i] for i in range(2)])
    spy = Spy(model)
    training = InteractiveTraining(model, InteractiveTrainingConfig(num_correction_clicks=1, box_probability=0.0))
    step = training(**batch)
    step["loss"].backward()
    first = spy.calls[0]
    torch.testing.assert_close(
        spy.heat_maps[0], expected_heat_maps(first["input_points"], first["input_labels"], batch, size, grid)
    )
    assert tuner.slora_prompt_linear["default"].weight.grad.any()  # the points reach the prompt path
    model.eval()
    metrics = evaluate_interactive(model, DataLoader([batch], batch_size=None), max_clicks=2, progress=False)
    spy.remove()
    assert metrics["num_objects"] == int(batch["object_counts"].sum()) and len(spy.heat_maps) == 2
    assert spy.heat_maps[1].amax(dim=(1, 2)).min() > 0


# --------------------------------------------------------------------------------- evaluation and prediction


def test_interactive_evaluation_gives_the_encoder_each_objects_centre_click(base_dir, objects_batch):
    model = randomised(prompted_slora(base_dir)).eval()
    loader = DataLoader([objects_batch], batch_size=None)
    spy = Spy(model)
    metrics = evaluate_interactive(model, loader, max_clicks=2, progress=False)
    spy.remove()
    assert metrics["num_objects"] == int(objects_batch["object_counts"].sum())
    assert len(spy.heat_maps) == 1  # one embedding for the batch: the box and every click
    present = torch.arange(objects_batch["object_masks"].shape[1]) < objects_batch["object_counts"][:, None]
    masks = objects_batch["object_masks"][present]
    valid = objects_batch["valid"][present.nonzero()[:, 0]]
    clicks = [
        next_click(torch.zeros_like(m[None]), (m & v)[None], v[None], mode="center")
        for m, v in zip(masks, valid, strict=True)
    ]
    points = torch.cat([c[0] for c in clicks])
    labels = torch.cat([c[1] for c in clicks])
    assert torch.all(labels == 1)
    torch.testing.assert_close(spy.heat_maps[0], expected_heat_maps(points, labels, objects_batch))
    # the embedding the decoder gets is the one of that heat map, not the zero map's
    embeddings = spy.calls[0]["image_embeddings"]
    encoder = model.base_model.model.vision_encoder
    image_index = present.nonzero()[:, 0]
    with torch.no_grad():
        zero_map = encoder(objects_batch["pixel_values"]).last_hidden_state[image_index]
        with model.base_model.prompt_heat_map(spy.heat_maps[0]):
            clicked = encoder(objects_batch["pixel_values"]).last_hidden_state[image_index]
    torch.testing.assert_close(embeddings, clicked, rtol=0, atol=1e-5)
    assert not torch.allclose(embeddings, zero_map, atol=1e-3)
    assert all(torch.equal(call["image_embeddings"], embeddings) for call in spy.calls)  # the box and every click


def test_prompted_prediction_gives_the_encoder_the_prompts_points_and_box_centres(base_dir):
    model = randomised(prompted_slora(base_dir)).eval()
    image = torch.randint(0, 255, (72, 96, 3), dtype=torch.uint8).numpy()  # resized by 128 / 96 = 4 / 3 (to 96 x 128)
    prompts = [
        {"points": [[30, 15], [60, 45]], "labels": [1, 0]},  # its positive point only
        {"box": [0, 0, 24, 30]},  # a box alone: its centre (12, 15)
        {"box": [48, 3, 90, 60], "points": [[75, 30]]},  # box and a positive point: the point
    ]
    spy = Spy(model)
    predict_prompted(model, [image], [prompts], image_size=SIZE)
    spy.remove()
    scale = SIZE / 96
    expected_points = torch.tensor([[[[30.0, 15.0], [12.0, 15.0], [75.0, 30.0]]]]) * scale
    expected = points_to_heat_map(expected_points, None, SIZE, GRID)
    assert len(spy.heat_maps) == 1
    torch.testing.assert_close(spy.heat_maps[0], expected)
