"""Saving and loading what training changes, and nothing of the frozen base model.

A run folder holds `sam_peft_run.json` (base model, method and its arguments, `peft_config` included, labels, image
size) and the trained weights: a PEFT adapter (`adapter_config.json`, `adapter_model.safetensors`) for the methods
with an adapter, or the trainable parameters by name (`decoder_model.safetensors`) for those without (decoder_only,
bias_only, norm_only, attention_only, last_blocks, full: the mask decoder and the encoder weights they train).
Accelerate checkpoints hold the same plus the optimiser state.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from peft import PeftModel
from peft.utils import load_peft_weights
from safetensors.torch import load_file, save_file

from ..tuners.loading import set_adapter_weights
from .arguments import ModelArguments
from .files import write_json_atomic

RUN_FILE = "sam_peft_run.json"
DECODER_FILE = "decoder_model.safetensors"


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad (the methods without an adapter: the mask decoder and the encoder weights
    they train), detached and contiguous."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_trained(model: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Writes the trained weights of `model` to `directory`: its adapter, or its trainable parameters."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        model.save_pretrained(directory)
    else:
        save_file(trainable_state_dict(model), directory / DECODER_FILE)


def load_trained_weights(model: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Loads weights written by `save_trained` into a model built the same way (in place).

    Raises:
        ValueError: when the weights do not fit the model (another base model, method or number of labels).
    """
    directory = Path(directory)
    if isinstance(model, PeftModel):
        set_adapter_weights(model, load_peft_weights(str(directory)), directory, model.active_adapter)
        return
    state = load_file(directory / DECODER_FILE)
    expected = set(trainable_state_dict(model))
    if set(state) != expected:
        raise ValueError(
            f"The weights in {directory} do not fit this model: parameters {sorted(set(state) ^ expected)[:3]} "
            "are in one but not the other."
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ValueError(f"The weights in {directory} do not fit this model: {error}") from error


def write_run_file(
    directory: str | os.PathLike, model_args: ModelArguments, image_size: int, training: dict | None = None
) -> None:
    """Records how the run's model is built, so evaluation and prediction rebuild the same one, and (`training`:
    epochs and steps) that its training finished. Written atomically."""
    record = {"model": asdict(model_args), "image_size": image_size}
    if training is not None:
        record["training"] = training
    write_json_atomic(Path(directory, RUN_FILE), record)


def read_run_file(directory: str | os.PathLike) -> dict:
    path = Path(directory, RUN_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a sam-peft run: {RUN_FILE} is missing.")
    return json.loads(path.read_text())


def load_trained(
    name_or_path: str | os.PathLike,
    base_model: str | None = None,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
) -> torch.nn.Module:
    """The trained model of a run folder or Hub repository, in eval mode, on `base_model` (default: the one it was
    trained on; a relative local path is looked for in the run folder first, then in the working directory). Hub
    ids go through huggingface_hub, so they load offline from the local cache too.

    Raises:
        ValueError: when `base_model` is not the architecture the run was trained on.
    """
    from ..hub import resolve_pretrained
    from .builders import build_model

    directory = resolve_pretrained(name_or_path, subfolder=subfolder, revision=revision)
    record = read_run_file(directory)
    model_args = ModelArguments(**record["model"])
    if base_model is not None:
        model_args.base_model = base_model
    elif not Path(model_args.base_model).is_absolute() and (directory / model_args.base_model).is_dir():
        # a relative local base model (recorded by earlier sam-peft versions), beside the run folder
        model_args.base_model = str(directory / model_args.base_model)
    model_args.random_base = None
    model = build_model(model_args)
    load_trained_weights(model, directory)
    return model.eval()


def register_trainable_checkpointing(accelerator, model: torch.nn.Module) -> None:
    """Makes `accelerator.save_state` store only the trained weights of `model` (plus optimiser, scheduler and RNG
    states), and `load_state` restore them: the frozen base model stays out of every checkpoint.

    `model` is the model being trained (not unwrapped by Accelerate): the one prepared, or the model inside the
    module that was prepared (prompted fine-tuning prepares `InteractiveTraining`, which holds it); its weights are
    saved as `save_trained` writes them, so a checkpoint's weights load like a finished run's.
    """

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            save_trained(model, output_dir)
        weights.clear()  # (`models` is the accelerator's own list: left as it is)

    def load_hook(models, input_dir):
        models.clear()  # (a list of this call's: nothing else loads model weights)
        load_trained_weights(model, input_dir)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
