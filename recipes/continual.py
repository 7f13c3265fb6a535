"""Continual learning over a stream of domains with SLoRA modules and a module selector (SAMCL).

    python recipes/continual.py recipes/configs/continual_quickstart.yaml --output_dir outputs/continual
    accelerate launch recipes/continual.py recipes/configs/continual_samcl.yaml --output_dir outputs/samcl

The base SAM is of any generation (`SamModel`, `Sam2Model`, `Sam3TrackerModel`: `AutoModel` loads the checkpoint's;
`--random_base sam2-tiny` or `sam3-tiny` makes a tiny random one), at its own input size. The config's `domains` list
names the domains in the order they are learned; each entry holds a `name` and the
data keys of `recipes/train.py` (`benchmark`, `data_dir`, `eval_split`, `max_train_samples`, ... or
`benchmark: synthetic` with `synthetic_appearance`). An optional `base_domain` entry gives images of no learned
domain (SAMCL: COCO), which the selector learns to send to the base SAM. After learning domain i, every domain
j <= i + 1 is evaluated with routing (IoU with three fixed positive point prompts per image).

The output folder receives the continual model (`modules/<domain>/`, the buffer, the selector,
`continual_config.json`), `continual_metrics.json` (AA, FM, FT, the accuracy matrix, selector accuracy, the
base SAM's scores, each module's loss at every optimiser step) and `accuracy_matrix.png`.

Each module trains through the same Accelerate loop as `recipes/train.py` (`sam_peft.training.optimizer_steps`):
`mixed_precision`, `gradient_accumulation_steps` and `max_grad_norm` apply, `accelerate launch` runs it on several
processes (the batches of each step are split among them; the buffer, the selector and the evaluations are
computed alike on every process, and the main process writes the outputs), and each step's loss and learning rate
go to the `report_to` tracker (TensorBoard by default, when installed) under `<domain>/train/`, in
`<output_dir>/logs`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, PreTrainedModel

from sam_peft import SloraConfig
from sam_peft.continual import (
    BASE_DOMAIN,
    ContinualSam,
    DomainTrainingArguments,
    average_accuracy,
    continual_metrics,
    default_module_blocks,
    evaluate_prompted,
    forgetting,
    forward_transfer,
    save_accuracy_heatmap,
)
from sam_peft.data import sam_collate_fn, sam_image_processor
from sam_peft.modeling import input_image_size
from sam_peft.training import (
    DataArguments,
    ModelArguments,
    build_datasets,
    ensure_random_base,
    parse_config,
    recipe_accelerator,
)

USAGE = "python recipes/continual.py CONFIG.yaml [--key value ...]"


@dataclass
class ContinualArguments:
    """The base SAM, the modules, the buffer and selector, and the outputs."""

    base_model: str = field(default="facebook/sam-vit-base", metadata={"help": "SAM checkpoint: Hub id or folder."})
    random_base: str | None = field(
        default=None, metadata={"help": "Create a random SAM of this variant at base_model if it is absent."}
    )
    output_dir: str = field(default="outputs/continual", metadata={"help": "Where the model and metrics go."})
    image_size: int | None = field(default=None, metadata={"help": "SAM input size; default: the model's."})
    r: int = field(default=10, metadata={"help": "SLoRA rank."})
    layers_to_transform: list[int] | None = field(
        default=None,
        metadata={"help": "Adapted blocks; default: the last five (7..11 on ViT-B; on SAM 2, of the embedding stage)."},
    )
    num_adapted_blocks: int | None = field(
        default=None,
        metadata={"help": "Instead of layers_to_transform: the last N of the default blocks, on any generation."},
    )
    prompt_augmentation: bool = field(default=True, metadata={"help": "Inject point-prompt heat maps."})
    prompt_layout: str = field(
        default="positional",
        metadata={"help": "SLoRA prompt layout: positional (each token its own position's) or official (SAMCL's)."},
    )
    feature_block: int | None = field(default=None, metadata={"help": "Selector's block; default: before the first."})
    entries_per_domain: int = field(default=300, metadata={"help": "Buffer entries per domain."})
    selector_epochs: int = field(default=25, metadata={"help": "Selector epochs after each domain."})
    selector_lr: float = field(default=0.01, metadata={"help": "Selector SGD learning rate."})
    selector_batch_size: int = field(default=24, metadata={"help": "Selector batch size."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})
    report_to: str | None = field(default="tensorboard", metadata={"help": "Accelerate tracker, if installed."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the continual model at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository for push_to_hub."})


def domain_data(entry: dict, image_size: int, seed: int, where: str):
    """Raw and prepared (train, eval) splits of one `domains` entry: a name and `DataArguments` keys."""
    entry = dict(entry)
    name = entry.pop("name", None)
    if not name:
        raise ValueError(f"Every entry of {where} needs a name; got {entry}.")
    entry.setdefault("hflip", 0.0)  # the point prompts are drawn once per image
    try:
        data_args = DataArguments(**entry)
    except TypeError as error:
        raise ValueError(f"{where} entry {name!r}: {error}") from error
    _, prepared = build_datasets(data_args, 1, image_size, seed)
    return name, prepared["train"], prepared[data_args.eval_split]


def routing_predictor(continual: ContinualSam):
    """`(pixel_values, points, labels) -> (B, 1, h, w)` mask logits of the routed model."""

    def predict(pixel_values, input_points, input_labels):
        device = next(continual.parameters()).device
        outputs = continual(pixel_values.to(device), input_points.to(device), input_labels.to(device))
        return outputs.pred_masks[:, 0]

    return predict


def adapted_blocks(args: ContinualArguments, sam: PreTrainedModel) -> list[int] | None:
    """The modules' `layers_to_transform`: the config's, or the last `num_adapted_blocks` of the blocks a module adapts
    by default on `sam`'s encoder (`default_module_blocks`: tiny SAM 1..3, so 2 and 3 for two; sam2-tiny only 3)."""
    if args.num_adapted_blocks is None:
        return args.layers_to_transform
    if args.layers_to_transform is not None:
        raise ValueError("Set layers_to_transform or num_adapted_blocks, not both (pass the other as null).")
    if args.num_adapted_blocks < 1:
        raise ValueError(f"num_adapted_blocks must be >= 1, got {args.num_adapted_blocks}.")
    return default_module_blocks(sam)[-args.num_adapted_blocks :]


def base_predictor(sam: PreTrainedModel):
    """`(pixel_values, points, labels) -> (B, 1, h, w)` mask logits of the base SAM, before any domain."""

    def predict(pixel_values, input_points, input_labels):
        device = sam.device
        outputs = sam(
            pixel_values=pixel_values.to(device),
            input_points=input_points.to(device),
            input_labels=input_labels.to(device),
            multimask_output=False,
        )
        return outputs.pred_masks[:, 0]

    return predict


def _json_number(value: float) -> float | None:
    """NaN (a metric undefined for this stream, e.g. forgetting after one domain) as JSON null."""
    return None if math.isnan(value) else value


@torch.no_grad()
def selector_accuracy(continual: ContinualSam, eval_sets: dict, batch_size: int) -> float:
    """Share of evaluation images routed to their own domain's module."""
    correct = total = 0
    for name, dataset in eval_sets.items():
        for start in range(0, len(dataset), batch_size):
            batch = sam_collate_fn([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            routed = continual.route(batch["pixel_values"].to(next(continual.parameters()).device))
            correct += sum(domain == name for domain in routed)
            total += len(routed)
    return correct / total


def main() -> None:
    (args, train_args), structured = parse_config(
        (ContinualArguments, DomainTrainingArguments),
        structured_keys=("domains", "base_domain"),
        description=__doc__,
        usage=USAGE,
    )
    entries = structured.get("domains") or []
    if len(entries) < 1:
        raise ValueError("The config needs a `domains` list: one entry (name and data keys) per domain, in order.")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("push_to_hub needs hub_model_id (e.g. 'user/samcl-vit-b').")
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in entries]
    if len(set(names)) != len(names) or BASE_DOMAIN in names:
        raise ValueError(f"Domain names must be distinct and not {BASE_DOMAIN!r}; got {names}.")
    output_dir = Path(args.output_dir)
    accelerator = recipe_accelerator(
        output_dir, args.report_to, train_args.mixed_precision, train_args.gradient_accumulation_steps
    )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        ensure_random_base(ModelArguments(base_model=args.base_model, random_base=args.random_base))
    accelerator.wait_for_everyone()
    accelerator.init_trackers("sam-peft-continual", config={"domains": len(entries), "lr": train_args.learning_rate})
    progress = args.progress and accelerator.is_local_main_process
    sam = AutoModel.from_pretrained(args.base_model).to(accelerator.device)  # SamModel, Sam2Model, Sam3TrackerModel
    image_size = args.image_size or input_image_size(sam.config)
    module_config = SloraConfig(
        r=args.r,
        layers_to_transform=adapted_blocks(args, sam),
        prompt_augmentation=args.prompt_augmentation,
        prompt_layout=args.prompt_layout,
    )
    continual = ContinualSam(
        sam,
        module_config,
        feature_block=args.feature_block,
        entries_per_domain=args.entries_per_domain,
        selector_epochs=args.selector_epochs,
        selector_lr=args.selector_lr,
        selector_batch_size=args.selector_batch_size,
        base_model=args.base_model,
        seed=train_args.seed,
    )
    domains = [domain_data(entry, image_size, train_args.seed, "domains") for entry in entries]
    eval_sets = {name: eval_split for name, _, eval_split in domains}
    processor = sam_image_processor(image_size)

    def score(predict, name: str, stage: str) -> float:
        description = f"{stage}: evaluating {name}"
        results = evaluate_prompted(predict, eval_sets[name], train_args, processor, description, progress)
        return results["iou"]

    with torch.no_grad():
        base_scores = {name: score(base_predictor(continual.sam), name, "base SAM") for name in names}
    if "base_domain" in structured:
        _, base_train, _ = domain_data({"name": BASE_DOMAIN, **structured["base_domain"]}, image_size, 0, "base")
        continual.extend_buffer(BASE_DOMAIN, base_train, train_args.eval_batch_size)

    accuracy = np.full((len(names), len(names)), math.nan)
    train_losses: dict[str, list[float]] = {}
    for stage, (name, train_split, _) in enumerate(domains):
        train_losses[name] = continual.learn_domain(
            name, train_split, train_args, progress=progress, accelerator=accelerator
        )
        for column in range(min(stage + 2, len(names))):
            accuracy[stage, column] = score(routing_predictor(continual), names[column], f"after {name}")
        scores = {names[j]: accuracy[stage, j] for j in range(min(stage + 2, len(names)))}
        accelerator.log({f"{domain}/eval/iou": value for domain, value in scores.items()}, step=stage + 1)
        accelerator.print(f"after {name}: " + ", ".join(f"{domain} {value:.3f}" for domain, value in scores.items()))

    results = {
        "domains": names,
        "AA": _json_number(average_accuracy(accuracy)),
        "FM": _json_number(forgetting(accuracy)),
        "FT": _json_number(forward_transfer(accuracy)),
        "selector_accuracy": selector_accuracy(continual, eval_sets, train_args.eval_batch_size),
        "accuracy_matrix": [[None if math.isnan(v) else v for v in row] for row in accuracy.tolist()],
        "per_stage": {k: [_json_number(v) for v in values] for k, values in continual_metrics(accuracy).items()},
        "base_sam": base_scores,
        "metric": "iou",
        "training": asdict(train_args),
        "train_losses": train_losses,
    }
    if accelerator.is_main_process:
        continual.save_pretrained(output_dir)
        (output_dir / "continual_metrics.json").write_text(json.dumps(results, indent=2, allow_nan=False))
        save_accuracy_heatmap(output_dir / "accuracy_matrix.png", accuracy, names, title="IoU after each stage")
        print(json.dumps({k: results[k] for k in ("AA", "FM", "FT", "selector_accuracy")}, indent=2))
        if args.push_to_hub:
            print(f"Pushed to {continual.push_to_hub(args.hub_model_id)}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
