"""Runs recipes/train.py and kills it (os._exit(137), as SIGKILL would) at one chosen file-system event, leaving
what a real kill leaves: the file being written cut in half, a rename not done, a removal half done.

    python tests/killed_train.py ARGS...        with KILL_LOG=events.txt: runs to the end, listing the events
                                                with KILL_AT="<event>": dies at the first event equal to it

An event is "<kind> <path relative to the output folder>", kind one of write (a tensor or text file), replace
(a file or folder renamed into place) or remove (a folder removed).
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys
from pathlib import Path

import safetensors.torch
import torch

TRAIN = Path(__file__).resolve().parents[1] / "recipes" / "train.py"
OUTPUT_DIR = Path(sys.argv[sys.argv.index("--output_dir") + 1]).resolve()
LOG = os.environ.get("KILL_LOG")
KILL_AT = os.environ.get("KILL_AT")


def _event(kind: str, path) -> str | None:
    """Records the event; returns it when the process must die there."""
    path = Path(path).resolve()
    if OUTPUT_DIR not in path.parents:
        return None
    event = f"{kind} {path.relative_to(OUTPUT_DIR).as_posix()}"
    if LOG:
        with open(LOG, "a") as log:
            log.write(event + "\n")
    return event if event == KILL_AT else None


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(137)


def _written(kind: str, write):
    def wrapper(obj, path, *args, **kwargs):
        result = write(obj, path, *args, **kwargs)
        if isinstance(path, (str, os.PathLike)) and _event(kind, path):
            with open(path, "r+b") as file:  # the kill came halfway through the write
                file.truncate(os.path.getsize(path) // 2)
            _die()
        return result

    return wrapper


def _write_text(path, text):
    if _event("write", path):
        Path(path).with_name(f"{files.TEMPORARY_PREFIX}{os.getpid()}-{Path(path).name}").write_text(
            text[: len(text) // 2]
        )
        _die()
    original_write_text(path, text)


def _replace(source, target):
    if _event("replace", target):
        _die()
    original_replace(source, target)


def _rmtree(path, *args, **kwargs):
    if _event("remove", path):
        victims = sorted(p for p in Path(path).rglob("*") if p.is_file())
        for victim in victims[: len(victims) // 2]:
            victim.unlink()
        _die()
    original_rmtree(path, *args, **kwargs)


torch.save = _written("write", torch.save)
safetensors.torch.save_file = _written("write", safetensors.torch.save_file)  # before peft imports it

import sam_peft.training.files as files  # noqa: E402  (after the patch above)

original_write_text, original_replace, original_rmtree = files.write_text_atomic, os.replace, shutil.rmtree
files.write_text_atomic = _write_text
os.replace = _replace
shutil.rmtree = _rmtree

sys.argv = [str(TRAIN), *sys.argv[1:]]
runpy.run_path(str(TRAIN), run_name="__main__")
