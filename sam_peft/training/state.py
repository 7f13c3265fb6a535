"""The training loop's own state (step, epoch, logs, best metric) and its checkpoints: complete or absent, whatever
instant a kill comes at.

A checkpoint `output_dir/checkpoints/checkpoint_<step>/` holds:

- the trained weights (`save_trained`: an adapter, or the trained decoder), never the frozen base model;
- `optimizer.bin`, `scheduler.bin` and `random_states_<process>.pkl` (one per process), from Accelerate;
- `trainer_state.json`: this module's `TrainingState`, as JSON;
- `best/`: the trained weights of the best evaluation so far (absent before the first evaluation);
- `checkpoint.json`, written last: the step, epoch, number of processes, write sequence and the size and SHA-256 of
  every other file. A `checkpoint_<step>` folder without it is incomplete: reported, skipped, never chosen and
  never deleted. Folders under temporary names (`.tmp-*`: a write or a removal that a kill interrupted) are
  removed, with a message, by the next run.

A checkpoint is written under a temporary name, flushed to the disk and renamed into place (`replace_directory`);
the oldest complete checkpoints beyond `keep` are removed only after that. Reading checks every file against
`checkpoint.json` and unpickles nothing but tensors and plain values (`weights_only=True`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from huggingface_hub.utils.sha import sha_fileobj

from .files import TEMPORARY_PREFIX, replace_directory, write_json_atomic

CHECKPOINT_PREFIX = "checkpoint_"
MANIFEST_FILE = "checkpoint.json"
STATE_FILE = "trainer_state.json"
BEST_DIR = "best"
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: incomplete, damaged, or from another launch configuration."""


@dataclass
class TrainingState:
    """Counters and logs of the loop, saved in every checkpoint as `trainer_state.json`."""

    step: int = 0
    epoch: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    baseline: dict | None = None
    train_log: list[dict] = field(default_factory=list)
    eval_log: list[dict] = field(default_factory=list)

    @classmethod
    def from_file(cls, path: Path) -> TrainingState:
        """Reads `trainer_state.json`.

        Raises:
            CheckpointError: naming the file when it is not the JSON of a `TrainingState`.
        """
        try:
            values = json.loads(path.read_text())
            names = {f.name for f in fields(cls)}
            if not isinstance(values, dict) or set(values) != names:
                raise ValueError(f"expected the keys {sorted(names)}")
            return cls(**values)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{path} is not a readable training state: {error}") from error


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return sha_fileobj(file).hex()


def _checkpoint_step(path: Path) -> int | None:
    suffix = path.name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


class CheckpointFolder:
    """The checkpoints of one run, `output_dir/checkpoints`, of which the `keep` newest complete ones are kept.

    "Newest" is the order of writing (a sequence number in `checkpoint.json`), so that resuming from an older
    checkpoint and training on makes the new checkpoints the latest ones.
    """

    def __init__(self, output_dir: str | os.PathLike, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}.")
        self.root = Path(output_dir) / "checkpoints"
        self.keep = keep
        self.last_saved: Path | None = None  # the checkpoint this run's state descends from

    # Reading

    def manifest(self, path: Path) -> dict | None:
        """The `checkpoint.json` of a complete checkpoint folder, or None when it has none (incomplete)."""
        try:
            return json.loads((path / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            return None

    def complete(self) -> list[Path]:
        """The complete checkpoints, oldest first."""
        found = []
        for path in self.root.glob(f"{CHECKPOINT_PREFIX}*") if self.root.is_dir() else ():
            manifest = self.manifest(path) if _checkpoint_step(path) is not None else None
            if manifest is not None:
                found.append((manifest.get("sequence", 0), path))
        return [path for _, path in sorted(found)]

    def incomplete(self) -> list[Path]:
        """Folders left by interrupted writes or removals, or checkpoint folders without `checkpoint.json`."""
        if not self.root.is_dir():
            return []
        complete = set(self.complete())
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p not in complete)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        complete = self.complete()
        return complete[-1] if complete else None

    def resolve(self, name: str) -> Path | None:
        """`"latest"` (the newest complete checkpoint; None when there is none yet) or a checkpoint folder.

        Raises:
            FileNotFoundError: when the named folder does not exist.
            CheckpointError: when the named folder is incomplete.
        """
        if name == "latest":
            return self.latest()
        path = Path(name)
        if not path.is_dir():
            raise FileNotFoundError(f"Checkpoint folder {path} does not exist.")
        if self.manifest(path) is None:
            raise CheckpointError(
                f"{path} is not a complete sam-peft checkpoint ({MANIFEST_FILE} is missing: its writing was "
                "interrupted, or an older sam-peft wrote it). Resume from a complete one, or from 'latest'."
            )
        return path

    def verify(self, path: Path, num_processes: int) -> dict:
        """Checks every file of the checkpoint `path` against its `checkpoint.json`; returns the manifest.

        Raises:
            CheckpointError: naming the missing or damaged file, or when it was written by another number of
                processes (the global batch, the data order and the random states would differ).
        """
        manifest = self.manifest(path)
        if manifest is None or manifest.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path / MANIFEST_FILE} is missing or not a sam-peft checkpoint manifest.")
        if manifest["num_processes"] != num_processes:
            raise CheckpointError(
                f"{path} was written by {manifest['num_processes']} process(es) and this run has {num_processes}: "
                "the global batch, the data order and the random states would differ. Resume with "
                f"{manifest['num_processes']} process(es), or start a new run."
            )
        for name, expected in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"Checkpoint file {file} is missing; resume from another checkpoint.")
            if file.stat().st_size != expected["size"] or _sha256(file) != expected["sha256"]:
                raise CheckpointError(
                    f"Checkpoint file {file} is damaged (its size or SHA-256 differs from {MANIFEST_FILE}); resume "
                    f"from another checkpoint: {', '.join(p.name for p in self.complete() if p != path) or 'none'}."
                )
        return manifest

    def load(self, accelerator: Accelerator, path: Path) -> TrainingState:
        """Restores the prepared objects (through the registered hooks), the random states of this process and the
        loop state from the checkpoint `path`; returns the loop state.

        Raises:
            CheckpointError: see `verify`, or a file that does not load as plain tensors and values.
        """
        self.verify(path, accelerator.num_processes)
        random_states = path / f"random_states_{accelerator.process_index}.pkl"
        try:
            accelerate_load(random_states, weights_only=True)  # Accelerate skips an unreadable one in silence
            accelerator.load_state(str(path), load_kwargs={"weights_only": True})
        except Exception as error:
            raise CheckpointError(f"Cannot resume from {path}: {error}") from error
        self.last_saved = path
        return TrainingState.from_file(path / STATE_FILE)

    # Writing

    def save(
        self,
        accelerator: Accelerator,
        state: TrainingState,
        save_weights: Callable[[Path], None],
        new_best: bool,
    ) -> Path:
        """Writes the checkpoint of `state.step` atomically (call it on every process), then removes the oldest
        complete checkpoints beyond `keep`.

        `save_weights(folder)` writes the trained weights; with `new_best` they are also the best ones, otherwise
        `best/` is carried over from the checkpoint this state descends from.
        """
        final = self.root / f"{CHECKPOINT_PREFIX}{state.step}"
        temporary = self.root / f"{TEMPORARY_PREFIX}{final.name}"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            if temporary.exists():  # an earlier attempt at this checkpoint in this process failed
                shutil.rmtree(temporary)
            temporary.mkdir()
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        if accelerator.is_main_process:
            write_json_atomic(temporary / STATE_FILE, asdict(state))
            previous_best = self.last_saved / BEST_DIR if self.last_saved is not None else None
            if new_best:
                save_weights(temporary / BEST_DIR)
            elif previous_best is not None and previous_best.is_dir():
                shutil.copytree(previous_best, temporary / BEST_DIR)
        accelerator.wait_for_everyone()  # every process's random states are written
        if accelerator.is_main_process:
            files = sorted(p for p in temporary.rglob("*") if p.is_file())
            complete = self.complete()
            sequence = max((self.manifest(p)["sequence"] for p in complete), default=0) + 1
            write_json_atomic(
                temporary / MANIFEST_FILE,
                {
                    "format": CHECKPOINT_FORMAT,
                    "step": state.step,
                    "epoch": state.epoch,
                    "sequence": sequence,
                    "num_processes": accelerator.num_processes,
                    "files": {
                        p.relative_to(temporary).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
                        for p in files
                    },
                },
            )
            replace_directory(temporary, final)
            self.rotate()
        accelerator.wait_for_everyone()
        self.last_saved = final
        return final

    def rotate(self) -> None:
        """Removes the oldest complete checkpoints beyond `keep`, each renamed aside first (a kill while it is being
        removed leaves no damaged checkpoint under a checkpoint's name)."""
        for path in self.complete()[: -self.keep]:
            aside = path.with_name(f"{TEMPORARY_PREFIX}old-{path.name}")
            os.replace(path, aside)
            shutil.rmtree(aside)

    def remove_leftovers(self) -> list[Path]:
        """Removes what interrupted writes and removals left (temporary names only; never a `checkpoint_<step>`
        folder, complete or not); returns the removed paths."""
        leftovers = sorted(self.root.glob(f"{TEMPORARY_PREFIX}*")) if self.root.is_dir() else []
        for path in leftovers:
            shutil.rmtree(path)
        return leftovers
