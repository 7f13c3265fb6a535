"""SAMCL routing overhead, measured side by side, and the storage of a module and of a buffer entry.

Routing overhead. One `ContinualSam` (random ViT-B weights with a realistic init) holds `--domains` SLoRA modules
of the default `SloraConfig()` (rank 10 on blocks 7..11, prompt path on), built with `add_module` (no training)
and given random non-zero weights so that they differ. Its selector is fitted (SAMCL's 25 epochs) on a buffer
anchored on the encoder itself: each domain's images share an appearance (a per-domain colour shift on random
pixels), the pooled block-6 features of a few such images, jittered, are that domain's entries, so the selector
routes the benchmark's images where they belong (checked and printed). Two inference forwards of the same batch
with the same 3 positive points per image alternate (A B A B ..., medians after a warm-up):

- plain: `peft_model(pixel_values=..., input_points=..., input_labels=...)` with the module of the first domain
  active: one forward of the PEFT-wrapped `SamModel`, no routing;
- routed: `continual(pixel_values, input_points, input_labels)`: blocks 0..6 once for the batch, the selector on
  their pooled output, blocks 7..11 and the neck with each group's module and heat map, then the decoder.

Two batches are measured: every image of one domain (one group: the selector and the shared prefix are the whole
overhead), and, for a batch above 1, every image of a different domain (the worst case: one suffix per image;
domains repeat when the batch exceeds `--domains`). The routed outputs are compared with plain forwards of the
modules they were routed to. The selector and a module switch are also timed alone.

Storage. The saved module (`adapter_model.safetensors` of one domain's module, default `SloraConfig()` on the
variant; the shared down-projection is saved once) against 0.25 MiB, and one buffer entry
(`EmbeddingBuffer.bytes_per_entry`) against the 512 x 512 RGB image it stands for.

The default SAM input is 512 px (embeddings 32 x 32), batch 2, as benchmarks.md sets for CPU runs: on 2 shared
CPU cores one ViT-B forward of 2 images takes about 4 s at 512 px and 30-50 s at 1024 px (2 threads), so 1024 px
would need well over 15 minutes where the default run takes about 7. Routing adds no work that grows with the
input (a 768-vector MLP, module switches, a heat map on the embedding grid, copies of a block output), so the ratio at
512 px is, if anything, the larger one. Torch runs 1 CPU thread by default: the machine's 2 cores are shared with
other jobs, and a second thread that waits for a busy core makes single runs vary by 3x. Besides the ratio of the
wall-time medians, the table shows the median of the per-round ratios and the ratio of process CPU times.

    python benchmarks/continual_overhead.py                                 # CPU: ViT-B, 512 px, batch 2, 1 thread
    python benchmarks/continual_overhead.py --image-size 1024 --threads 2 --repeats 3
    python benchmarks/continual_overhead.py --device cuda --image-size 1024 --batch-size 4 --domains 4

The last line printed is `overhead_ratio=<routed / plain, one group> mixed_ratio=<routed / plain, one domain per
image> cpu_overhead_ratio=<...> cpu_mixed_ratio=<...> module_bytes=<bytes> buffer_compression=<image / entry>`
(wall-time ratios of the medians first, then the same with process CPU time; `nan` for mixed at batch 1).
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
from safetensors import safe_open

from sam_peft import random_sam
from sam_peft.continual import ContinualSam, EmbeddingBuffer, image_bytes
from sam_peft.modeling import encoder_prefix
from sam_peft.tuners.slora import SloraConfig

GOAL_RATIO = 1.05  # routing overhead at most 5 % of a plain forward (issue #8)
MODULE_LIMIT_BYTES = 2**18  # 0.25 MiB
PAPER_MODULE_BYTES = 61_304 * 4  # A + 5 B + prompt path in fp32: the paper's 0.233 MB
POINTS_PER_IMAGE = 3  # SAMCL prompts with 3 positive points


def domain_images(domain: int, count: int, args: argparse.Namespace, seed: int) -> torch.Tensor:
    """`count` normalised images (count, 3, S, S) of domain `domain`: random pixels with a per-domain colour shift."""
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randn(3, generator=torch.Generator().manual_seed(1000 + domain)).view(1, 3, 1, 1)
    pixels = 0.5 * torch.randn(count, 3, args.image_size, args.image_size, generator=generator) + shift
    return pixels.to(args.device)


def point_prompts(batch_size: int, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """3 positive points per image, (B, 1, 3, 2) in SAM's 1024 px prompt frame, and their labels (B, 1, 3)."""
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(batch_size, 1, POINTS_PER_IMAGE, 2, generator=generator) * 1024
    labels = torch.ones(batch_size, 1, POINTS_PER_IMAGE, dtype=torch.long)
    return points.to(args.device), labels.to(args.device)


@torch.no_grad()
def perturb_module(continual: ContinualSam, name: str, seed: int, scale: float = 0.02) -> int:
    """Give module `name` random non-zero weights (a fresh module is the identity); returns its parameter count."""
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for key, parameter in continual.peft_model.named_parameters():
        if f".{name}." in f".{key}.":
            noise = torch.randn(parameter.shape, generator=generator).to(parameter)
            parameter.add_(scale * noise)
            count += parameter.numel()
    return count


def build(args: argparse.Namespace) -> tuple[ContinualSam, list[str], dict]:
    """A `ContinualSam` with `args.domains` perturbed modules and a selector fitted on an encoder-anchored buffer."""
    sam = random_sam(args.variant, image_size=args.image_size, seed=0).to(args.device)
    continual = ContinualSam(sam, SloraConfig(), entries_per_domain=args.buffer_entries, seed=0)
    domains = [f"domain{i}" for i in range(args.domains)]
    parameters = {}
    for index, name in enumerate(domains):
        continual.add_module(name)
        continual.peft_model.base_model.set_requires_grad(name, False)
        parameters[name] = perturb_module(continual, name, seed=100 + index)
    with torch.inference_mode():
        anchors = [
            torch.cat(
                [
                    encoder_prefix(continual.vision_encoder, image[None], continual.feature_block).features.cpu()
                    for image in domain_images(index, args.buffer_images, args, seed=500 + index)
                ]
            )
            for index in range(len(domains))
        ]
    # each domain's entries: its anchors, repeated and jittered by a tenth of the anchors' spread
    everything = torch.cat(anchors)
    spread = everything.std(dim=0).mean() if len(everything) > 1 else everything.std()
    generator = torch.Generator().manual_seed(2)
    for name, own in zip(domains, anchors, strict=True):
        features = own.repeat(-(-args.buffer_entries // len(own)), 1)[: args.buffer_entries]
        continual.buffer.add_domain(name, features + 0.1 * spread * torch.randn(features.shape, generator=generator))
    started = time.perf_counter()
    losses = continual.fit_selector()
    setup = {
        "module_parameters": parameters,
        "buffer_entries": continual.buffer.domain_lengths(),
        "selector_fit_seconds": time.perf_counter() - started,
        "selector_losses": [losses[0], losses[-1]],
    }
    return continual.eval(), domains, setup


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(steps: dict, warmup: int, repeats: int, device: str) -> tuple[dict, dict]:
    """Run each step `warmup` times, then `repeats` rounds of A B A B ...; wall and process CPU seconds per run."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    wall, cpu = {name: [] for name in steps}, {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            synchronize(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def micro_seconds(step, device: str, repeats: int = 50) -> float:
    """Median seconds of a small step, run `repeats` times after two warm-up calls."""
    step(), step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_case(
    continual: ContinualSam, plain_domain: str, expected: list[str], args: argparse.Namespace, seed: int
) -> dict:
    """Plain forward (module `plain_domain`) vs routed forward of a batch whose image i is of domain `expected[i]`."""
    names = continual.domains
    pixel_values = torch.cat([domain_images(names.index(d), 1, args, seed=seed + i) for i, d in enumerate(expected)])
    points, labels = point_prompts(len(expected), args)
    peft_model = continual.peft_model
    peft_model.base_model.set_adapter(plain_domain, inference_mode=True)  # routed forwards restore it

    def plain():
        with torch.inference_mode():
            return peft_model(
                pixel_values=pixel_values, input_points=points, input_labels=labels, multimask_output=False
            )

    def routed():
        with torch.inference_mode():
            return continual(pixel_values, input_points=points, input_labels=labels)

    outputs = routed()
    routing = list(outputs.domains)
    # the routed masks of each image against a plain forward of that image with the module it was routed to
    difference = 0.0
    with torch.inference_mode():
        for i, domain in enumerate(routing):
            with continual.use_module(domain):
                reference = peft_model(
                    pixel_values=pixel_values[i : i + 1],
                    input_points=points[i : i + 1],
                    input_labels=labels[i : i + 1],
                    multimask_output=False,
                ).pred_masks
            difference = max(difference, (outputs.pred_masks[i : i + 1] - reference).abs().max().item())
    wall, cpu = alternate({"plain": plain, "routed": routed}, args.warmup, args.repeats, args.device)
    median = {name: statistics.median(values) for name, values in wall.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    paired = [routed / plain for plain, routed in zip(wall["plain"], wall["routed"], strict=True)]
    return {
        "expected_domains": expected,
        "routed_domains": routing,
        "groups": len(dict.fromkeys(routing)),
        "plain_module": plain_domain,
        "max_abs_difference_vs_plain_per_image": difference,
        "seconds": wall,
        "cpu_seconds": cpu,
        "median_seconds": median,
        "median_cpu_seconds": median_cpu,
        "ratio": median["routed"] / median["plain"],
        "paired_ratio_median": statistics.median(paired),
        "cpu_ratio": median_cpu["routed"] / median_cpu["plain"],
    }


def storage(continual: ContinualSam, domain: str) -> dict:
    """Bytes of one saved module and of one buffer entry."""
    with tempfile.TemporaryDirectory() as directory:
        continual.peft_model.save_pretrained(directory, selected_adapters=[domain])
        files = {str(p.relative_to(directory)): p.stat().st_size for p in Path(directory).rglob("*") if p.is_file()}
        (weights,) = Path(directory).rglob("adapter_model.safetensors")
        with safe_open(weights, framework="pt") as file:
            names = list(file.keys())  # a safetensors file handle, not a dict
            numel = {key: file.get_tensor(key).numel() for key in names}
        module_bytes = weights.stat().st_size
    buffer: EmbeddingBuffer = continual.buffer
    return {
        "module_bytes": module_bytes,
        "module_files": files,
        "module_tensors": len(numel),
        "module_parameters": sum(numel.values()),
        "module_limit_bytes": MODULE_LIMIT_BYTES,
        "paper_module_bytes": PAPER_MODULE_BYTES,
        "shared_A_tensors_per_module": sum(key.endswith("slora_A.weight") for key in numel),
        "buffer_entry_bytes": buffer.bytes_per_entry,
        "image_bytes_512_rgb": image_bytes(512, 512, 3),
        "buffer_compression": buffer.compression_ratio(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit-b", choices=["vit-b", "vit-l", "vit-h"])
    parser.add_argument("--image-size", type=int, default=512, help="SAM's input size (default 512: see above)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--domains", type=int, default=3, help="modules in the continual model")
    parser.add_argument("--buffer-entries", type=int, default=48, help="buffer entries per domain")
    parser.add_argument("--buffer-images", type=int, default=4, help="images per domain the entries come from")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see above)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9, help="rounds of plain, routed after the warm-up")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "continual_overhead.json")
    args = parser.parse_args()
    if min(args.domains, args.batch_size, args.buffer_images, args.repeats) < 1 or args.buffer_entries < 2:
        parser.error("--domains, --batch-size, --buffer-images and --repeats must be positive, --buffer-entries >= 2")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()

    continual, domains, setup = build(args)
    print(
        f"built {len(domains)} modules, buffer {setup['buffer_entries']}, selector fitted in "
        f"{setup['selector_fit_seconds']:.1f} s (loss {setup['selector_losses'][0]:.3f} -> "
        f"{setup['selector_losses'][1]:.3f})",
        flush=True,
    )
    cases = {"one_group": measure_case(continual, domains[0], [domains[0]] * args.batch_size, args, seed=700)}
    print(f"measured one_group: ratio {cases['one_group']['ratio']:.3f}", flush=True)
    if args.batch_size > 1:
        mixed = [domains[i % len(domains)] for i in range(args.batch_size)]
        cases["mixed"] = measure_case(continual, domains[0], mixed, args, seed=800)
        print(f"measured mixed: ratio {cases['mixed']['ratio']:.3f}", flush=True)

    features = torch.randn(args.batch_size, continual.buffer.feature_dim, device=args.device)

    def switch() -> None:  # into a module and back: what routing does per group
        with continual.use_module(domains[-1]):
            pass

    components = {
        "selector_seconds": micro_seconds(lambda: continual.selector.predict_domains(features), args.device),
        "module_switch_seconds": micro_seconds(switch, args.device),
    }
    sizes = storage(continual, domains[0])
    runtime = time.perf_counter() - started

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"\nSAMCL routing vs a plain forward, {args.variant}, SAM input {args.image_size} px, batch {args.batch_size}, "
        f"{len(domains)} modules, {device_name}, {args.threads} threads"
    )
    print("| batch | routed to | groups | plain s | routed s | ratio | paired ratio | CPU-time ratio | goal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, r in cases.items():
        m = r["median_seconds"]
        print(
            f"| {case} | {', '.join(str(d) for d in r['routed_domains'])} | {r['groups']} | {m['plain']:.3f} | "
            f"{m['routed']:.3f} | {r['ratio']:.3f} | {r['paired_ratio_median']:.3f} | {r['cpu_ratio']:.3f} | "
            f"<= {GOAL_RATIO} |"
        )
    for case, r in cases.items():
        if r["routed_domains"] != r["expected_domains"]:
            print(f"note: {case} expected {r['expected_domains']}, the selector routed {r['routed_domains']}")
    print(
        "routed vs plain per-image masks, max |diff|: "
        + ", ".join(f"{case} {r['max_abs_difference_vs_plain_per_image']:.2e}" for case, r in cases.items())
    )
    print(
        f"selector alone {components['selector_seconds'] * 1e3:.2f} ms, "
        f"module switch {components['module_switch_seconds'] * 1e3:.2f} ms"
    )
    print(
        f"module: {sizes['module_bytes']:,} bytes (limit {MODULE_LIMIT_BYTES:,} = 0.25 MiB; paper "
        f"{PAPER_MODULE_BYTES:,}), {sizes['module_parameters']:,} parameters in {sizes['module_tensors']} tensors, "
        f"shared A saved {sizes['shared_A_tensors_per_module']} time(s)"
    )
    print(
        f"buffer entry: {sizes['buffer_entry_bytes']:,} bytes vs {sizes['image_bytes_512_rgb']:,} for a 512 x 512 "
        f"RGB image = {sizes['buffer_compression']:.0f}x"
    )
    print(f"runtime {runtime:.0f} s")
    result = {
        **run_record("continual_overhead", args, device_name),
        "setup": setup,
        "cases": cases,
        "components": components,
        "storage": sizes,
        "goal_ratio": GOAL_RATIO,
        "runtime_seconds": runtime,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    mixed = cases.get("mixed", {})
    print(
        f"overhead_ratio={cases['one_group']['ratio']:.3f} mixed_ratio={mixed.get('ratio', float('nan')):.3f} "
        f"cpu_overhead_ratio={cases['one_group']['cpu_ratio']:.3f} "
        f"cpu_mixed_ratio={mixed.get('cpu_ratio', float('nan')):.3f} "
        f"module_bytes={sizes['module_bytes']} buffer_compression={sizes['buffer_compression']:.0f}"
    )


if __name__ == "__main__":
    main()
