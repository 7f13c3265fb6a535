"""Exporting a (fine-tuned) SAM model to ONNX or to a `torch.export` program, for deployment without sam-peft.

`export(model, output_dir, format="onnx")` writes into `output_dir`:

- a prompt-free model (`SamForSemanticSegmentation`, `Sam2ForSemanticSegmentation`,
  `Sam3TrackerForSemanticSegmentation`; in a PEFT model or bare, any method): one graph, `model.onnx`
  (`model.pt2` for `format="torch_export"`), `pixel_values (B, 3, S, S) -> logits (B, num_labels, S, S)`: the
  model's `logits` at the padded input size. The post-processing stays outside the graph: crop each image's logits
  to its resized size and resize them to its original size (`sam_peft.modeling.logits_at_original_size(logits,
  original_sizes, reshaped_input_sizes)`, with the sizes that `SamImageProcessor` returns), then sigmoid (binary) or
  argmax over the classes (`post_process_semantic_segmentation`);
- a promptable model (`SamModel`, `Sam2Model`, `Sam3TrackerModel`): two graphs, as SAM is deployed (the image is
  encoded once, each prompt decoded by the light part): `image_encoder.onnx`, `pixel_values -> image_embeddings`
  (SAM 2 / 3: `image_embeddings_0`, `image_embeddings_1`, ... the FPN levels that `get_image_embeddings` returns),
  and `prompt_decoder.onnx`, `image_embeddings..., <prompt inputs> -> pred_masks, iou_scores`. The prompt inputs
  are fixed at export (`prompt=`): "points" (`input_points (B, P, N, 2)`, `input_labels (B, P, N)`), "boxes"
  (`input_boxes (B, P, 4)`) or "points_and_boxes" (all three), as `model(...)` takes them (coordinates in the
  model's input frame, as `SamProcessor` scales them); `multimask_output` is fixed at export too. `pred_masks` are
  SAM's low-resolution mask logits (a quarter of the input side): bring them to the images with
  `SamProcessor.post_process_masks(pred_masks, original_sizes, reshaped_input_sizes)` outside the graph. An SLoRA
  model whose image encoder reads the point prompts (prompted SLoRA) cannot be split so, and is refused.

Adapters: a PEFT model whose adapters can be merged (peft's LoRA and its other mergeable tuners) is merged into a
copy first (`merge_and_unload`), so the graph holds plain layers; the sam-peft methods, which cannot be merged
(Conv-LoRA, CAD, SAM-Adapter, SLoRA), are exported unmerged: Conv-LoRA with its dense expert dispatch (every expert
on every window, no data-dependent shapes; set on the copy), CAD's and SAM-Adapter's FFT high-pass with an
equivalent real-valued matrix form (ONNX has no complex tensors; the FFT is replaced while exporting, the outputs
agree to float rounding; the graph holds four `(S, S)` constant matrices, 16 MB at 1024 px). The caller's model
is never changed: export works on a deep copy (for a large model that is a second copy in memory).

Graphs are traced at one image size (`image_size`, default the model's: `sam_peft.modeling.input_image_size`) with
a dynamic batch dimension (and, for the prompt decoder, a dynamic number of prompts per image and of points per
prompt). ONNX export uses torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`), which
needs `onnx` and `onnxscript`; running the graphs needs `onnxruntime`: `pip install "sam-peft[export]"`.

Files are written atomically, and an existing file is never replaced unless `overwrite=True`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor, nn

from .modeling import input_image_size
from .modeling.semantic_sam import SemanticSegmentationHeadMixin
from .training.files import TEMPORARY_PREFIX, fsync_path
from .tuners import conv_lora
from .tuners.base import UnmergeableLayer
from .tuners.slora.prompting import uses_prompt_heat_maps

FORMATS = ("onnx", "torch_export")
PROMPTS = ("points", "boxes", "points_and_boxes")
EXPORT_EXTRA = 'pip install "sam-peft[export]"'
SUFFIXES = {"onnx": ".onnx", "torch_export": ".pt2"}
PROMPT_FREE_GRAPH = "model"
IMAGE_ENCODER_GRAPH = "image_encoder"
PROMPT_DECODER_GRAPH = "prompt_decoder"


class ExportError(ValueError):
    """A model or an argument that `export` cannot handle, with the reason."""


# --- preparing the model ------------------------------------------------------------------------------------------


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def is_prompt_free(model: nn.Module) -> bool:
    """Whether `model` (bare or in a PEFT model) is one of sam-peft's prompt-free heads."""
    return isinstance(_base_model(model), SemanticSegmentationHeadMixin)


def prepare_for_export(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode, ready to trace: mergeable adapters merged (`merge_and_unload`), Conv-LoRA on
    its dense expert dispatch. `model` itself is left as it is."""
    model = copy.deepcopy(model).eval()
    if isinstance(model, PeftModel):
        unmergeable = any(isinstance(module, UnmergeableLayer) for module in model.modules())
        if not unmergeable:
            # a peft tuner that cannot merge is exported as it is
            with contextlib.suppress(ValueError, NotImplementedError, AttributeError, TypeError):
                model = model.merge_and_unload().eval()
    has_conv_lora = any(isinstance(module, conv_lora.ConvLoraLayer) for module in model.modules())
    if has_conv_lora:
        set_dispatch = getattr(conv_lora, "set_expert_dispatch", None)
        if set_dispatch is None:
            raise ExportError(
                "Conv-LoRA cannot be exported by this sam-peft version: its dense expert dispatch "
                "(ConvLoraConfig(expert_dispatch='dense')) is missing; the grouped dispatch has data-dependent shapes."
            )
        set_dispatch(model, "dense")
    return model


@contextlib.contextmanager
def _onnx_friendly_operations() -> Iterator[None]:
    """While exporting to ONNX: torch's notice that torchvision's operators are not registered (sam-peft uses none)
    silenced, then restored. (The tuners' FFT high-pass takes its real-valued form by itself while exporting:
    `sam_peft.tuners.frequency.high_pass_magnitude`.)"""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        yield
    finally:
        registration.setLevel(level)


# --- the graphs ---------------------------------------------------------------------------------------------------


class PromptFreeGraph(nn.Module):
    """`pixel_values -> logits` of a prompt-free model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values=pixel_values).logits


class ImageEncoderGraph(nn.Module):
    """`pixel_values -> image_embeddings` (a tuple of FPN levels for SAM 2 / 3) of a promptable model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor | tuple[Tensor, ...]:
        embeddings = _base_model(self.model).get_image_embeddings(pixel_values)
        return tuple(embeddings) if isinstance(embeddings, (list, tuple)) else embeddings


class PromptDecoderGraph(nn.Module):
    """`image_embeddings..., prompt inputs -> pred_masks, iou_scores` of a promptable model."""

    variadic = True  # forward(*inputs)

    def __init__(self, model: nn.Module, levels: int, prompt: str, multimask_output: bool):
        super().__init__()
        self.model = model
        self.levels = levels
        self.prompt = prompt
        self.multimask_output = multimask_output

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        embeddings = list(inputs[: self.levels]) if self.levels > 1 else inputs[0]
        prompts = inputs[self.levels :]
        kwargs: dict[str, Tensor] = {}
        if self.prompt in ("points", "points_and_boxes"):
            kwargs["input_points"], kwargs["input_labels"] = prompts[0], prompts[1]
        if self.prompt in ("boxes", "points_and_boxes"):
            kwargs["input_boxes"] = prompts[-1]
        outputs = self.model(image_embeddings=embeddings, multimask_output=self.multimask_output, **kwargs)
        return outputs.pred_masks, outputs.iou_scores


def _example_prompts(prompt: str, batch: int, size: int) -> tuple[dict[str, Tensor], dict[str, dict[int, str]]]:
    """Example prompt inputs for tracing (two prompts per image, of three points and / or a box) and their dynamic
    axes: the batch, the number of prompts per image and the number of points per prompt."""
    generator = torch.Generator().manual_seed(0)
    prompts, dynamic = {}, {}
    if prompt in ("points", "points_and_boxes"):
        prompts["input_points"] = torch.rand(batch, 2, 3, 2, generator=generator) * size
        prompts["input_labels"] = torch.ones(batch, 2, 3, dtype=torch.long)
        dynamic["input_points"] = {0: "batch", 1: "prompts", 2: "points"}
        dynamic["input_labels"] = {0: "batch", 1: "prompts", 2: "points"}
    if prompt in ("boxes", "points_and_boxes"):
        corners = torch.rand(batch, 2, 2, 2, generator=generator).sort(dim=2).values * size
        prompts["input_boxes"] = corners.flatten(2)
        dynamic["input_boxes"] = {0: "batch", 1: "prompts"}
    return prompts, dynamic


# --- writing ------------------------------------------------------------------------------------------------------


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxscript") if _missing(name)]
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}, not installed: {EXPORT_EXTRA}.")


def _missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def _write_graph(
    graph: nn.Module,
    inputs: dict[str, Tensor],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
    target: Path,
    format: str,
    opset_version: int | None,
    optimize: bool,
) -> None:
    """Traces `graph` on `inputs` (by name, in order) and writes it to `target`, through a temporary file in the same
    folder renamed into place (a failure leaves nothing at `target`)."""
    temporary = target.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{target.name}")
    names = list(inputs)
    args = tuple(inputs.values())
    # one torch.export.Dim per named dynamic axis, shared by the inputs that name it
    dims: dict[str, Any] = {}
    shapes = []
    for name in names:
        axes = dynamic.get(name, {})
        shapes.append({axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()} or None)
    # `forward(*inputs)` (the prompt decoder): its inputs are one argument, a tuple, for torch.export
    dynamic_shapes = (tuple(shapes),) if getattr(graph, "variadic", False) else tuple(shapes)
    try:
        with torch.no_grad():
            if format == "onnx":
                with _onnx_friendly_operations(), warnings.catch_warnings():
                    # each dynamic axis is named once, by the first input that has it; the others' names go unused
                    warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
                    program = torch.onnx.export(
                        graph,
                        args,
                        input_names=names,
                        output_names=output_names,
                        dynamic_shapes=dynamic_shapes,
                        opset_version=opset_version,
                        dynamo=True,
                        optimize=optimize,
                        external_data=False,
                        verbose=False,
                    )
                program.save(str(temporary))
            else:
                program = torch.export.export(graph, args, dynamic_shapes=dynamic_shapes)
                torch.export.save(program, temporary)
        fsync_path(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_path(target.parent)


def export(
    model: nn.Module,
    output_dir: str | os.PathLike,
    format: str = "onnx",
    image_size: int | None = None,
    *,
    prompt: str = "points",
    multimask_output: bool = False,
    overwrite: bool = False,
    opset_version: int | None = None,
    optimize: bool = True,
) -> dict[str, Path]:
    """Exports `model` (see the module's documentation) into `output_dir`; returns the written files by graph name
    ("model"; or "image_encoder" and "prompt_decoder").

    Args:
        model: a prompt-free sam-peft head or a promptable SAM, bare or in a PEFT model; it is not modified.
        output_dir: the folder to write into (created if needed).
        format: "onnx" (`.onnx`, run by onnxruntime) or "torch_export" (`.pt2`, `torch.export.load`).
        image_size: side of the square input that the graphs are traced at; default the model's.
        prompt: promptable models: the prompt inputs of `prompt_decoder` ("points", "boxes", "points_and_boxes").
        multimask_output: promptable models: whether `prompt_decoder` returns SAM's three masks per prompt.
        overwrite: replace existing files of the same names (else an existing target is an error).
        opset_version: ONNX opset (default: torch's).
        optimize: ONNX: let onnxscript's optimizer fold constants and simplify the graph (about half of the export
            time; the outputs are the same).

    Raises:
        ImportError: ONNX export without `onnx` / `onnxscript` (installed by the `export` extra).
        FileExistsError: a target file exists and `overwrite` is False.
        ExportError: an unknown format or prompt, a model that cannot be exported (an SLoRA model whose image encoder
            reads the point prompts).
    """
    if format not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}, got {format!r}.")
    if prompt not in PROMPTS:
        raise ExportError(f"prompt must be one of {PROMPTS}, got {prompt!r}.")
    if format == "onnx":
        _require_onnx()
    prompt_free = is_prompt_free(model)
    if not prompt_free and not hasattr(_base_model(model), "get_image_embeddings"):
        raise ExportError(
            f"{type(_base_model(model)).__name__} is neither a sam-peft prompt-free head nor a promptable SAM model."
        )
    if not prompt_free and uses_prompt_heat_maps(model):
        raise ExportError(
            "This SLoRA model's image encoder reads the point prompts (as a heat map), so the image encoder and the "
            "prompt decoder cannot be two graphs; export a prompt-free SLoRA model, or one without the prompt path."
        )
    output_dir = Path(output_dir)
    names = [PROMPT_FREE_GRAPH] if prompt_free else [IMAGE_ENCODER_GRAPH, PROMPT_DECODER_GRAPH]
    targets = {name: output_dir / f"{name}{SUFFIXES[format]}" for name in names}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"Not replacing {', '.join(existing)}: pass overwrite=True to replace them.")

    prepared = prepare_for_export(model)
    size = image_size or input_image_size(_base_model(prepared).config)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        _write_graphs(prepared, prompt_free, targets, format, size, prompt, multimask_output, opset_version, optimize)
    except BaseException:
        for path in targets.values():  # a failure leaves none of the files this call created
            if str(path) not in existing:
                path.unlink(missing_ok=True)
        raise
    return targets


def _write_graphs(
    prepared: nn.Module,
    prompt_free: bool,
    targets: dict[str, Path],
    format: str,
    size: int,
    prompt: str,
    multimask_output: bool,
    opset_version: int | None,
    optimize: bool,
) -> None:
    pixel_values = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = {0: "batch"}
    if prompt_free:
        _write_graph(
            PromptFreeGraph(prepared),
            {"pixel_values": pixel_values},
            ["logits"],
            {"pixel_values": batch},
            targets[PROMPT_FREE_GRAPH],
            format,
            opset_version,
            optimize,
        )
        return

    encoder = ImageEncoderGraph(prepared)
    with torch.no_grad():
        embeddings = encoder(pixel_values)
    levels = len(embeddings) if isinstance(embeddings, tuple) else 1
    embedding_names = ["image_embeddings"] if levels == 1 else [f"image_embeddings_{i}" for i in range(levels)]
    _write_graph(
        encoder,
        {"pixel_values": pixel_values},
        embedding_names,
        {"pixel_values": batch},
        targets[IMAGE_ENCODER_GRAPH],
        format,
        opset_version,
        optimize,
    )
    embeddings = embeddings if isinstance(embeddings, tuple) else (embeddings,)
    prompts, dynamic = _example_prompts(prompt, pixel_values.shape[0], size)
    inputs = dict(zip(embedding_names, embeddings, strict=True)) | prompts
    dynamic |= {name: batch for name in embedding_names}
    _write_graph(
        PromptDecoderGraph(prepared, levels, prompt, multimask_output),
        inputs,
        ["pred_masks", "iou_scores"],
        dynamic,
        targets[PROMPT_DECODER_GRAPH],
        format,
        opset_version,
        optimize,
    )
