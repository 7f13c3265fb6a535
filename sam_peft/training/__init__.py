"""The training recipes' library: configuration, builders, the frozen-encoder embedding cache, the optimisation loop,
loop state, checkpoints, evaluation and pictures."""

from .arguments import DataArguments, ModelArguments, TrainArguments, parse_args, parse_config
from .builders import (
    SeededSamples,
    build_datasets,
    build_embedding_cache,
    build_model,
    build_object_datasets,
    check_embedding_cache,
    ensure_random_base,
    load_data,
    verify_data_files,
)
from .checkpoints import (
    load_trained,
    load_trained_weights,
    read_run_file,
    register_trainable_checkpointing,
    save_trained,
    write_run_file,
)
from .embedding_cache import CacheStats, EmbeddingCache
from .evaluation import default_metric, evaluate, is_better, model_inputs
from .files import result_files
from .interactive import evaluate_interactive
from .loop import make_scheduler, optimizer_steps, recipe_accelerator, steps_per_epoch
from .plots import save_click_curves, save_overlays, save_training_curves
from .prompted import InteractiveTraining, InteractiveTrainingConfig, PromptSeeds
from .run_folder import LOGS_DIR, RunPlan, claim_output_dir, plan_run, run_config
from .state import BEST_DIR, CheckpointError, CheckpointFolder, TrainingState

__all__ = [
    "BEST_DIR",
    "LOGS_DIR",
    "CacheStats",
    "CheckpointError",
    "CheckpointFolder",
    "DataArguments",
    "EmbeddingCache",
    "InteractiveTraining",
    "InteractiveTrainingConfig",
    "ModelArguments",
    "PromptSeeds",
    "RunPlan",
    "SeededSamples",
    "TrainArguments",
    "TrainingState",
    "build_datasets",
    "build_embedding_cache",
    "build_model",
    "build_object_datasets",
    "check_embedding_cache",
    "claim_output_dir",
    "default_metric",
    "ensure_random_base",
    "evaluate",
    "evaluate_interactive",
    "is_better",
    "load_data",
    "load_trained",
    "load_trained_weights",
    "make_scheduler",
    "model_inputs",
    "optimizer_steps",
    "parse_args",
    "parse_config",
    "plan_run",
    "read_run_file",
    "recipe_accelerator",
    "register_trainable_checkpointing",
    "result_files",
    "run_config",
    "save_click_curves",
    "save_overlays",
    "save_trained",
    "save_training_curves",
    "steps_per_epoch",
    "verify_data_files",
    "write_run_file",
]
