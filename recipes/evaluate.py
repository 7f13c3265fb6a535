"""Evaluate a trained run on any data that recipes/train.py accepts, and print the task's table row.

    python recipes/evaluate.py --adapter outputs/quickstart
    python recipes/evaluate.py --adapter outputs/conv_lora_kvasir --benchmark kvasir --data_dir data/Kvasir-SEG
    python recipes/evaluate.py --adapter user/sam-conv-lora-sbu --benchmark sbu --data_dir data/SBU --split test
    python recipes/evaluate.py --adapter outputs/run --image_dir photos/ --mask_dir masks/ --split validation
    python recipes/evaluate.py --adapter outputs/run --hub_dataset user/polyps --image_column img --target_column seg
    python recipes/evaluate.py evaluate.yaml --adapter outputs/run

The data keys are those of recipes/train.py (a benchmark with data_dir, image_dir and mask_dir, hub_dataset with its
columns and validation_fraction, `benchmark: synthetic`), on the command line or in a YAML file. An image / mask
folder named here is evaluated whole (one `test` split). Without a data source, a local run folder is evaluated on
the data it was trained on (its training_config.json), split as in training. The split is `--split`, by default
`test` where the data has one, else the run's evaluation split. Every data file is checked before the model runs.

Metrics are computed at the original image sizes (sam_peft.metrics). The row is printed x100 as the papers print
it (BER in percent), as a Markdown table; all metrics are written to `--output` as JSON.

A run trained with `task: prompted` is evaluated with boxes and clicks on the objects of the data (its own, or
image_dir with mask_dir and `--objects`, or image_dir with `--coco_annotations`): mIoU from the box, after 1, 3, 5
and `--max_clicks` clicks, their mean, and NoC@85 / NoC@90 (`sam_peft.training.evaluate_interactive`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from accelerate import Accelerator
from datasets import DatasetDict
from torch.utils.data import DataLoader

from sam_peft.data import load_coco, load_folder, prepare_for_sam, sam_collate_fn
from sam_peft.data.prompted import prepare_objects_for_sam, sam_objects_collate_fn
from sam_peft.hub import resolve_pretrained
from sam_peft.modeling import input_image_size
from sam_peft.training import (
    DataArguments,
    TrainArguments,
    evaluate,
    evaluate_interactive,
    load_data,
    load_trained,
    parse_config,
    read_run_file,
    verify_data_files,
)
from sam_peft.training.arguments import DATA_SOURCE_GROUP, DATA_SOURCE_KEYS, check_field_types
from sam_peft.training.builders import load_object_data
from sam_peft.training.files import write_json_atomic
from sam_peft.training.run_folder import CONFIG_FILE

USAGE = (
    "python recipes/evaluate.py [CONFIG.yaml] --adapter RUN_OR_HUB_ID [DATA SOURCE] [--split SPLIT] [--key value ...]"
)

# The columns each paper's table reports, by task (Conv-LoRA, Tables 1 and 2 and appendix D); data of no benchmark
# gets the columns of its kind of task.
PAPER_COLUMNS = {
    "polyp": ("s_alpha", "e_phi", "f_beta_w", "mae"),
    "camouflage": ("s_alpha", "e_phi", "f_beta_w", "mae"),
    "skin": ("iou", "jaccard_thresholded", "dice", "accuracy"),
    "shadow": ("ber", "shadow_error", "non_shadow_error"),
    "overlap": ("iou", "dice", "accuracy"),
    "multiclass": ("accuracy", "mean_iou", "mae", "mber"),
    "binary": ("iou", "dice", "s_alpha", "e_phi", "f_beta_w", "mae"),
}
# the seed of generated data when neither the command line nor the run gives one: the training recipe's default
DEFAULT_SEED = TrainArguments.__dataclass_fields__["seed"].default
TASKS = {
    **dict.fromkeys(("kvasir", "cvc-clinicdb", "pranet"), "polyp"),
    **dict.fromkeys(("cod10k", "camo", "chameleon", "sinet"), "camouflage"),
    "isic2017": "skin",
    **dict.fromkeys(("sbu", "istd"), "shadow"),
    **dict.fromkeys(("leaf", "roads"), "overlap"),
    **dict.fromkeys(("trans10k-v1", "trans10k-v2"), "multiclass"),
}


@dataclass
class EvaluateArguments:
    """The trained run and how to evaluate it; the data keys are `DataArguments`'."""

    adapter: str | None = field(default=None, metadata={"help": "Run folder (recipes/train.py output_dir) or Hub id."})
    subfolder: str | None = field(default=None, metadata={"help": "Subfolder of the Hub repository."})
    revision: str | None = field(default=None, metadata={"help": "Hub branch, tag or commit."})
    base_model: str | None = field(
        default=None, metadata={"help": "Base SAM; default: the one the run was trained on."}
    )
    split: str | None = field(
        default=None,
        metadata={"help": "Split to evaluate (bundles: e.g. test_kvasir); default: test, else eval_split."},
    )
    batch_size: int = field(default=4, metadata={"help": "Images per forward pass."})
    seed: int | None = field(
        default=None, metadata={"help": "Seed of generated data; default: the run's, else train.py's default."}
    )
    output: str | None = field(default=None, metadata={"help": "JSON file of all metrics (written atomically)."})
    max_clicks: int = field(default=20, metadata={"help": "Prompted runs: clicks per object (SAM, RITM: 20)."})

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {self.max_clicks}")


def recorded_training_config(run_folder: Path) -> dict | None:
    """The run's training configuration (data and seed), if the run folder holds one."""
    path = run_folder / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def data_arguments(
    args: EvaluateArguments, data_args: DataArguments, run_folder: Path
) -> tuple[DataArguments, int, bool]:
    """The data to evaluate on, the seed of generated data, and whether both are the run's: as given, else as the
    run was trained.

    Raises:
        ValueError: when no data source is given and the run records none.
    """
    recorded = recorded_training_config(run_folder)
    seed = args.seed if args.seed is not None else recorded["train"]["seed"] if recorded else DEFAULT_SEED
    if any(getattr(data_args, key) is not None for key in DATA_SOURCE_KEYS):
        return data_args, seed, False
    if recorded is None:
        raise ValueError(
            f"No data to evaluate on: {run_folder} records none ({CONFIG_FILE} is missing). Name a source: "
            "--benchmark NAME --data_dir DIR, --image_dir DIR --mask_dir DIR, or --hub_dataset ID."
        )
    given = {f.name: getattr(data_args, f.name) for f in fields(DataArguments)}
    defaults = asdict(DataArguments())
    # the run's source and carving; options given here (other than their defaults) still apply
    data = {**recorded["data"], **{k: v for k, v in given.items() if v != defaults[k] and k not in DATA_SOURCE_GROUP}}
    return DataArguments(**data), seed, True


def load_evaluation_data(
    data_args: DataArguments, num_labels: int, seed: int, recorded: bool, prompted: bool = False
) -> DatasetDict:
    """The splits of the data: a folder named here is one `test` split of all its images (the run's own folder
    is carved as in training, so that its validation split is the same), any other source as `load_data` gives it;
    for a prompted run, objects (`load_object_data`)."""
    if prompted:
        if data_args.image_dir is None or recorded:
            return load_object_data(data_args, seed)
        if data_args.coco_annotations is not None:
            return load_coco(data_args.image_dir, data_args.coco_annotations, split="test", verify=True)
        if data_args.mask_dir is None:
            raise ValueError("--image_dir needs --mask_dir (with --objects) or --coco_annotations for a prompted run.")
        return load_folder(data_args.image_dir, data_args.mask_dir, objects=data_args.objects, split="test")
    if data_args.image_dir is not None and not recorded:
        if data_args.mask_dir is None:
            raise ValueError("--image_dir needs --mask_dir: the folder of masks, matched by file stem.")
        return load_folder(data_args.image_dir, data_args.mask_dir, num_labels=num_labels, split="test")
    return load_data(data_args, num_labels, seed)


def main() -> None:
    (args, data_args), _ = parse_config((EvaluateArguments, DataArguments), description=__doc__, usage=USAGE)
    if args.adapter is None:
        raise ValueError("--adapter is required: a run folder (recipes/train.py output_dir) or a Hub id.")
    accelerator = Accelerator()
    run_folder = resolve_pretrained(args.adapter, subfolder=args.subfolder, revision=args.revision)
    data_args, seed, recorded = data_arguments(args, data_args, run_folder)
    record = read_run_file(run_folder)
    num_labels = record["model"]["num_labels"]
    prompted = record["model"].get("task") == "prompted"
    data = load_evaluation_data(data_args, num_labels, seed, recorded, prompted)
    split = args.split or ("test" if "test" in data else data_args.eval_split)
    if split not in data:
        raise ValueError(f"The data has no split {split!r}; it has {sorted(data)}. Choose one with --split.")
    verify_data_files(data_args, data[split])  # every file, before the model is loaded

    model = load_trained(args.adapter, args.base_model, subfolder=args.subfolder, revision=args.revision)
    image_size = record.get("image_size", input_image_size(model.config))
    if prompted:
        evaluate_prompted(model, accelerator, args, data_args, data[split], split, image_size, seed)
        return
    prepared = prepare_for_sam(data[split], image_size, augmentation=None)
    loader = DataLoader(prepared, batch_size=args.batch_size, collate_fn=sam_collate_fn)
    model, loader = accelerator.prepare(model, loader)
    results = evaluate(model, loader, accelerator, num_labels)
    if accelerator.is_main_process:
        source = data_args.benchmark or data_args.hub_dataset or data_args.image_dir
        task = TASKS.get(data_args.benchmark, "binary" if num_labels == 1 else "multiclass")
        columns = PAPER_COLUMNS[task]
        print(f"| {source} {split} ({len(prepared)} images) | " + " | ".join(columns) + " |")
        print("| --- |" + " ---: |" * len(columns))
        print(f"| {args.adapter} | " + " | ".join(f"{100 * results[c]:.2f}" for c in columns) + " |")
        if args.output is not None:
            write_json_atomic(Path(args.output), {"split": split, "images": len(prepared), **results})


# the interactive columns printed for a prompted run (mIoU x100, NoC as numbers of clicks)
PROMPTED_COLUMNS = ("miou_box", "miou@1", "miou@3", "miou@5", "miou_clicks", "noc@85", "noc@90")


def evaluate_prompted(model, accelerator, args, data_args, split_data, split: str, image_size: int, seed: int) -> None:
    """Box and click evaluation of a prompted run on the objects of `split_data` (at most `max_objects` per image,
    the same ones at every call), printed as a Markdown row and written to `--output`."""
    prepared = prepare_objects_for_sam(
        split_data, image_size, augmentation=None, max_objects=data_args.max_objects, seed=seed
    )
    loader = accelerator.prepare(DataLoader(prepared, batch_size=args.batch_size, collate_fn=sam_objects_collate_fn))
    results = evaluate_interactive(
        accelerator.unwrap_model(model).to(accelerator.device), loader, args.max_clicks, accelerator=accelerator
    )
    if accelerator.is_main_process:
        source = data_args.benchmark or data_args.image_dir
        columns = [c for c in PROMPTED_COLUMNS if c in results]
        print(f"| {source} {split} ({results['num_objects']} objects) | " + " | ".join(columns) + " |")
        print("| --- |" + " ---: |" * len(columns))
        cells = [f"{results[c]:.2f}" if c.startswith("noc") else f"{100 * results[c]:.2f}" for c in columns]
        print(f"| {args.adapter} | " + " | ".join(cells) + " |")
        if args.output is not None:
            write_json_atomic(Path(args.output), {"split": split, "images": len(prepared), **results})


if __name__ == "__main__":
    main()
