"""The output folder of a training run: what an invocation does with it (start, resume, or nothing: the run is
finished), and the guard that keeps a run from touching files it did not write.

A run folder is recognised by `training_config.json` (the settings that define the run, written once the
configuration, the data and the Hub have been validated) and is finished when `sam_peft_run.json` records its
training (written last, after every result file).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .arguments import DataArguments, ModelArguments, TrainArguments
from .checkpoints import DECODER_FILE, RUN_FILE
from .files import TEMPORARY_PREFIX, write_json_atomic
from .state import CheckpointFolder

CONFIG_FILE = "training_config.json"
LOGS_DIR = "logs"
# every top-level name a run of the training recipe writes (besides temporary names): all that overwrite removes
RUN_ENTRIES = frozenset(
    {
        CONFIG_FILE,
        RUN_FILE,
        "checkpoints",
        LOGS_DIR,
        "adapter_config.json",
        "adapter_model.safetensors",
        DECODER_FILE,
        "README.md",
        "metrics.json",
        "training_curves.png",
        "predictions.png",
    }
)
# settings that may change between the invocations of one training (stopping early, extending, resuming, publishing)
RUN_INDEPENDENT = frozenset(
    {
        "resume_from_checkpoint",
        "output_dir",
        "overwrite_output_dir",
        "num_epochs",
        "max_steps",
        "checkpoint_every_steps",
        "push_to_hub",
        "hub_model_id",
        "report_to",
    }
)


def run_config(
    model_args: ModelArguments, data_args: DataArguments, train_args: TrainArguments, num_processes: int
) -> dict:
    """What defines a run: every setting except those of `RUN_INDEPENDENT`, and the number of processes (with the
    per-process batch size, it makes the global batch)."""
    train = {k: v for k, v in asdict(train_args).items() if k not in RUN_INDEPENDENT}
    return {"model": asdict(model_args), "data": asdict(data_args), "train": train, "num_processes": num_processes}


def _is_run_entry(name: str) -> bool:
    return name in RUN_ENTRIES or name.startswith(TEMPORARY_PREFIX)


@dataclass
class RunPlan:
    """What this invocation does with the output folder."""

    finished: bool = False  # the run is complete: nothing to train
    checkpoint: Path | None = None  # resume from it (None: train from the start)
    overwrite: bool = False  # remove what an earlier run wrote before starting
    notes: list[str] = field(default_factory=list)  # to print


def _recorded_training(output_dir: Path) -> dict | None:
    """The `training` record of a finished run (epochs and steps trained), or None."""
    try:
        return json.loads((output_dir / RUN_FILE).read_text()).get("training")
    except (OSError, ValueError):
        return None


def plan_run(output_dir: str | os.PathLike, config: dict, train_args: TrainArguments) -> RunPlan:
    """Decides, reading only, what this invocation does with `output_dir`:

    - an empty or absent folder: a new run (`resume_from_checkpoint latest` finds nothing and starts one);
    - the same run, finished with at least `num_epochs` epochs: nothing (a requeued job exits cleanly);
    - the same run with `resume_from_checkpoint`: resume (also to extend a finished run to more epochs);
    - with `overwrite_output_dir`: a new run, after removing what the earlier run wrote.

    Raises:
        ValueError: naming the files of a folder that holds anything a run did not write (never removed), the
            settings of a different run, checkpoints that would be lost by starting again without
            `overwrite_output_dir`, or `overwrite_output_dir` with a checkpoint inside the folder to resume from.
    """
    output_dir = Path(output_dir)
    checkpoints = CheckpointFolder(output_dir)
    plan = RunPlan(
        notes=[f"Skipping incomplete checkpoint {p} (interrupted writing)." for p in checkpoints.incomplete()]
    )
    resume = train_args.resume_from_checkpoint
    entries = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    if entries and CONFIG_FILE not in entries:
        raise ValueError(
            f"output_dir {output_dir} is not empty and holds no sam-peft run (found {entries[:5]}); choose an empty or "
            "new folder. sam-peft never deletes files it did not write, not even with --overwrite_output_dir."
        )
    if train_args.overwrite_output_dir and entries:
        foreign = [name for name in entries if not _is_run_entry(name)]
        if foreign:
            raise ValueError(
                f"output_dir {output_dir} holds files that no sam-peft run wrote ({foreign[:5]}); "
                "--overwrite_output_dir removes only a run's own files: move these or choose another folder."
            )
        if resume == "latest" or (resume and output_dir.resolve() in Path(resume).resolve().parents):
            raise ValueError(
                "--overwrite_output_dir would delete the checkpoint that --resume_from_checkpoint resumes from; "
                "pass only one of them."
            )
        plan.overwrite = True
        return plan
    if entries:
        _check_same_run(output_dir, config)
    trained = _recorded_training(output_dir) if entries else None
    if trained is not None and trained["epochs"] >= train_args.num_epochs:
        plan.finished = True
        plan.notes.append(
            f"{output_dir} holds this run, finished after {trained['epochs']} epochs ({trained['steps']} steps): "
            f"nothing to do. To train longer, pass a larger --num_epochs with --resume_from_checkpoint latest."
        )
        return plan
    if resume:
        plan.checkpoint = checkpoints.resolve(resume)
        if plan.checkpoint is None:
            plan.notes.append(f"No checkpoint in {checkpoints.root} yet: starting a new run.")
        else:
            checkpoints.verify(plan.checkpoint, config["num_processes"])
        return plan
    if trained is not None:
        raise ValueError(
            f"{output_dir} holds this run, finished after {trained['epochs']} epochs; to train it to "
            f"{train_args.num_epochs} epochs pass --resume_from_checkpoint latest, or --overwrite_output_dir to start "
            "again."
        )
    latest = checkpoints.latest()
    if latest is not None:
        raise ValueError(
            f"{output_dir} holds checkpoints of this run (latest: {latest}); pass --resume_from_checkpoint latest to "
            "continue it, or --overwrite_output_dir to start again."
        )
    return plan


def _check_same_run(output_dir: Path, config: dict) -> None:
    recorded_path = output_dir / CONFIG_FILE
    try:
        recorded = json.loads(recorded_path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{recorded_path} is unreadable ({error}); choose another output_dir.") from error
    differences = [
        f"{group}.{key}: {recorded.get(group, {}).get(key)!r} -> {value!r}"
        for group, values in config.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if recorded.get(group, {}).get(key) != value
    ]
    differences += [
        f"{key}: {recorded.get(key)!r} -> {value!r}"
        for key, value in config.items()
        if not isinstance(value, dict) and recorded.get(key) != value
    ]
    if differences:
        raise ValueError(
            f"output_dir {output_dir} holds a different run ({'; '.join(differences[:5])}); choose another folder or "
            "pass --overwrite_output_dir to replace it."
        )


def claim_output_dir(output_dir: str | os.PathLike, config: dict, plan: RunPlan) -> list[str]:
    """After validation, before the first training step: removes what an earlier run wrote (`plan.overwrite`: only
    the names a run writes) or what its kills left (temporary names), keeps the `keep` newest checkpoints, and
    records this run's configuration. Returns notes on what was removed."""
    output_dir = Path(output_dir)
    notes = []
    if output_dir.is_dir():
        for path in sorted(output_dir.iterdir()):
            if (plan.overwrite and _is_run_entry(path.name)) or path.name.startswith(TEMPORARY_PREFIX):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                notes.append(f"Removed {path}" + ("." if plan.overwrite else ", left by an interrupted run."))
    checkpoints = CheckpointFolder(output_dir)
    notes += [f"Removed {path}, left by an interrupted run." for path in checkpoints.remove_leftovers()]
    checkpoints.rotate()
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / CONFIG_FILE, config)
    return notes
