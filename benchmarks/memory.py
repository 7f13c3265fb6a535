"""Peak training memory of one step: decoder-only, CAD, LoRA, Conv-LoRA, SAM-Adapter and SLoRA, each in a fresh
process.

Every method trains the prompt-free model of the variant's generation (`SamForSemanticSegmentation` by default:
random ViT-B weights with a realistic init, SAM input 1024 px, batch 1, binary structure loss; `--variant
sam2-hiera-s` or `sam3` for the later generations) and its mask decoder; the in-encoder methods (LoRA r=3 and
Conv-LoRA on every qkv, SAM-Adapter on every block, SLoRA r=10 on the last five blocks, without point prompts) also
their adapters, CAD its side network at its own 512 px x 256 channels. A method whose tuner refuses the variant's
architecture (SAM-Adapter on SAM 2) is left out, with its reason printed. `decoder_only_cached` and `cad_cached` are
the same two methods reading the frozen encoder's output (SAM 2 / SAM 3: its FPN levels) from an `EmbeddingCache`
(filled by the warm-up step), as every epoch after the first does. Each method runs in its own subprocess, so one
method's peak cannot hide in another's. The worker
builds the model and AdamW, runs one warm-up step (optimizer state, allocator and kernel caches), then measures a
second step (forward, backward, optimizer step):

- CPU: the peak resident set size during the step above the resident set before it (Linux: the VmHWM mark is
  reset through /proc/self/clear_refs), with glibc's mmap threshold fixed at 64 KiB so that freed tensors go back
  to the system and the RSS follows live memory;
- GPU: `torch.cuda.max_memory_allocated()` during the step minus `memory_allocated()` before it.

    python benchmarks/memory.py                                       # CPU: ViT-B, 1024 px, batch 1
    python benchmarks/memory.py --device cuda                         # GPU
    python benchmarks/memory.py --methods cad lora --image-size 512   # a subset, a smaller SAM input
    python benchmarks/memory.py --variant sam2-hiera-s                # SAM 2.1 (or sam3): every method that applies

The last line printed is `cad/lora=<ratio> cad/sam_adapter=<ratio> decoder_only/lora=<ratio> cad_cached/lora=<ratio>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _common import run_record, step_peak_memory
from peft import LoraConfig, get_peft_model

from sam_peft._registration import register_tuner
from sam_peft.modeling import PROMPT_FREE_CLASSES, VARIANTS, image_embedding_channels, sam_config
from sam_peft.modeling.random_sam import init_vision_weights_
from sam_peft.training.embedding_cache import EmbeddingCache
from sam_peft.tuners.cad import CAD, CadConfig, CadModel
from sam_peft.tuners.conv_lora import ConvLoraConfig
from sam_peft.tuners.sam_adapter import SAM_ADAPTER, SamAdapterConfig, SamAdapterModel
from sam_peft.tuners.slora import SLORA, SloraConfig, SloraModel
from sam_peft.tuners.targets import QKV_TARGETS

register_tuner(CAD, CadConfig, CadModel, CadModel.prefix)
register_tuner(SAM_ADAPTER, SamAdapterConfig, SamAdapterModel, SamAdapterModel.prefix)
register_tuner(SLORA, SloraConfig, SloraModel, SloraModel.prefix)

METHODS = ("decoder_only", "cad", "lora", "conv_lora", "sam_adapter", "slora", "decoder_only_cached", "cad_cached")
# Paper (CAD, Table 4): CAD's training memory is below half of SAM-Adapter's.
PAPER_CAD_OVER_SAM_ADAPTER = 0.5
MIB = 2**20


def build(method: str, variant: str, image_size: int, device: str | None = None) -> torch.nn.Module:
    """The prompt-free SAM of `variant` (any generation) at `image_size` px, prepared for training with `method`
    (on `device` at construction: "meta" builds no weights)."""
    torch.manual_seed(0)
    config = sam_config(variant, image_size)
    with torch.device(device or "cpu"):
        model = PROMPT_FREE_CLASSES[config.model_type](config)
    if device != "meta":
        init_vision_weights_(model)
    if method == "decoder_only":
        return model.freeze_encoders()
    targets = QKV_TARGETS[config.model_type]
    peft_configs = {
        "cad": CadConfig(channels=image_embedding_channels(config)),
        "lora": LoraConfig(r=3, lora_alpha=32, target_modules=targets, modules_to_save=["mask_decoder"]),
        "conv_lora": ConvLoraConfig(),
        "sam_adapter": SamAdapterConfig(),
        "slora": SloraConfig(),
    }
    return get_peft_model(model, peft_configs[method])


def refusal(method: str, variant: str) -> str | None:
    """Why `method`'s tuner does not apply to `variant`'s architecture (its own error), or None when it does."""
    try:
        build(method.removesuffix("_cached"), variant, sam_config(variant).prompt_encoder_config.image_size, "meta")
    except ValueError as error:
        if "cannot adapt" in str(error):
            return str(error)
        raise
    return None


def worker(method: str, args: argparse.Namespace) -> dict:
    """Build `method`'s model, warm up one step, measure the next; returns the measurement."""
    device = torch.device(args.device)
    model = build(method.removesuffix("_cached"), args.variant, args.image_size).to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device)
    labels = (torch.rand(args.batch_size, args.image_size, args.image_size, generator=generator) > 0.5).long()
    labels = labels.to(device)

    cache = None
    if method.endswith("_cached"):
        cache = EmbeddingCache(tempfile.mkdtemp(prefix="sam_peft_memory_"), model)

    def step() -> None:
        if cache is None:
            loss = model(pixel_values=pixel_values, labels=labels).loss
        else:
            loss = model(**cache.model_inputs(pixel_values), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    resident, peak, seconds = step_peak_memory(step, device)
    if cache is not None:
        shutil.rmtree(cache.cache_dir)
    return {
        "method": method,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "resident_mib": resident / MIB,
        "peak_above_resident_mib": (peak - resident) / MIB,
        "step_seconds": seconds,
    }


def run_in_subprocess(method: str, args: argparse.Namespace) -> dict:
    """Run `worker(method)` in a fresh interpreter and return its result (the last line it prints)."""
    command = [sys.executable, __file__, "--worker", method, "--variant", args.variant]
    command += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--device", args.device]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variant", "--base", default="vit-b", choices=VARIANTS, help="a sam_peft.random_sam variant (any generation)"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="SAM's input size (default: the variant's; CAD's own is 512)"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="default: all that apply")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "memory.json")
    args = parser.parse_args()
    config = sam_config(args.variant)
    args.image_size = args.image_size or config.prompt_encoder_config.image_size
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    requested = args.methods is not None
    args.methods = list(args.methods or METHODS)
    for method in list(args.methods):
        reason = refusal(method, args.variant)
        if reason is not None:
            if requested:
                parser.error(reason)
            print(f"skipped {method}: {reason}", flush=True)
            args.methods.remove(method)

    results = {}
    for method in args.methods:
        results[method] = run_in_subprocess(method, args)
        print(f"measured {method}: {results[method]['peak_above_resident_mib']:.0f} MiB", flush=True)

    kind = "max_memory_allocated above allocated" if args.device.startswith("cuda") else "peak RSS above resident"
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    lora_peak = results.get("lora", {}).get("peak_above_resident_mib")
    print(
        f"\nPeak training memory of one step, {args.variant}, SAM input {args.image_size} px, batch {args.batch_size}, "
        f"{device_name} ({kind})"
    )
    print("| method | trainable params | resident MiB | peak above resident MiB | / LoRA | step s |")
    print("|---|---|---|---|---|---|")
    for method, r in results.items():
        ratio = f"{r['peak_above_resident_mib'] / lora_peak:.3f}" if lora_peak else "-"
        print(
            f"| {method} | {r['trainable_parameters']:,} | {r['resident_mib']:.0f} | "
            f"{r['peak_above_resident_mib']:.0f} | {ratio} | {r['step_seconds']:.1f} |"
        )

    def ratio(numerator: str, denominator: str) -> float | None:
        if numerator not in results or denominator not in results:
            return None
        return results[numerator]["peak_above_resident_mib"] / results[denominator]["peak_above_resident_mib"]

    ratios = {
        "cad/lora": ratio("cad", "lora"),
        "cad/sam_adapter": ratio("cad", "sam_adapter"),
        "decoder_only/lora": ratio("decoder_only", "lora"),
        "cad_cached/lora": ratio("cad_cached", "lora"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                **run_record("memory", args, device_name, skip=("worker",)),
                "measure": kind,
                "results": results,
                "ratios": ratios,
                "goals": {"cad/lora": 0.35, "cad/sam_adapter": PAPER_CAD_OVER_SAM_ADAPTER},
            },
            indent=2,
        )
    )
    print(" ".join(f"{name}={value:.3f}" for name, value in ratios.items() if value is not None))


if __name__ == "__main__":
    main()
