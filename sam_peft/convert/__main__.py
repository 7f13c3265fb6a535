"""`python -m sam_peft.convert`: the command-line shell around `sam_peft.convert.convert_checkpoint`."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .. import hub
from .api import CONVERTERS, SOURCES, convert_checkpoint
from .errors import ConversionError

DESCRIPTION = "Convert an official checkpoint of a SAM adapter to a sam-peft adapter."


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m sam_peft.convert",
        description=DESCRIPTION,
        epilog="Formats: " + "; ".join(f"{method}: {source}" for method, source in SOURCES.items()) + ".",
    )
    parser.add_argument("--method", required=True, choices=list(CONVERTERS), help="The checkpoint's method.")
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help="The authors' checkpoint file.")
    parser.add_argument(
        "--base_model", required=True, metavar="ID_OR_DIR", help="The SAM it was trained on (Hub id or folder)."
    )
    parser.add_argument("--output_dir", required=True, metavar="DIR", help="Where to save the sam-peft adapter.")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="Also push the adapter to this Hub repository.")
    parser.add_argument(
        "--lora_alpha",
        type=float,
        metavar="ALPHA",
        help="conv_lora only: AutoGluon's optim.lora.alpha, when no config.yaml lies beside the checkpoint.",
    )
    return parser


def check_hub_access(repo_id: str) -> None:
    """Fails before converting when `repo_id` cannot be pushed to (when this sam-peft can check it)."""
    check = getattr(hub, "check_push_access", None)
    if check is not None:
        check(repo_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command with `argv` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    options = {} if args.lora_alpha is None else {"lora_alpha": args.lora_alpha}
    try:
        if args.push_to_hub:
            check_hub_access(args.push_to_hub)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            model = convert_checkpoint(args.method, args.checkpoint, args.base_model, args.output_dir, **options)
        if args.push_to_hub:
            model.push_to_hub(args.push_to_hub)
    except (ConversionError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"Saved the {args.method} adapter to {args.output_dir}"
        + (f" and {args.push_to_hub}" if args.push_to_hub else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
