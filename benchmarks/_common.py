"""What every benchmark records besides its numbers: its name, arguments, device and library versions."""

from __future__ import annotations

import argparse
from pathlib import Path

import peft
import torch
import transformers

import sam_peft


def run_record(benchmark: str, args: argparse.Namespace, device: str, skip: tuple[str, ...] = ()) -> dict:
    """The header of a benchmark's results JSON: `benchmark`, `config` (the arguments but `skip`), `device`,
    `versions` (torch, transformers, peft, sam_peft)."""
    return {
        "benchmark": benchmark,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip},
        "device": device,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "sam_peft": sam_peft.__version__,
        },
    }
