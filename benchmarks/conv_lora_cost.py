"""Conv-LoRA's cost relative to LoRA: training-step and inference time ratios, measured side by side.

Both models are built from the same random SAM (ViT-B by default), adapt the same qkv layers (r=3, alpha=32)
and train the mask decoder, and see the same batch. Runs alternate A B A B after a warm-up and the median of
each is reported (benchmarks/README.md). `--dtype bfloat16` runs both under bf16 autocast,
`--activation-checkpointing` recomputes the vision blocks in the backward pass. On CUDA the peak of
`torch.cuda.max_memory_allocated()` over each method's training steps is reported as well (both models stay
resident: measure one method alone with `--methods conv_lora`). Besides the ratio of the medians, the table shows
the median of each round's own ratio and, on CPU, the ratio of process CPU time (which what other jobs on a shared
machine add to a run's wall time does not reach). The last line printed is the training-step ratio and the
inference ratio, for parsing, then on CPU the two CPU-time ratios (with one method: its median seconds and peak
memory). `--methods ... conv_lora_dense` adds Conv-LoRA with the dense expert dispatch
(`ConvLoraConfig(expert_dispatch="dense")`, every expert on every window) and prints its cost relative to the
grouped dispatch.

`--compile` (tiny model, 128 px, batch 2 by default) measures instead, per method (LoRA, Conv-LoRA grouped and
dense), the eager step time, the compiled first call (compile time included) and the compiled steady-state step time,
for the training step (forward and loss compiled, backward through the compiled graph, optimizer eager) and for
inference, each method in a fresh compile cache. The table shows the speed-up of compiling and each method's compile
time (first call minus a steady step) as a ratio to LoRA's; the issue #22 bound is Conv-LoRA's at most 2x. Inductor's
on-disk caches are off, so that every run compiles from scratch.

    python benchmarks/conv_lora_cost.py                                 # CPU: ViT-B, 512 px, batch 2
    python benchmarks/conv_lora_cost.py --compile                       # CPU: tiny, compile vs eager
    python benchmarks/conv_lora_cost.py --image-size 1024 --batch-size 1 --methods conv_lora conv_lora_dense \
        --inference-only                                               # dense vs grouped, ViT-B 1024 px
    python benchmarks/conv_lora_cost.py --device cuda --image-size 1024 --variant vit-h --batch-size 4 --dtype bfloat16
    python benchmarks/conv_lora_cost.py --variant sam2-hiera-s                     # SAM 2.1 (or sam3, 1008 px)
    python benchmarks/conv_lora_cost.py --device cuda --image-size 1024 --variant vit-h --batch-size 1 \
        --dtype bfloat16 --activation-checkpointing --methods conv_lora  # peak memory against the paper's 21.7 GB
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

from sam_peft import ConvLoraConfig, auxiliary_loss, random_sam
from sam_peft.modeling import VARIANTS
from sam_peft.tuners.targets import QKV_TARGETS

# Paper, Table 14 (one V100, ISIC 2017): iterations per second.
PAPER_TRAIN_RATIO = 1.64 / 1.22
PAPER_INFERENCE_RATIO = 4.62 / 3.64
# Paper, Table 3: training memory of Conv-LoRA (MoE) on ISIC, ViT-H by its parameter counts.
PAPER_PEAK_MEMORY_GB = 21.7
METHODS = ("lora", "conv_lora")
CHOICES = (*METHODS, "conv_lora_dense")
NAMES = {"lora": "LoRA", "conv_lora": "Conv-LoRA", "conv_lora_dense": "Conv-LoRA dense"}


def build(method: str, args: argparse.Namespace) -> torch.nn.Module:
    sam = random_sam(args.variant, image_size=args.image_size, seed=0)
    if method == "lora":
        targets = QKV_TARGETS[sam.config.model_type]  # the projections Conv-LoRA adapts by default
        config = LoraConfig(r=3, lora_alpha=32, target_modules=targets, modules_to_save=["mask_decoder"])
    else:
        dispatch = "dense" if method == "conv_lora_dense" else "grouped"
        config = ConvLoraConfig(modules_to_save=["mask_decoder"], expert_dispatch=dispatch)
    model = get_peft_model(sam, config).to(args.device)
    if args.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing of the vision blocks (transformers renamed the method in v5)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(args: argparse.Namespace) -> torch.autocast:
    """bf16 autocast with `--dtype bfloat16`, a disabled context with float32."""
    dtype = getattr(torch, args.dtype)
    return torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)


def make_train_step(model, optimizer, pixel_values, target, args):
    def step() -> None:
        model.train()
        with autocast(args):
            logits = model(pixel_values=pixel_values, multimask_output=False).pred_masks[:, 0, 0]
            loss = F.binary_cross_entropy_with_logits(logits.float(), target) + auxiliary_loss(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_loss(model, pixel_values, target, args) -> torch.Tensor:
    with autocast(args):
        logits = model(pixel_values=pixel_values, multimask_output=False).pred_masks[:, 0, 0]
        return F.binary_cross_entropy_with_logits(logits.float(), target) + auxiliary_loss(model)


def compile_main(args: argparse.Namespace, methods: list[str]) -> None:
    """`--compile`: eager vs compiled step times and compile times per method (see the module docstring)."""
    import torch._dynamo
    import torch._inductor.config
    from torch._dynamo.utils import counters

    # compile from scratch each time: inductor's on-disk caches would turn a rerun's compile time into a cache read
    torch._inductor.config.force_disable_caches = True

    torch.manual_seed(0)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
    rows = {}
    for method in methods:
        model = build(method, args)
        with torch.no_grad():
            size = model(pixel_values=pixel_values[:1], multimask_output=False).pred_masks.shape[-1]
        target = (torch.rand(args.batch_size, size, size, device=args.device) > 0.5).float()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])

        def train_step(loss_fn, model=model, optimizer=optimizer, target=target) -> None:
            model.train()
            loss_fn(model, pixel_values, target, args).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def infer(model=model) -> None:
            model.eval()
            with torch.no_grad(), autocast(args):
                model(pixel_values=pixel_values, multimask_output=False)

        row = {}
        for phase in ("train_step", "inference"):
            eager = (lambda: train_step(training_loss)) if phase == "train_step" else infer
            for _ in range(args.warmup):
                eager()
            eager_s = timed(eager, args)
            torch._dynamo.reset()
            counters.clear()
            if phase == "train_step":
                compiled_loss = torch.compile(training_loss, backend=args.backend)

                def compiled(compiled_loss=compiled_loss) -> None:
                    train_step(compiled_loss)
            else:
                compiled_forward = torch.compile(model, backend=args.backend)

                def compiled(compiled_forward=compiled_forward, model=model) -> None:
                    model.eval()
                    with torch.no_grad(), autocast(args):
                        compiled_forward(pixel_values=pixel_values, multimask_output=False)

            synchronize(args.device)
            start = time.perf_counter()
            compiled()
            synchronize(args.device)
            first_s = time.perf_counter() - start
            graphs = counters["stats"]["unique_graphs"]
            compiled_s = timed(compiled, args)
            row[phase] = {
                "eager_s": eager_s,
                "compiled_first_call_s": first_s,
                "compiled_s": compiled_s,
                "compile_s": first_s - compiled_s,
                "graphs": graphs,
                "graph_breaks": sum(counters["graph_break"].values()),
                "recompilations": counters["stats"]["unique_graphs"] - graphs,
            }
            torch._dynamo.reset()
        rows[method] = row
        del model, optimizer

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    setup = f"{args.variant}, {args.image_size} px, batch {args.batch_size}, {args.dtype}, backend {args.backend}"
    print(f"torch.compile vs eager on {setup}, {device_name}, {torch.get_num_threads()} threads")
    columns = ["eager s", "compiled s", "eager / compiled", "first call s", "compile s", "compile / LoRA's"]
    columns += ["graphs", "breaks", "recompiles"]
    print("| method | phase | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for phase in ("train_step", "inference"):
        for method in methods:
            r = rows[method][phase]
            versus = r["compile_s"] / rows["lora"][phase]["compile_s"] if "lora" in rows else float("nan")
            cells = [r["eager_s"], r["compiled_s"], r["eager_s"] / r["compiled_s"], r["compiled_first_call_s"]]
            cells = [f"{c:.4f}" for c in cells] + [f"{r['compile_s']:.2f}", f"{versus:.2f}"]
            cells += [str(r["graphs"]), str(r["graph_breaks"]), str(r["recompilations"])]
            print(f"| {NAMES[method]} | {phase} | " + " | ".join(cells) + " |")
    output = args.output.with_name(args.output.stem + "_compile.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {**run_record("conv_lora_cost_compile", args, device_name), "results": rows}
    output.write_text(json.dumps(record, indent=2))
    if "lora" in rows:
        ratios = {
            f"{method}_{phase}_compile_ratio": rows[method][phase]["compile_s"] / rows["lora"][phase]["compile_s"]
            for method in methods
            if method != "lora"
            for phase in ("train_step", "inference")
        }
        print(" ".join(f"{name}={ratio:.3f}" for name, ratio in ratios.items()))


def timed(step, args: argparse.Namespace) -> float:
    """Median wall seconds of `args.repeats` runs of `step`."""
    seconds = []
    for _ in range(args.repeats):
        synchronize(args.device)
        start = time.perf_counter()
        step()
        synchronize(args.device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def make_inference_step(model, pixel_values, args):
    def step() -> None:
        model.eval()
        with torch.inference_mode(), autocast(args):
            model(pixel_values=pixel_values, multimask_output=False)

    return step


def alternate(steps: dict, warmup: int, repeats: int, device: str) -> dict[str, dict]:
    """Run each step `warmup` times, then `repeats` rounds of A B A B ...

    Returns, per step name, `wall` and `cpu` (process CPU time) seconds per run, and `peak`: on CUDA the largest
    `max_memory_allocated` (GiB) of its timed runs, else None.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    cuda = device.startswith("cuda")
    timing = {"wall": {name: [] for name in steps}, "cpu": {name: [] for name in steps}, "peak": dict.fromkeys(steps)}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            synchronize(device)
            timing["wall"][name].append(time.perf_counter() - start)
            timing["cpu"][name].append(time.process_time() - start_cpu)
            if cuda:
                timing["peak"][name] = max(timing["peak"][name] or 0.0, torch.cuda.max_memory_allocated() / 2**30)
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variant", "--base", default=None, choices=VARIANTS, help="a sam_peft.random_sam variant (any generation)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="512 (--compile: 128)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--compile", action="store_true", help="eager vs torch.compile (tiny model by default), see the docstring"
    )
    parser.add_argument("--backend", default="inductor", help="torch.compile backend with --compile")
    parser.add_argument("--inference-only", action="store_true", help="skip the training step (not with --compile)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype (float32: no autocast)"
    )
    parser.add_argument("--bf16", dest="dtype", action="store_const", const="bfloat16", help="--dtype bfloat16")
    parser.add_argument(
        "--activation-checkpointing", "--checkpointing", action="store_true", help="recompute the vision blocks"
    )
    parser.add_argument("--methods", nargs="+", default=None, choices=CHOICES)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "conv_lora_cost.json")
    args = parser.parse_args()
    if args.variant is None:
        args.variant = "tiny" if args.compile else "vit-b"
    if args.image_size is None:
        args.image_size = 128 if args.compile else 512
    if args.methods is None:
        args.methods = list(CHOICES) if args.compile else list(METHODS)
    methods = [name for name in CHOICES if name in args.methods]
    if args.compile:
        compile_main(args, methods)
        return

    torch.manual_seed(0)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
    models = {name: build(name, args) for name in methods}
    with torch.no_grad():  # the decoder's output size: 4 x the embedding grid of the generation
        mask_size = next(iter(models.values()))(pixel_values=pixel_values[:1], multimask_output=False).pred_masks.shape[
            -1
        ]
    target = (torch.rand(args.batch_size, mask_size, mask_size, device=args.device) > 0.5).float()

    trainable = {name: m.get_nb_trainable_parameters()[0] for name, m in models.items()}
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad]) for name, m in models.items()}
    phases = {}
    if not args.inference_only:
        phases["train_step"] = alternate(
            {n: make_train_step(m, optimizers[n], pixel_values, target, args) for n, m in models.items()},
            args.warmup,
            args.repeats,
            args.device,
        )
    phases |= {
        "inference": alternate(
            {n: make_inference_step(m, pixel_values, args) for n, m in models.items()},
            args.warmup,
            args.repeats,
            args.device,
        ),
    }
    peak = phases["train_step"]["peak"] if "train_step" in phases else dict.fromkeys(methods)
    median = {phase: {n: statistics.median(t) for n, t in timing["wall"].items()} for phase, timing in phases.items()}
    both = all(name in methods for name in METHODS)
    ratios = paired = cpu_ratios = None
    if both:
        ratios = {phase: m["conv_lora"] / m["lora"] for phase, m in median.items()}
        # robustness checks on a shared machine: the median of each round's own ratio, and the ratio of CPU time
        # (what other jobs on the cores add to the wall time of one run does not count there)
        paired = {
            phase: statistics.median(
                ours / lora for lora, ours in zip(t["wall"]["lora"], t["wall"]["conv_lora"], strict=True)
            )
            for phase, t in phases.items()
        }
        if not args.device.startswith("cuda"):
            cpu_ratios = {
                phase: statistics.median(t["cpu"]["conv_lora"]) / statistics.median(t["cpu"]["lora"])
                for phase, t in phases.items()
            }

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    setup = f"{args.variant}, {args.image_size} px, batch {args.batch_size}, {args.dtype}"
    if args.activation_checkpointing:
        setup += ", activation checkpointing"
    print(f"{' vs '.join(NAMES[name] for name in reversed(methods))} on {setup}, {device_name}")
    print("trainable parameters: " + ", ".join(f"{NAMES[name]} {trainable[name]:,}" for name in methods))
    if peak[methods[-1]] is not None:
        print("peak training memory GiB: " + ", ".join(f"{NAMES[name]} {peak[name]:.2f}" for name in methods))
    columns = [f"{NAMES[name]} s" for name in methods] + ["ratio", "paired ratio", "CPU-time ratio", "paper ratio"]
    print("| phase | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for phase, paper in (("train_step", PAPER_TRAIN_RATIO), ("inference", PAPER_INFERENCE_RATIO)):
        if phase not in phases:
            continue
        cells = [f"{median[phase][name]:.4f}" for name in methods]
        cells += [f"{r[phase]:.3f}" if r else "-" for r in (ratios, paired, cpu_ratios)]
        print(f"| {phase} | {' | '.join(cells)} | {paper:.2f} |")
    result = {
        **run_record("conv_lora_cost", args, device_name),
        "trainable_parameters": trainable,
        "seconds": {phase: timing["wall"] for phase, timing in phases.items()},
        "cpu_seconds": {phase: timing["cpu"] for phase, timing in phases.items()},
        "median_seconds": median,
        "ratio": ratios,
        "paired_ratio_median": paired,
        "cpu_time_ratio": cpu_ratios,
        "paper_ratio": {"train_step": PAPER_TRAIN_RATIO, "inference": PAPER_INFERENCE_RATIO},
        "peak_memory_gib": peak,
        "paper_peak_memory_gb": PAPER_PEAK_MEMORY_GB,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    if "conv_lora_dense" in methods and "conv_lora" in methods:
        print(
            "dense vs grouped dispatch: "
            + " ".join(f"{phase}_ratio={m['conv_lora_dense'] / m['conv_lora']:.3f}" for phase, m in median.items())
        )
    if both:
        line = " ".join(f"{phase}_ratio={ratio:.3f}" for phase, ratio in ratios.items())
        if cpu_ratios:
            line += " " + " ".join(f"{phase}_cpu_ratio={ratio:.3f}" for phase, ratio in cpu_ratios.items())
        print(line)
    elif len(methods) == 1:
        name = methods[0]
        line = " ".join(f"{name}_{phase}_s={m[name]:.4f}" for phase, m in median.items())
        print(line + (f" peak_memory_gib={peak[name]:.2f}" if peak[name] is not None else ""))


if __name__ == "__main__":
    main()
