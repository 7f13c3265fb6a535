"""Fine-tune SAM for segmentation with any method of the registry, with Accelerate: Conv-LoRA, LoRA, CAD,
SAM-Adapter, SLoRA, any of peft's own methods (`method: peft` with a `peft_config:` mapping), decoder-only
training and partial fine-tuning of the encoder (bias_only, norm_only, attention_only, last_blocks, full);
`sam_peft.modeling.methods.METHODS` says what each is.

    accelerate launch recipes/train.py recipes/configs/quickstart.yaml
    accelerate launch recipes/train.py recipes/configs/quickstart_prompted.yaml
    accelerate launch recipes/train.py recipes/configs/conv_lora_kvasir.yaml --data_dir data/Kvasir-SEG
    accelerate launch recipes/train.py recipes/configs/cad_cod10k.yaml --data_dir data/COD10K-v3 --cache_embeddings
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 recipes/train.py recipes/configs/quickstart.yaml

With `--cache_embeddings` (cad and decoder_only, whose image encoder stays frozen), the encoder's output for each
image (and flip) is computed once, stored under `--embedding_cache_dir` and read back in later epochs and
evaluations; `recipes/cache_embeddings.py` fills the cache ahead of training.

With `task: prompted` the promptable SAM is trained on objects (instance masks, connected components, COCO
annotations) with SAM's interactive scheme: a box or a point, then corrective clicks (`sam_peft.training.prompted`);
each evaluation is the box and click protocol (`evaluate_interactive`), for the base model and the adapted one, and
the output folder gets `iou_vs_clicks.png` instead of `predictions.png`.

Values on the command line override the YAML file (see sam_peft/training/arguments.py for every key). The
output folder receives the trained weights of the best epoch (an adapter for conv_lora and lora), the run record
`sam_peft_run.json`, a model card `README.md`, `metrics.json`, `training_curves.png`, `predictions.png`, and
`checkpoints/` (trained weights and optimiser state only) for `--resume_from_checkpoint latest`.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import DataLoaderConfiguration, set_seed
from peft import PeftModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sam_peft.data import sam_collate_fn
from sam_peft.data.prompted import sam_objects_collate_fn
from sam_peft.hub import adapter_model_card, check_push_access, push_run
from sam_peft.modeling import SamSemanticSegmentationOutput, input_image_size, post_process_semantic_segmentation
from sam_peft.modeling.methods import METHODS, adapter_peft_type
from sam_peft.training import (
    BEST_DIR,
    CheckpointFolder,
    InteractiveTraining,
    InteractiveTrainingConfig,
    PromptSeeds,
    SeededSamples,
    TrainingState,
    build_datasets,
    build_embedding_cache,
    build_model,
    build_object_datasets,
    check_embedding_cache,
    claim_output_dir,
    default_metric,
    ensure_random_base,
    evaluate,
    evaluate_interactive,
    is_better,
    load_trained_weights,
    make_scheduler,
    model_inputs,
    optimizer_steps,
    parse_args,
    plan_run,
    recipe_accelerator,
    register_trainable_checkpointing,
    result_files,
    run_config,
    save_click_curves,
    save_overlays,
    save_trained,
    save_training_curves,
    steps_per_epoch,
    write_run_file,
)

USAGE = "accelerate launch recipes/train.py CONFIG.yaml [--key value ...]"
# the prompted evaluation's summary on the model card (and its click curve beside it)
PROMPTED_CARD_METRICS = ("miou_box", "miou@1", "miou@3", "miou@5", "miou_clicks", "noc@85", "noc@90")
CLICK_CURVES_FILE = "iou_vs_clicks.png"


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
    model_args, data_args, train_args = parse_args(description=__doc__, usage=USAGE)
    output_dir = Path(train_args.output_dir)
    prompted = model_args.task == "prompted"
    metric = train_args.metric_for_best_model or default_metric(model_args.num_labels, model_args.task)
    accelerator = recipe_accelerator(
        output_dir,
        train_args.report_to,
        train_args.mixed_precision,
        train_args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    # Everything is validated before the output folder is touched: the folder, the Hub, the data.
    config = run_config(model_args, data_args, train_args, accelerator.num_processes)
    plan = plan_run(output_dir, config, train_args)
    for note in plan.notes:
        accelerator.print(note)
    if train_args.push_to_hub and accelerator.is_main_process:
        check_push_access(train_args.hub_model_id)
    if plan.finished:
        if train_args.push_to_hub and accelerator.is_main_process:
            accelerator.print(f"Pushed to {push_run(output_dir, train_args.hub_model_id)}")
        return
    if accelerator.is_main_process:
        ensure_random_base(model_args)
    accelerator.wait_for_everyone()
    set_seed(train_args.seed)

    model = build_model(model_args)
    image_size = data_args.image_size or input_image_size(model.config)
    check_embedding_cache(data_args, model, image_size)  # before the output folder is touched
    if prompted:
        raw, prepared = build_object_datasets(data_args, image_size, train_args.seed)
        trained = InteractiveTraining(model, InteractiveTrainingConfig.from_arguments(model_args, train_args))
        train_split, collate_fn = PromptSeeds(prepared["train"]), sam_objects_collate_fn
    else:
        raw, prepared = build_datasets(data_args, model_args.num_labels, image_size, train_args.seed)
        trained, train_split, collate_fn = model, prepared["train"], sam_collate_fn
    # Each loader draws its iterators' seeds from a generator of its own, not from the global one that the model's
    # random draws use and that checkpoints record: a resumed run draws as the uninterrupted one did.
    train_samples = SeededSamples(train_split, train_args.seed)
    train_loader = DataLoader(
        train_samples,
        batch_size=train_args.batch_size,
        shuffle=True,
        collate_fn=collate_fn,
        num_workers=data_args.num_workers,
        generator=torch.Generator().manual_seed(train_args.seed),
    )
    eval_loader = DataLoader(
        prepared[data_args.eval_split],
        batch_size=train_args.eval_batch_size,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(train_args.seed),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=train_args.learning_rate, weight_decay=train_args.weight_decay)
    epoch_steps = steps_per_epoch(len(train_loader), accelerator.num_processes, train_args.gradient_accumulation_steps)
    scheduled_steps = train_args.num_epochs * epoch_steps
    scheduler = make_scheduler(
        optimizer, train_args.lr_schedule, train_args.warmup_steps, scheduled_steps, accelerator.num_processes
    )
    trained, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        trained, optimizer, train_loader, eval_loader, scheduler
    )
    unwrapped = accelerator.unwrap_model(trained).model if prompted else accelerator.unwrap_model(trained)
    register_trainable_checkpointing(accelerator, unwrapped)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for note in claim_output_dir(output_dir, config, plan):
            accelerator.print(note)
    accelerator.wait_for_everyone()
    accelerator.init_trackers("sam-peft", config={"method": model_args.method, "lr": train_args.learning_rate})

    checkpoints = CheckpointFolder(output_dir)
    state = TrainingState()
    if plan.checkpoint is not None:
        state = checkpoints.load(accelerator, plan.checkpoint)
        accelerator.print(f"Resumed from {plan.checkpoint} at step {state.step} (epoch {state.epoch})")

    def save_checkpoint(new_best: bool = False) -> None:
        checkpoints.save(accelerator, state, lambda folder: save_trained(unwrapped, folder), new_best)

    cache = build_embedding_cache(data_args, unwrapped, image_size)

    def compute_losses(model, batch) -> dict[str, torch.Tensor]:
        if prompted:
            return model(**batch)
        outputs = model(**model_inputs(batch["pixel_values"], cache), labels=batch["labels"])
        return {"loss": outputs.loss, "task_loss": outputs.task_loss, "auxiliary_loss": outputs.auxiliary_loss}

    def run_evaluation() -> dict:
        if prompted:
            return evaluate_interactive(unwrapped, eval_loader, train_args.eval_max_clicks, accelerator=accelerator)
        return evaluate(trained, eval_loader, accelerator, model_args.num_labels, cache)

    if state.baseline is None:  # the base model (prompted), or the untrained one, for comparison in metrics.json
        with _base_model(unwrapped) if prompted else contextlib.nullcontext():
            baseline = run_evaluation()
        state.baseline = _scalars(baseline) | ({"iou_curve": baseline["iou_curve"]} if prompted else {})
    last_step = min(scheduled_steps, train_args.max_steps or scheduled_steps)
    every = train_args.checkpoint_every_steps
    progress = tqdm(total=last_step, initial=state.step, desc="training", disable=not accelerator.is_local_main_process)
    while state.epoch < train_args.num_epochs and state.step < last_step:
        trained.train()
        train_loader.set_epoch(state.epoch)  # the data order
        train_samples.set_epoch(state.epoch)  # the augmentation (Accelerate forwards the epoch on one process only)
        epoch_end = (state.epoch + 1) * epoch_steps
        done_in_epoch = state.step - state.epoch * epoch_steps
        batches = accelerator.skip_first_batches(train_loader, done_in_epoch * train_args.gradient_accumulation_steps)
        for entry in optimizer_steps(
            accelerator, trained, batches, optimizer, scheduler, compute_losses, train_args.max_grad_norm
        ):
            state.step += 1
            state.train_log.append({"step": state.step, **entry})
            accelerator.log({f"train/{key}": value for key, value in entry.items()}, step=state.step)
            progress.update(1)
            progress.set_postfix(loss=f"{entry['loss']:.4f}")
            if state.step >= last_step:
                break
            if every is not None and state.step % every == 0 and state.step < epoch_end:
                save_checkpoint()
        new_best = False
        if state.step >= epoch_end:
            state.epoch += 1
            if state.epoch % train_args.eval_every_epochs == 0 or state.epoch == train_args.num_epochs:
                results = run_evaluation()
                state.eval_log.append({"epoch": state.epoch, "step": state.step, **_scalars(results)})
                accelerator.log({f"eval/{k}": v for k, v in _scalars(results).items()}, step=state.step)
                loss = "" if prompted else f", loss {results['loss']:.4f}"
                accelerator.print(f"epoch {state.epoch}: {metric} {results[metric]:.4f}{loss}")
                if is_better(metric, results[metric], state.best_value):
                    state.best_value, state.best_epoch, new_best = results[metric], state.epoch, True
        save_checkpoint(new_best)
    progress.close()

    if state.epoch < train_args.num_epochs:
        accelerator.print(f"Stopped at step {state.step} (max_steps); resume with --resume_from_checkpoint latest.")
        accelerator.end_training()
        return

    # The best epoch's weights become the run's result.
    load_trained_weights(unwrapped, checkpoints.last_saved / BEST_DIR)
    results = run_evaluation()
    if accelerator.is_main_process:
        final = {"metric_for_best_model": metric, "best_epoch": state.best_epoch, "eval_split": data_args.eval_split}
        final.update(results)
        final["untrained"] = state.baseline
        final["train_log"] = state.train_log
        if cache is not None:
            final["embedding_cache"] = {"directory": str(cache.directory), **asdict(cache.stats)}
        if prompted:
            card_metrics = {k: results[k] for k in PROMPTED_CARD_METRICS if k in results}
            card_extra = {"baseline": state.baseline, "figure": (CLICK_CURVES_FILE, "mIoU against clicks")}
        else:
            card_metrics = {k: v for k, v in _scalars(results).items() if k not in ("loss", "auxiliary_loss")}
            card_extra = {}
        card = adapter_model_card(
            base_model=model_args.base_model,
            peft_type=adapter_peft_type(model_args),
            adapter_id=train_args.hub_model_id or str(output_dir.resolve()),
            num_labels=model_args.num_labels,
            dataset_name=data_args.benchmark or data_args.hub_dataset or "custom",
            eval_split=data_args.eval_split,
            metrics=card_metrics,
            hyperparameters=_hyperparameters(model_args, train_args),
            trainable_parameters=sum(p.numel() for p in unwrapped.parameters() if p.requires_grad),
            base_class=type(getattr(unwrapped, "get_base_model", lambda: unwrapped)()).__name__,
            peft_adapter=isinstance(unwrapped, PeftModel),
            **card_extra,
        )
        split = data_args.eval_split
        with result_files(output_dir) as folder:  # moved into output_dir together, once all are written
            save_trained(unwrapped, folder)
            (folder / "metrics.json").write_text(json.dumps(final, indent=2))
            save_training_curves(folder / "training_curves.png", state.train_log, state.eval_log, metric)
            if prompted:
                curves = {"base model": state.baseline["iou_curve"], "adapted": results["iou_curve"]}
                save_click_curves(folder / CLICK_CURVES_FILE, curves, title=f"mIoU / clicks ({split})")
            else:
                save_overlays(folder / "predictions.png", *overlay_examples(unwrapped, raw[split], prepared[split]))
            card.save(folder / "README.md")
        # written last: the run is finished (a requeued job finds it and exits)
        write_run_file(output_dir, model_args, image_size, training={"epochs": state.epoch, "steps": state.step})
        accelerator.print(json.dumps(_summary(final), indent=2))
        if train_args.push_to_hub:
            accelerator.print(f"Pushed to {push_run(output_dir, train_args.hub_model_id)}")
    accelerator.end_training()


def _summary(final: dict) -> dict:
    """What the recipe prints of metrics.json: all but the training log and the per-click lists."""
    return {k: _summary(v) if k == "untrained" else v for k, v in final.items() if k not in _LONG_ENTRIES}


_LONG_ENTRIES = ("train_log", "iou_curve", "dice_curve")


def _base_model(model):
    """A context in which `model` computes what its base model does: its adapter disabled (a PEFT model), or
    nothing to do (decoder-only training, evaluated before its first step)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def _scalars(results: dict) -> dict[str, float]:
    return {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}


def _hyperparameters(model_args, train_args) -> dict:
    keys = ("method", *METHODS[model_args.method].hyperparameters)
    train_keys = ("learning_rate", "weight_decay", "lr_schedule", "batch_size", "num_epochs", "seed")
    return {**{k: getattr(model_args, k) for k in keys}, **{k: getattr(train_args, k) for k in train_keys}}


if __name__ == "__main__":
    main()
