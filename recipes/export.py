"""Export a trained run (a local output folder or a Hub repository) to ONNX or to a `torch.export` program.

    python recipes/export.py --adapter outputs/quickstart --output_dir exported/
    python recipes/export.py --adapter outputs/prompted --output_dir exported/ --prompt boxes
    python recipes/export.py --adapter user/sam-lora-kvasir --subfolder best --output_dir out/ --format torch_export

A prompt-free run gives `model.onnx` (`pixel_values (B, 3, S, S) -> logits`; crop and resize the logits to each
image's original size outside the graph: `sam_peft.modeling.logits_at_original_size`); a prompted run gives
`image_encoder.onnx` (`pixel_values -> image_embeddings`) and `prompt_decoder.onnx` (`image_embeddings` and the
prompt inputs chosen by --prompt -> `pred_masks, iou_scores`). LoRA is merged into the weights first; the other
methods are exported unmerged. Existing files are not replaced without --overwrite. Needs
`pip install "sam-peft[export]"` for ONNX. See `sam_peft.export` for the details and the Python API.

Exit status: 0 on success, 2 when the run, the arguments or the output folder are refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sam_peft.export import FORMATS, PROMPTS, ExportError, export
from sam_peft.training import load_trained

USAGE = (
    "python recipes/export.py --adapter RUN_OR_HUB_ID --output_dir OUT [--format onnx|torch_export] "
    "[--prompt points|boxes|points_and_boxes]"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", required=True, help="A run folder or a Hub id (what recipes/train.py wrote).")
    parser.add_argument("--output_dir", required=True, help="Folder to write the graphs into.")
    parser.add_argument("--format", default="onnx", choices=FORMATS)
    parser.add_argument("--image_size", type=int, default=None, help="Input side (default: the model's).")
    parser.add_argument("--prompt", default="points", choices=PROMPTS, help="Prompted runs: the decoder's inputs.")
    parser.add_argument("--multimask_output", action="store_true", help="Prompted runs: SAM's three masks.")
    parser.add_argument("--subfolder", default=None, help="Subfolder of the run (e.g. best).")
    parser.add_argument("--revision", default=None, help="Hub revision of the run.")
    parser.add_argument("--base_model", default=None, help="Base model to load the run on (default: its own).")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing files of the same names.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = load_trained(args.adapter, args.base_model, subfolder=args.subfolder, revision=args.revision)
        files = export(
            model,
            args.output_dir,
            format=args.format,
            image_size=args.image_size,
            prompt=args.prompt,
            multimask_output=args.multimask_output,
            overwrite=args.overwrite,
        )
    except (ExportError, FileExistsError, FileNotFoundError, ImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
