"""Conv-LoRA's cost relative to LoRA: training-step and inference time ratios, measured side by side.

Both models are built from the same random SAM (ViT-B by default), adapt the same qkv layers (r=3, alpha=32)
and train the mask decoder, and see the same batch. Runs alternate A B A B after a warm-up and the median of
each is reported (benchmarks/README.md). The last line printed is the training-step ratio and the inference
ratio, for parsing.

    python benchmarks/conv_lora_cost.py                                 # CPU: ViT-B, 512 px, batch 2
    python benchmarks/conv_lora_cost.py --device cuda --image-size 1024 --variant vit-h --batch-size 4 --bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import run_record
from peft import LoraConfig, get_peft_model

from sam_peft import ConvLoraConfig, auxiliary_loss, random_sam, sam_config
from sam_peft.tuners.conv_lora import SAM_QKV_TARGET

# Paper, Table 14 (one V100, ISIC 2017): iterations per second.
PAPER_TRAIN_RATIO = 1.64 / 1.22
PAPER_INFERENCE_RATIO = 4.62 / 3.64


def build(method: str, args: argparse.Namespace) -> torch.nn.Module:
    sam = random_sam(args.variant, image_size=args.image_size, seed=0)
    if method == "lora":
        config = LoraConfig(r=3, lora_alpha=32, target_modules=SAM_QKV_TARGET, modules_to_save=["mask_decoder"])
    else:
        config = ConvLoraConfig(modules_to_save=["mask_decoder"])
    model = get_peft_model(sam, config).to(args.device)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_train_step(model, optimizer, pixel_values, target, args):
    def step() -> None:
        model.train()
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(pixel_values=pixel_values, multimask_output=False).pred_masks[:, 0, 0]
            loss = F.binary_cross_entropy_with_logits(logits.float(), target) + auxiliary_loss(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def make_inference_step(model, pixel_values, args):
    def step() -> None:
        model.eval()
        with torch.inference_mode(), torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            model(pixel_values=pixel_values, multimask_output=False)

    return step


def alternate(steps: dict, warmup: int, repeats: int, device: str) -> dict[str, list[float]]:
    """Run each step `warmup` times, then `repeats` rounds of A B A B ...; seconds per run."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit-b", choices=["tiny", "vit-b", "vit-l", "vit-h"])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing of vision blocks")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "conv_lora_cost.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
    mask_size = 4 * args.image_size // sam_config(args.variant).vision_config.patch_size  # decoder output
    target = (torch.rand(args.batch_size, mask_size, mask_size, device=args.device) > 0.5).float()

    models = {name: build(name, args) for name in ("lora", "conv_lora")}
    trainable = {name: m.get_nb_trainable_parameters()[0] for name, m in models.items()}
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad]) for name, m in models.items()}
    train = alternate(
        {n: make_train_step(m, optimizers[n], pixel_values, target, args) for n, m in models.items()},
        args.warmup,
        args.repeats,
        args.device,
    )
    infer = alternate(
        {n: make_inference_step(m, pixel_values, args) for n, m in models.items()},
        args.warmup,
        args.repeats,
        args.device,
    )
    median = {
        phase: {name: statistics.median(t) for name, t in times.items()}
        for phase, times in (("train_step", train), ("inference", infer))
    }
    ratios = {phase: m["conv_lora"] / m["lora"] for phase, m in median.items()}
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"Conv-LoRA vs LoRA on {args.variant}, {args.image_size} px, batch {args.batch_size}, {device_name}")
    print(f"trainable parameters: LoRA {trainable['lora']:,}, Conv-LoRA {trainable['conv_lora']:,}")
    print("| phase | LoRA s | Conv-LoRA s | ratio | paper ratio |\n|---|---|---|---|---|")
    for phase, paper in (("train_step", PAPER_TRAIN_RATIO), ("inference", PAPER_INFERENCE_RATIO)):
        m = median[phase]
        print(f"| {phase} | {m['lora']:.4f} | {m['conv_lora']:.4f} | {ratios[phase]:.3f} | {paper:.2f} |")
    result = {
        **run_record("conv_lora_cost", args, device_name),
        "trainable_parameters": trainable,
        "seconds": {"train_step": train, "inference": infer},
        "median_seconds": median,
        "ratio": ratios,
        "paper_ratio": {"train_step": PAPER_TRAIN_RATIO, "inference": PAPER_INFERENCE_RATIO},
        "peak_memory_gib": peak,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"train_step_ratio={ratios['train_step']:.3f} inference_ratio={ratios['inference']:.3f}")


if __name__ == "__main__":
    main()
