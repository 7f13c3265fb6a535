"""Segment images with a trained run (a local output folder or a Hub repository).

    python recipes/predict.py --adapter outputs/quickstart --input photos/ --output_dir masks/ --overlays
    python recipes/predict.py --adapter user/sam-conv-lora-kvasir --subfolder best --input image.jpg --output_dir out/
    python recipes/predict.py --adapter outputs/prompted --input photos/ --prompts prompts.json --output_dir objects/

--input is an image or a folder, searched recursively; the output folder mirrors its sub-folders. Per image:
`<name>.png`, a 0/255 mask for binary models or a palette PNG of the class ids for multi-class ones; --overlays adds
`<name>_overlay.png` (image | prediction over the image); --save_probabilities adds the probabilities
(`<name>_prob.png`, 8-bit, for binary models; `<name>_prob.npy`, float16 (K, H, W), for multi-class ones).
`<name>` is the image's relative path without its extension, or with it where two images would share outputs
(`a.png` and `a.jpg` -> `a.png.png` and `a.jpg.png`).

The output folder must be new, empty, or hold an earlier prediction (recorded in its predictions.json), which is
replaced; it may not be, or lie inside, the input folder. Images that fail are listed at the end, and the exit
status is then 1 (2: nothing predicted: the input, the output folder, the run or the prompts are refused).

Prompted runs (trained with `task: prompted`) segment what prompts point at and need --prompts: a JSON object
mapping each image, by its path relative to --input with its extension and / separators (a single image: its file
name), to a list of prompts, each `{"box": [x0, y0, x1, y1]}` and / or `{"points": [[x, y], ...], "labels": [1, 0,
...]}` (labels 1 on the object, 0 off it; default all 1), optionally with an `"id"`; coordinates in the original
image's pixels:

    {"street.jpg": [{"box": [10, 20, 200, 180], "id": "car"}, {"points": [[320, 95]]}],
     "day/field.png": [{"points": [[40, 50], [60, 52]], "labels": [1, 0]}]}

A single positive point gets SAM's best of three masks (highest predicted IoU). Per prompted image, `<name>.png` is
an instance label image (0 background, prompt i's mask i + 1, later prompts over earlier ones; a palette PNG, 16-bit
greyscale beyond 255 prompts), --overlays adds `<name>_overlay.png`, and predictions.json records each prompt's
label value, id and predicted IoU ("objects"). Images that prompts.json does not name are skipped and listed. The
prompts are checked (names, keys, empty boxes, coordinates inside the image, labels) before the model loads; any
problem exits with status 2. A prompt-free run refuses --prompts, and a prompted run without --prompts exits with
status 2 too: automatic mask generation (a grid of points) would need torchvision, which sam-peft does not use.

An adapter whose base model is a local folder reloads offline; a Hub id loads from the local cache when offline.
See `sam_peft.prediction` and `sam_peft.prompted_prediction` for the Python API.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sam_peft.prediction import check_output_dir, list_inputs, predict_folder
from sam_peft.prompted_prediction import (
    AUTOMATIC_MASKS_UNAVAILABLE,
    PROMPTED_TASK,
    predict_folder_prompted,
    read_prompts,
    run_task,
)
from sam_peft.training import load_trained

USAGE = (
    "python recipes/predict.py --adapter RUN_OR_HUB_ID --input IMAGE_OR_FOLDER --output_dir OUT [--overlays] "
    "[--save_probabilities] [--prompts PROMPTS.json]"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", required=True, help="Run folder (recipes/train.py output_dir) or Hub id.")
    parser.add_argument("--subfolder", default=None, help="Subfolder of the Hub repository.")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit.")
    parser.add_argument("--base_model", default=None, help="Base SAM; default: the one the run was trained on.")
    parser.add_argument("--input", type=Path, required=True, help="An image or a folder of images (recursive).")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--overlays", action="store_true", help="Also write image | prediction overlays.")
    parser.add_argument("--save_probabilities", action="store_true", help="Also write the probability maps.")
    parser.add_argument(
        "--prompts", type=Path, default=None, help="Boxes / points per image (JSON) for a prompted run; see above."
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def describe_adapter(args: argparse.Namespace) -> str:
    """The adapter as the manifest records it: `user/repo (subfolder=best, revision=v1)`."""
    options = [f"{key}={getattr(args, key)}" for key in ("subfolder", "revision", "base_model") if getattr(args, key)]
    return f"{args.adapter} ({', '.join(options)})" if options else str(args.adapter)


def check_task(args: argparse.Namespace, task: str) -> None:
    """Refuses options that the run's task does not take.

    Raises:
        ValueError: --prompts for a prompt-free run; no --prompts, or --save_probabilities, for a prompted one.
    """
    if task != PROMPTED_TASK:
        if args.prompts is not None:
            raise ValueError(
                f"--prompts: {args.adapter} is a prompt-free run (task: {task}): it segments whole images and takes "
                "no prompts. Leave out --prompts, or use a run trained with task: prompted."
            )
        return
    if args.prompts is None:
        raise ValueError(
            f"{args.adapter} is a prompted run (task: prompted): it segments what prompts point at, so it needs "
            f"--prompts prompts.json (boxes / points per image, see --help); {AUTOMATIC_MASKS_UNAVAILABLE}."
        )
    if args.save_probabilities:
        raise ValueError(
            "--save_probabilities is for prompt-free runs; a prompted run writes instance label images, with each "
            "mask's predicted IoU in predictions.json."
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # before loading the model: refusals come at once
        list_inputs(args.input)
        check_output_dir(args.output_dir, args.input)
        task = run_task(args.adapter, subfolder=args.subfolder, revision=args.revision)
        check_task(args, task)
        if task == PROMPTED_TASK:
            read_prompts(args.prompts, args.input)
    except (FileNotFoundError, ValueError) as error:  # ValueError: OutputFolderError, PromptError, colliding names
        print(f"predict.py: error: {error}", file=sys.stderr)
        return 2
    model = load_trained(args.adapter, args.base_model, subfolder=args.subfolder, revision=args.revision)
    if task == PROMPTED_TASK:
        report = predict_folder_prompted(
            model,
            args.input,
            args.output_dir,
            args.prompts,
            batch_size=args.batch_size,
            overlays=args.overlays,
            adapter=describe_adapter(args),
        )
    else:
        report = predict_folder(
            model,
            args.input,
            args.output_dir,
            batch_size=args.batch_size,
            overlays=args.overlays,
            save_probabilities=args.save_probabilities,
            adapter=describe_adapter(args),
        )
    print(report.summary(), file=sys.stderr if report.failed else sys.stdout)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
