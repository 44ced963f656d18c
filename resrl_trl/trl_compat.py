"""Every TRL internal that resrl-trl relies on, named in one place.

``ResRLTrainer`` overrides or calls private parts of TRL's ``GRPOTrainer`` (and of transformers' ``Trainer`` under it).
A new TRL release may rename or reshape them. :func:`check_trl_internals` compares them with what this version of
resrl-trl was written against and names each difference, so moving to a new TRL release starts in this file (and
``tests/test_trl_compat.py`` fails with that list).
"""

from __future__ import annotations

import inspect
from typing import Any

import trl
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import (
    shuffle_sequence_dict,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

__all__ = [
    "ACCELERATE_SKIPPED_STEP_FLAG",
    "PREFIX_CHECKPOINT_DIR",
    "TESTED_TRL",
    "check_trainer_state",
    "check_trl_internals",
    "disable_gradient_checkpointing",
    "rotate_checkpoints",
    "shuffle_sequence_dict",
    "split_pixel_values_by_grid",
    "split_tensor_dict",
    "unsplit_pixel_values_by_grid",
]

TESTED_TRL = "1.16"

# Methods of GRPOTrainer (or Trainer) that ResRLTrainer overrides or calls: leading parameters, what ResRL does there.
METHODS: dict[str, tuple[tuple[str, ...], str]] = {
    "_calculate_rewards": (
        ("inputs", "prompts", "completions", "completion_ids_list"),
        "reads every reward function's rewards (all processes) to mark positive completions",
    ),
    "_generate_and_score_completions": (("inputs",), "adds group ids and positive flags to the rollout batch"),
    "_get_per_token_logps_and_entropies": (
        ("model", "input_ids", "attention_mask", "logits_to_keep"),
        "reuses TRL's old-log-probability forward for rollout-time subspaces",
    ),
    "_prepare_inputs": (("generation_batch",), "lets the placement order the rollout (whole groups for 'step')"),
    "_compute_loss": (("model", "inputs"), "turns (B,) advantages into (B, T) ones inside TRL's training forward"),
    "compute_loss": (("model", "inputs", "return_outputs", "num_items_in_batch"), "skips non-finite losses"),
    "log": (("logs", "start_time"), "logs token statistics as means over the step's tokens"),
    "create_model_card": (("model_name", "dataset_name", "tags"), "adds ResRL's settings to the card"),
    "save_model": (("output_dir", "_internal_call"), "writes the model card beside every saved model"),
    "_save_checkpoint": (("model", "trial"), "publishes checkpoints by one atomic rename"),
    "_get_output_dir": (("trial",), "points checkpoint writes at a staging folder"),
    "_save_rng_state": (("output_dir",), "saves ResRL's random-stream state"),
    "_load_rng_state": (("checkpoint",), "restores it on resume"),
    "create_optimizer": (("model",), "lets a skipped step leave the weights unchanged"),
}
# Attributes of a GRPOTrainer instance that ResRL reads.
ATTRIBUTES = (
    "_logs",
    "_metrics",
    "log_completions",
    "_buffered_inputs",
    "_step",
    "num_generations",
    "num_generations_eval",
    "num_iterations",
    "reward_funcs",
    "reward_weights",
    "temperature",
    "use_vllm",
    "vllm_importance_sampling_correction",
)
# Keys of the rollout batch (the output of _generate_and_score_completions) that ResRL reads.
BATCH_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")
# accelerate's AcceleratedOptimizer attribute behind `Accelerator.optimizer_step_was_skipped`, which transformers reads
# to leave the learning-rate scheduler alone after a skipped optimiser step.
ACCELERATE_SKIPPED_STEP_FLAG = "_is_overflow"
# Per-mode metric lists that GRPOTrainer.log averages.
METRIC_MODES = ("train", "eval")


def _report(problems: list[str]) -> None:
    if problems:
        raise RuntimeError(
            f"TRL {trl.__version__} differs from TRL {TESTED_TRL}, which resrl-trl is written against, where ResRL "
            "hooks in:\n  - " + "\n  - ".join(problems) + "\nInstall trl~=" + TESTED_TRL + ".0 (setup.cfg pins it), "
            "or adapt resrl_trl/trainer.py to the new release and record it in resrl_trl/trl_compat.py"
        )


def check_trl_internals(trainer_cls: type = GRPOTrainer) -> None:
    """Raise a ``RuntimeError`` naming every method of :data:`METHODS` that is missing or whose leading parameters
    changed, and accelerate's skipped-step flag if it moved."""
    from accelerate.optimizer import AcceleratedOptimizer

    problems = []
    if not isinstance(getattr(AcceleratedOptimizer, "step_was_skipped", None), property):
        problems.append(
            "accelerate's AcceleratedOptimizer.step_was_skipped is gone (a skipped step skips the schedule)"
        )
    for name, (expected, why) in METHODS.items():
        method = getattr(trainer_cls, name, None)
        if not callable(method):
            problems.append(f"{trainer_cls.__name__}.{name} is gone (ResRL {why})")
            continue
        found = tuple(p for p in inspect.signature(method).parameters if p != "self")[: len(expected)]
        if found != expected:
            problems.append(f"{trainer_cls.__name__}.{name} takes {found}, not {expected} (ResRL {why})")
    _report(problems)


def check_trainer_state(trainer: Any, batch: dict[str, Any] | None = None) -> None:
    """Raise a ``RuntimeError`` naming every attribute of :data:`ATTRIBUTES` a built trainer lacks, and every key of
    :data:`BATCH_KEYS` a rollout batch lacks."""
    problems = [f"a GRPOTrainer lacks the attribute {name!r}" for name in ATTRIBUTES if not hasattr(trainer, name)]
    metrics = getattr(trainer, "_metrics", None)
    if metrics is not None and not all(mode in metrics for mode in METRIC_MODES):
        problems.append(f"GRPOTrainer._metrics is not keyed by {METRIC_MODES}")
    if batch is not None:
        problems += [f"the rollout batch has no {key!r}" for key in BATCH_KEYS if key not in batch]
    _report(problems)
