"""Prompted fine-tuning (task: prompted): SAM's interactive training scheme, checked call by call against an
independent reading of the protocol, its losses re-computed, every tuner and generation trained a few steps, and
the arguments that belong to one task only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from prompted_checks import train_prompted
from torch import nn

from sam_peft.data import instance_dataset
from sam_peft.data.prompted import object_boxes, prepare_objects_for_sam, sam_objects_collate_fn
from sam_peft.data.prompts import PADDING_POINT_LABEL
from sam_peft.modeling import input_image_size, random_sam
from sam_peft.modeling.losses import prompted_mask_loss
from sam_peft.modeling.prompted import trainable_image_embeddings
from sam_peft.training import InteractiveTraining, InteractiveTrainingConfig, PromptSeeds, parse_args
from sam_peft.training.arguments import ModelArguments
from sam_peft.training.builders import build_model
from sam_peft.training.prompted import batch_generator
from sam_peft.tuners import auxiliary_loss

SIZE = 128  # the tiny SAM's input size


@pytest.fixture(scope="module")
def batch():
    """Three generated images of 1..4 objects (padded to the most), with prompt seeds."""
    data = PromptSeeds(prepare_objects_for_sam(instance_dataset(3, seed=0), SIZE, augmentation=None))
    torch.manual_seed(0)
    return sam_objects_collate_fn([data[i] for i in range(3)])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    random_sam("tiny", seed=0).save_pretrained(folder)
    return folder


class Recorder(nn.Module):
    """A promptable SAM that records the keyword arguments and outputs of every prompted call."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam
        self.calls: list[tuple[dict, object]] = []

    def get_image_embeddings(self, pixel_values):
        return self.sam.vision_encoder(pixel_values)[0]

    def forward(self, **kwargs):
        outputs = self.sam(**kwargs)
        self.calls.append(({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}, outputs))
        return outputs


def _objects(batch):
    """The real objects of the batch: masks `(N, S, S)`, their image's valid pixels, and targets `(N, 1, S, S)`."""
    counts = batch["object_counts"]
    present = torch.arange(batch["object_masks"].shape[1]) < counts[:, None]
    masks = batch["object_masks"][present]
    valid = batch["valid"][present.nonzero()[:, 0]]
    targets = masks.to(torch.uint8).masked_fill(~valid, 255)[:, None]
    return masks, valid, targets, present


def _run(batch, **config):
    recorder = Recorder(random_sam("tiny", seed=0))
    training = InteractiveTraining(recorder, InteractiveTrainingConfig(**config))
    losses = training(**batch)
    return recorder, losses


@pytest.mark.parametrize("first", ["box", "point"])
def test_each_call_follows_the_protocol_and_the_loss_is_its_mean(batch, first):
    clicks = 3
    recorder, losses = _run(batch, num_correction_clicks=clicks, box_probability=1.0 if first == "box" else 0.0)
    masks, valid, targets, present = _objects(batch)
    count = len(masks)
    assert count == int(batch["object_counts"].sum()) > len(batch["object_counts"])  # padding objects left out
    assert len(recorder.calls) == 1 + clicks
    expected_losses = []
    previous = None
    for index, (kwargs, outputs) in enumerate(recorder.calls):
        # every call: one row per object, its own image's embedding
        image_index = present.nonzero()[:, 0]
        embeddings = recorder.sam.get_image_embeddings(batch["pixel_values"])[image_index]
        torch.testing.assert_close(kwargs["image_embeddings"], embeddings, rtol=0, atol=1e-5)
        assert kwargs["multimask_output"] is (index == 0 and first == "point")
        if first == "box":  # the tight box stays (no jitter asked)
            assert torch.equal(kwargs["input_boxes"], object_boxes(batch)[present][:, None])
        else:
            assert "input_boxes" not in kwargs
        if index == 0:
            assert "input_masks" not in kwargs
            if first == "point":
                points, labels = kwargs["input_points"], kwargs["input_labels"]
                assert points.shape == (count, 1, 1, 2) and torch.all(labels == 1)
                rows, cols = points[:, 0, 0, 1].long(), points[:, 0, 0, 0].long()
                assert torch.all(masks[torch.arange(count), rows, cols])  # inside its object
        else:
            # the previous call's mask of highest predicted IoU comes back as the mask prompt
            previous_kwargs, previous_outputs = previous
            best = previous_outputs.iou_scores[:, 0].argmax(dim=-1)
            low_res = previous_outputs.pred_masks[torch.arange(count), 0, best]
            assert torch.equal(kwargs["input_masks"], low_res[:, None].detach())
            # one click more, the earlier ones kept
            points, labels = kwargs["input_points"], kwargs["input_labels"]
            assert points.shape[2] == index + (first == "point")
            if "input_points" in previous_kwargs:
                assert torch.equal(points[:, :, :-1], previous_kwargs["input_points"])
            # the new click lies in an error of the previous prediction: a miss (positive) or a false positive
            prediction = F.interpolate(low_res[:, None].float(), size=(SIZE, SIZE), mode="bilinear")[:, 0] > 0
            prediction &= valid
            rows, cols = points[:, 0, -1, 1].long(), points[:, 0, -1, 0].long()
            for n in range(count):
                label = int(labels[n, 0, -1])
                if label == PADDING_POINT_LABEL:
                    assert torch.equal(prediction[n], masks[n] & valid[n])
                    continue
                inside, predicted = bool(masks[n, rows[n], cols[n]]), bool(prediction[n, rows[n], cols[n]])
                assert (label, inside, predicted) in {(1, True, False), (0, False, True)}
        expected_losses.append(prompted_mask_loss(outputs.pred_masks, outputs.iou_scores, targets))
        previous = (kwargs, outputs)
    torch.testing.assert_close(losses["task_loss"], torch.stack(expected_losses).mean())
    torch.testing.assert_close(losses["loss"], losses["task_loss"])  # no auxiliary loss on a bare SAM
    assert losses["loss"].requires_grad


def test_the_same_prompt_seeds_draw_the_same_prompts_and_others_differ(batch):
    first, losses = _run(batch, num_correction_clicks=2, box_probability=0.0)
    again, same = _run(batch, num_correction_clicks=2, box_probability=0.0)
    other_batch = {**batch, "prompt_seed": [seed + 1 for seed in batch["prompt_seed"]]}
    other, _ = _run(other_batch, num_correction_clicks=2, box_probability=0.0)
    assert torch.equal(losses["loss"], same["loss"])
    last = [call[0]["input_points"] for call in (first.calls[-1], again.calls[-1], other.calls[-1])]
    assert torch.equal(last[0], last[1]) and not torch.equal(last[0], last[2])
    assert batch_generator([1, 2]).initial_seed() == batch_generator(torch.tensor([1, 2])).initial_seed()
    assert batch_generator([1, 2]).initial_seed() != batch_generator([2, 1]).initial_seed()


def test_box_jitter_only_widens_the_box(batch):
    recorder, _ = _run(batch, num_correction_clicks=0, box_probability=1.0, box_jitter=6)
    tight = object_boxes(batch)[_objects(batch)[3]]
    boxes = recorder.calls[0][0]["input_boxes"][:, 0]
    grown = torch.cat([tight[:, :2] - boxes[:, :2], boxes[:, 2:] - tight[:, 2:]], dim=1)
    assert torch.all(grown >= 0) and torch.all(grown <= 6) and grown.sum() > 0


def test_a_batch_without_objects_gives_zero_gradients_to_every_trained_weight(batch):
    empty = {**batch, "object_counts": torch.zeros_like(batch["object_counts"])}
    sam = random_sam("tiny", seed=0)
    sam.requires_grad_(False)
    sam.mask_decoder.requires_grad_(True)
    losses = InteractiveTraining(sam)(**empty)
    losses["loss"].backward()
    trained = [p for p in sam.parameters() if p.requires_grad]
    assert losses["loss"].item() == 0 and all(p.grad is not None and not p.grad.any() for p in trained)


def test_image_embeddings_carry_gradients_and_equal_the_inference_ones():
    sam = random_sam("tiny", seed=0)
    pixels = torch.randn(2, 3, SIZE, SIZE)
    embeddings = trainable_image_embeddings(sam, pixels)
    assert embeddings.requires_grad
    torch.testing.assert_close(embeddings, sam.get_image_embeddings(pixels), rtol=0, atol=1e-5)


METHODS = ["conv_lora", "lora", "cad", "sam_adapter", "decoder_only"]


@pytest.mark.parametrize(
    ("variant", "method"), [("tiny", method) for method in METHODS] + [("sam2-tiny", "lora"), ("sam3-tiny", "cad")]
)
def test_a_few_steps_of_prompted_training_lower_the_loss(variant, method, tmp_path, batch):
    random_sam(variant, seed=0).save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = build_model(ModelArguments(base_model=str(tmp_path), method=method, task="prompted"))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(("mask_decoder" in name) or ("vision_encoder" in name) for name in trained)
    assert any("mask_decoder" in name for name in trained)  # SAM's decoder (its IoU head included) trains too
    assert not any("prompt_encoder" in name for name in trained)
    if variant == "tiny":
        data = batch
    else:
        size = input_image_size(model.config)
        prepared = PromptSeeds(prepare_objects_for_sam(instance_dataset(2, seed=0), size, augmentation=None))
        data = sam_objects_collate_fn([prepared[i] for i in range(2)])
    training = InteractiveTraining(model, InteractiveTrainingConfig(num_correction_clicks=2, box_probability=0.5))
    losses = train_prompted(training, data, steps=10)
    step = training.last_step
    assert losses[-1] < losses[0], losses
    if method == "conv_lora":  # the balance loss is part of what is optimised
        torch.testing.assert_close(step["auxiliary_loss"], auxiliary_loss(model).detach())
        assert step["auxiliary_loss"] > 0


def test_the_prompted_model_is_the_promptable_class_and_sam_hq_is_refused(base_dir):
    from transformers import SamModel

    model = build_model(ModelArguments(base_model=str(base_dir), method="lora", task="prompted"))
    assert type(model.get_base_model()) is SamModel
    assert model.peft_config["default"].modules_to_save == ["mask_decoder"]
    from sam_peft.modeling.prompted import promptable_class

    with pytest.raises(ValueError, match=r"trains sam, sam2, sam3_tracker checkpoints; this one is 'sam_hq'"):
        promptable_class("sam_hq")


# Arguments


def _parse(*argv: str):
    return parse_args(["--benchmark", "synthetic", *argv])


def test_prompted_only_keys_are_refused_on_a_prompt_free_run_and_the_reverse():
    message = r"num_correction_clicks, box_jitter apply to task: prompted.*task: prompt_free"
    with pytest.raises(ValueError, match=message):
        _parse("--num_correction_clicks", "3", "--box_jitter", "4")
    with pytest.raises(ValueError, match=r"semantic_loss applies to task: prompt_free, and this run is task: prompted"):
        _parse("--task", "prompted", "--semantic_loss", "bce_dice")
    with pytest.raises(ValueError, match=r"cache_embeddings applies to task: prompt_free"):
        _parse("--task", "prompted", "--method", "cad", "--cache_embeddings", "true")
    model_args, _, train_args = _parse("--task", "prompted", "--eval_max_clicks", "3")
    assert model_args.task == "prompted" and train_args.eval_max_clicks == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--task", "interactive"), r"Unknown task 'interactive'; expected prompt_free or prompted"),
        (("--task", "prompted", "--num_labels", "3"), r"one object per prompt \(num_labels 1\), got num_labels=3"),
        (("--task", "prompted", "--objects", "blobs"), r"Unknown objects 'blobs'; expected image, components or"),
        (("--task", "prompted", "--box_probability", "1.5"), r"box_probability must be in \[0, 1\], got 1.5"),
        (("--task", "prompted", "--max_objects", "0"), r"max_objects must be >= 1, got 0"),
        (("--task", "prompted", "--eval_max_clicks", "0"), r"eval_max_clicks must be >= 1, got 0"),
    ],
)
def test_bad_prompted_arguments_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        _parse(*argv)


def test_coco_annotations_go_with_an_image_folder_only():
    with pytest.raises(ValueError, match="coco_annotations names the objects of the images in image_dir"):
        parse_args(["--task", "prompted", "--coco_annotations", "a.json"])
    with pytest.raises(ValueError, match="More than one data source"):
        parse_args(["--task", "prompted", "--benchmark", "synthetic", "--image_dir", "x", "--coco_annotations", "a"])


def test_a_semantic_source_for_a_prompted_run_names_the_sources_that_work(tmp_path):
    from sam_peft.training.builders import load_object_data

    _, data_args, _ = parse_args(["--task", "prompted", "--hub_dataset", "user/polyps"])
    with pytest.raises(ValueError, match="task: prompted reads objects from image_dir and mask_dir"):
        load_object_data(data_args, seed=0)
