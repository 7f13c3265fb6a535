"""Second-epoch training time with and without the embedding cache, for CAD and decoder-only tuning.

For each method two identical models train on the same small generated dataset (prompt-free
`SamForSemanticSegmentation`, random ViT-B weights with a realistic init, binary structure loss, AdamW): one runs
its frozen encoder every step, the other reads the encoder's output from an `EmbeddingCache` (float16 on disk,
filled during its first epoch, keyed by a hash of each image's pixel values). After both first epochs, epochs of
the two alternate (A B A B ...) and the median of each is reported (benchmarks/README.md). CAD's adapter always
runs (at its own 512 px x 256 channels), cached or not: it is what a cached CAD epoch still costs. Each method
also reports the floating-point operations of one training step with and without the cache (torch's
FlopCounterMode): their ratio is the most the cache could gain if time followed arithmetic.

    python benchmarks/cache_speed.py                                  # CPU: ViT-B, SAM input 512 px, batch 2
    python benchmarks/cache_speed.py --image-size 1024 --images 2 --batch-size 1
    python benchmarks/cache_speed.py --device cuda --image-size 1024 --images 32 --batch-size 4

The last line printed is `cad_ratio=<no cache / cache> decoder_only_ratio=<no cache / cache>`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import run_record
from peft import get_peft_model
from torch.utils.flop_counter import FlopCounterMode

from sam_peft._registration import register_tuner
from sam_peft.data.synthetic import binary_samples
from sam_peft.modeling import SamForSemanticSegmentation, SamSemanticSegmentationConfig, sam_config
from sam_peft.modeling.random_sam import init_vision_weights_
from sam_peft.training.embedding_cache import EmbeddingCache
from sam_peft.tuners.cad import CAD, CadConfig, CadModel
from sam_peft.tuners.cad.config import IMAGENET_MEAN, IMAGENET_STD

register_tuner(CAD, CadConfig, CadModel, CadModel.prefix)

METHODS = ("cad", "decoder_only")


def build(method: str, variant: str, image_size: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = SamSemanticSegmentationConfig.from_sam_config(sam_config(variant, image_size))
    model = init_vision_weights_(SamForSemanticSegmentation(config))
    model = get_peft_model(model, CadConfig()) if method == "cad" else model.freeze_encoders()
    return model.to(device)


def dataset(images: int, image_size: int, batch_size: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of `(pixel_values (B, 3, S, S) normalised like SamImageProcessor, labels (B, S, S))`."""
    rgb, masks = binary_samples(images, size=image_size, seed=0)
    pixels = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    pixels = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    labels = torch.from_numpy(masks).long()
    return [
        (pixels[i : i + batch_size].to(device), labels[i : i + batch_size].to(device))
        for i in range(0, images, batch_size)
    ]


class Trainer:
    """One model, its optimizer and (optionally) its embedding cache; `epoch()` returns seconds."""

    def __init__(self, model: torch.nn.Module, cache: EmbeddingCache | None, device: str) -> None:
        self.model = model
        self.cache = cache
        self.device = device
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def epoch(self, batches) -> float:
        self.model.train()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for pixel_values, labels in batches:
            if self.cache is None:
                loss = self.model(pixel_values=pixel_values, labels=labels).loss
            else:
                embeddings = self.cache.image_embeddings(pixel_values)
                loss = self.model(image_embeddings=embeddings, labels=labels).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start


def measure(method: str, batches, args: argparse.Namespace, cache_dir: Path) -> dict:
    plain = Trainer(build(method, args.variant, args.image_size, args.device), None, args.device)
    model = build(method, args.variant, args.image_size, args.device)
    cached = Trainer(model, EmbeddingCache(cache_dir / method, model), args.device)
    first = {"without_cache": plain.epoch(batches), "with_cache_filling": cached.epoch(batches)}
    times = {"without_cache": [], "with_cache": []}
    for _ in range(args.repeats):
        times["without_cache"].append(plain.epoch(batches))
        times["with_cache"].append(cached.epoch(batches))
    median = {name: statistics.median(values) for name, values in times.items()}
    flops = {"without_cache": step_flops(plain, batches[:1]), "with_cache": step_flops(cached, batches[:1])}
    return {
        "first_epoch_seconds": first,
        "later_epoch_seconds": times,
        "median_seconds": median,
        "ratio": median["without_cache"] / median["with_cache"],
        "training_step_flops": flops,
        # what the cache can save at best if time followed arithmetic: the encoder's share of a training step
        "flop_ratio": flops["without_cache"] / flops["with_cache"],
        "cache_stats": vars(cached.cache.stats),
    }


def step_flops(trainer: Trainer, batches) -> int:
    """Floating-point operations of one training step (forward, backward; matmuls and convolutions), counted by
    torch's FlopCounterMode on the same inputs."""
    with FlopCounterMode(display=False) as counter:
        trainer.epoch(batches)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit-b", choices=["vit-b", "vit-l", "vit-h"])
    parser.add_argument("--image-size", type=int, default=512, help="SAM's input size (CAD's own input is 512)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="later epochs of each, alternating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "cache_speed.json")
    args = parser.parse_args()

    batches = dataset(args.images, args.image_size, args.batch_size, args.device)
    with tempfile.TemporaryDirectory() as temporary:
        cache_dir = args.cache_dir or Path(temporary)
        results = {}
        for method in args.methods:
            results[method] = measure(method, batches, args, cache_dir)
            print(f"measured {method}: ratio {results[method]['ratio']:.2f}", flush=True)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"\nEpoch time with / without the embedding cache, {args.variant}, SAM input {args.image_size} px, "
        f"{args.images} images, batch {args.batch_size}, {device_name}"
    )
    print(
        "| method | 1st epoch, no cache s | 1st epoch, filling s | later, no cache s | later, cached s | ratio | "
        "step FLOPs no cache / cached |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, r in results.items():
        first, median = r["first_epoch_seconds"], r["median_seconds"]
        print(
            f"| {method} | {first['without_cache']:.2f} | {first['with_cache_filling']:.2f} | "
            f"{median['without_cache']:.2f} | {median['with_cache']:.2f} | {r['ratio']:.2f} | {r['flop_ratio']:.2f} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                **run_record("cache_speed", args, device_name),
                "results": results,
                "goal_ratio": 5.0,
            },
            indent=2,
        )
    )
    print(" ".join(f"{method}_ratio={r['ratio']:.2f}" for method, r in results.items()))


if __name__ == "__main__":
    main()
