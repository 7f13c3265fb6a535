"""Fine-tune SAM for segmentation with Conv-LoRA, LoRA, CAD or decoder-only training, with Accelerate.

    accelerate launch recipes/train.py recipes/configs/quickstart.yaml
    accelerate launch recipes/train.py recipes/configs/conv_lora_kvasir.yaml --data_dir data/Kvasir-SEG
    accelerate launch recipes/train.py recipes/configs/cad_cod10k.yaml --data_dir data/COD10K-v3 --cache_embeddings
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 recipes/train.py recipes/configs/quickstart.yaml

With `--cache_embeddings` (cad and decoder_only, whose image encoder stays frozen), the encoder's output for each
image (and flip) is computed once, stored under `--embedding_cache_dir` and read back in later epochs and
evaluations; `recipes/cache_embeddings.py` fills the cache ahead of training.

Values on the command line override the YAML file (see sam_peft/training/arguments.py for every key). The
output folder receives the trained weights of the best epoch (an adapter for conv_lora and lora), the run record
`sam_peft_run.json`, a model card `README.md`, `metrics.json`, `training_curves.png`, `predictions.png`, and
`checkpoints/` (trained weights and optimiser state only) for `--resume_from_checkpoint latest`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from sam_peft.data import sam_collate_fn
from sam_peft.hub import adapter_model_card
from sam_peft.modeling import SamSemanticSegmentationOutput, post_process_semantic_segmentation
from sam_peft.training import (
    TrainingState,
    build_datasets,
    build_embedding_cache,
    build_model,
    check_output_dir,
    default_metric,
    ensure_random_base,
    evaluate,
    is_better,
    load_trained_weights,
    model_inputs,
    parse_args,
    register_trainable_checkpointing,
    save_overlays,
    save_trained,
    save_training_curves,
    write_run_file,
)

PEFT_TYPES = {"conv_lora": "CONV_LORA", "lora": "LORA", "cad": "CAD", "decoder_only": "DECODER_ONLY"}
# the hyperparameters of each method that the model card lists
METHOD_HYPERPARAMETERS = {
    "conv_lora": ("r", "lora_alpha", "num_experts", "top_k", "moe_loss_weight"),
    "lora": ("r", "lora_alpha"),
    "cad": ("cad_image_size", "cad_scale"),
    "decoder_only": (),
}


def make_scheduler(optimizer, train_args, total_steps: int):
    """The papers' polynomial decay (power 0.9), or cosine, or constant, after a linear warm-up."""
    name = {"polynomial": "polynomial", "cosine": "cosine", "constant": "constant_with_warmup"}[train_args.lr_schedule]
    kwargs = {"scheduler_specific_kwargs": {"power": 0.9}} if name == "polynomial" else {}
    return get_scheduler(name, optimizer, train_args.warmup_steps, total_steps, **kwargs)


@torch.no_grad()
def overlay_examples(model, raw_split, prepared_split, count: int = 4):
    """Images, ground truths and predictions (all at the original size) of the first `count` evaluation images."""
    model.eval()
    count = min(count, len(raw_split))
    batch = sam_collate_fn([prepared_split[i] for i in range(count)])
    device = next(model.parameters()).device
    outputs = model(pixel_values=batch["pixel_values"].to(device))
    outputs = SamSemanticSegmentationOutput(logits=outputs.logits.float().cpu())
    maps = post_process_semantic_segmentation(outputs, batch["original_sizes"], batch["reshaped_input_sizes"])
    target = "mask" if "mask" in raw_split.column_names else "label"
    raw = [raw_split[i] for i in range(count)]
    images = [np.asarray(example["image"].convert("RGB")) for example in raw]
    truths = [np.asarray(example[target]) for example in raw]
    predictions = [(m > 0.5).numpy().astype(np.uint8) if m.is_floating_point() else m.numpy() for m in maps]
    return images, truths, predictions


def main() -> None:
    model_args, data_args, train_args = parse_args()
    output_dir = Path(train_args.output_dir)
    metric = train_args.metric_for_best_model or default_metric(model_args.num_labels)
    tracker = train_args.report_to if train_args.report_to and importlib.util.find_spec(train_args.report_to) else None
    accelerator = Accelerator(
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        mixed_precision=train_args.mixed_precision,
        log_with=tracker,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), automatic_checkpoint_naming=True, total_limit=2
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if accelerator.is_main_process:
        check_output_dir(output_dir, model_args, data_args, train_args)
        ensure_random_base(model_args)
    accelerator.wait_for_everyone()
    set_seed(train_args.seed)

    model = build_model(model_args)
    image_size = data_args.image_size or model.config.vision_config.image_size
    raw, prepared = build_datasets(data_args, model_args.num_labels, image_size, train_args.seed)
    train_loader = DataLoader(
        prepared["train"],
        batch_size=train_args.batch_size,
        shuffle=True,
        collate_fn=sam_collate_fn,
        num_workers=data_args.num_workers,
    )
    eval_loader = DataLoader(
        prepared[data_args.eval_split], batch_size=train_args.eval_batch_size, collate_fn=sam_collate_fn
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=train_args.learning_rate, weight_decay=train_args.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / train_args.gradient_accumulation_steps)
    scheduled_steps = train_args.num_epochs * steps_per_epoch
    scheduler = make_scheduler(optimizer, train_args, scheduled_steps)
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )
    register_trainable_checkpointing(accelerator, model)
    state = TrainingState()
    accelerator.register_for_checkpointing(state)
    accelerator.init_trackers("sam-peft", config={"method": model_args.method, "lr": train_args.learning_rate})

    if train_args.resume_from_checkpoint:
        checkpoint = state.resolve_checkpoint(train_args.resume_from_checkpoint, output_dir)
        accelerator.load_state(str(checkpoint))
        # load_state does not restore the checkpoint counter: the next save would overwrite this one
        accelerator.project_configuration.iteration = int(checkpoint.name.rsplit("_", 1)[-1]) + 1
        accelerator.print(f"Resumed from {checkpoint} at step {state.step} (epoch {state.epoch})")

    unwrapped = accelerator.unwrap_model(model)
    cache = build_embedding_cache(data_args, unwrapped, image_size)
    best_dir = output_dir / "best"
    if state.baseline is None:  # the untrained model, for comparison in metrics.json
        state.baseline = _scalars(evaluate(model, eval_loader, accelerator, model_args.num_labels, cache))
    last_step = min(scheduled_steps, train_args.max_steps or scheduled_steps)
    progress = tqdm(total=last_step, initial=state.step, desc="training", disable=not accelerator.is_local_main_process)
    while state.epoch < train_args.num_epochs and state.step < last_step:
        model.train()
        train_loader.set_epoch(state.epoch)
        done_in_epoch = state.step - state.epoch * steps_per_epoch
        batches = accelerator.skip_first_batches(train_loader, done_in_epoch * train_args.gradient_accumulation_steps)
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**model_inputs(batch["pixel_values"], cache), labels=batch["labels"]).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and train_args.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(trainable, train_args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                state.step += 1
                loss_value = accelerator.gather(loss.detach()[None]).mean().item()
                state.train_log.append({"step": state.step, "loss": loss_value})
                accelerator.log({"train/loss": loss_value, "train/lr": scheduler.get_last_lr()[0]}, step=state.step)
                progress.update(1)
                progress.set_postfix(loss=f"{loss_value:.4f}")
                if state.step >= last_step:
                    break
        epoch_finished = state.step >= (state.epoch + 1) * steps_per_epoch
        if epoch_finished:
            state.epoch += 1
            if state.epoch % train_args.eval_every_epochs == 0 or state.epoch == train_args.num_epochs:
                results = evaluate(model, eval_loader, accelerator, model_args.num_labels, cache)
                state.eval_log.append({"epoch": state.epoch, "step": state.step, **_scalars(results)})
                accelerator.log({f"eval/{k}": v for k, v in _scalars(results).items()}, step=state.step)
                accelerator.print(f"epoch {state.epoch}: {metric} {results[metric]:.4f}, loss {results['loss']:.4f}")
                if is_better(metric, results[metric], state.best_value):
                    state.best_value, state.best_epoch = results[metric], state.epoch
                    if accelerator.is_main_process:
                        save_trained(unwrapped, best_dir)
        accelerator.wait_for_everyone()
        accelerator.save_state()
    progress.close()

    if state.epoch < train_args.num_epochs:
        accelerator.print(f"Stopped at step {state.step} (max_steps); resume with --resume_from_checkpoint latest.")
        accelerator.end_training()
        return

    # The best epoch's weights become the run's result.
    accelerator.wait_for_everyone()
    load_trained_weights(unwrapped, best_dir)
    results = evaluate(model, eval_loader, accelerator, model_args.num_labels, cache)
    if accelerator.is_main_process:
        save_trained(unwrapped, output_dir)
        write_run_file(output_dir, model_args, image_size)
        final = {"metric_for_best_model": metric, "best_epoch": state.best_epoch, "eval_split": data_args.eval_split}
        final.update(results)
        final["untrained"] = state.baseline
        final["train_log"] = state.train_log
        if cache is not None:
            final["embedding_cache"] = {"directory": str(cache.directory), **asdict(cache.stats)}
        (output_dir / "metrics.json").write_text(json.dumps(final, indent=2))
        save_training_curves(output_dir / "training_curves.png", state.train_log, state.eval_log, metric)
        split = data_args.eval_split
        save_overlays(output_dir / "predictions.png", *overlay_examples(unwrapped, raw[split], prepared[split]))
        card = adapter_model_card(
            base_model=model_args.base_model,
            peft_type=PEFT_TYPES[model_args.method],
            adapter_id=train_args.hub_model_id or str(output_dir),
            num_labels=model_args.num_labels,
            dataset_name=data_args.benchmark or data_args.hub_dataset or "custom",
            eval_split=data_args.eval_split,
            metrics={k: v for k, v in _scalars(results).items() if k != "loss"},
            hyperparameters=_hyperparameters(model_args, train_args),
            trainable_parameters=sum(p.numel() for p in unwrapped.parameters() if p.requires_grad),
        )
        card.save(output_dir / "README.md")
        shutil.rmtree(best_dir, ignore_errors=True)
        accelerator.print(json.dumps({k: v for k, v in final.items() if k != "train_log"}, indent=2))
        if train_args.push_to_hub:
            from sam_peft.hub import push_run

            url = push_run(output_dir, train_args.hub_model_id)
            accelerator.print(f"Pushed to {url}")
    accelerator.end_training()


def _scalars(results: dict) -> dict[str, float]:
    return {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}


def _hyperparameters(model_args, train_args) -> dict:
    keys = ("method", *METHOD_HYPERPARAMETERS[model_args.method])
    train_keys = ("learning_rate", "weight_decay", "lr_schedule", "batch_size", "num_epochs", "seed")
    return {**{k: getattr(model_args, k) for k in keys}, **{k: getattr(train_args, k) for k in train_keys}}


if __name__ == "__main__":
    main()
