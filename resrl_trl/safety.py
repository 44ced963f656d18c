"""What keeps a run safe, apart from the method: bad values never reach the weights, checkpoints are never half
written, answer-checking faults are counted. :class:`SafeTrainingMixin` goes before ``GRPOTrainer`` in a trainer's
bases; it reports through TRL's own metric logging (``self._metrics``)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any

import torch
from torch import nn

from .trl_compat import ACCELERATE_SKIPPED_STEP_FLAG as SKIP_FLAG
from .trl_compat import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

__all__ = ["STAGING_DIR", "SafeTrainingMixin"]

logger = logging.getLogger(__name__)
STAGING_DIR = ".resrl-staging"


class SafeTrainingMixin:
    """For a subclass of TRL's ``GRPOTrainer``:

    - an infinite reward counts as unscorable (NaN: TRL leaves it out of the group baseline, its advantage is 0);
    - reward functions' answer-checking faults (``faults`` counters, as :class:`resrl_trl.rewards.MathReward` keeps)
      are logged per step;
    - a non-finite loss, on any process, skips the optimiser step on every process, and the learning-rate
      scheduler's step with it (the weights and the schedule stay where they were), and is logged. Under DeepSpeed,
      which steps the scheduler itself, and with an fp16 loss scaler, the schedule still advances;
    - a checkpoint is written into a staging folder and published by one atomic rename, so an interrupted save never
      replaces the last good checkpoint;
    - the input-embedding hooks that transformers leaks at each gradient-checkpointing toggle are removed.
    """

    _metrics: dict[str, Any]
    _skip_optimizer_step = False

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: ANN001, ANN202
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        infinite = torch.isinf(rewards_per_func)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["resrl/nonfinite_rewards"].append(float(infinite.any(dim=1).sum()))
        self._log_answer_check_faults(mode)
        return rewards_per_func.masked_fill(infinite, float("nan"))

    def _log_answer_check_faults(self, mode: str) -> None:
        """Completions the reward functions could not check normally, per step and kind (``resrl/answer_check_<kind>``:
        the maths reward's time-outs, parser errors, empty completions; the code reward's kinds too)."""
        seen = getattr(self, "_faults_seen", {})
        for func in self.reward_funcs:
            faults = getattr(func, "faults", None)
            if not isinstance(faults, dict):
                continue
            name = getattr(func, "__name__", type(func).__name__)
            # the maths reward's kinds always (stable metric names), and whatever else a reward counts (the code
            # reward's syntax, memory, exit, ...) from the step it first appears
            for kind in sorted({"timeout", "error", "empty"} | set(faults)):
                total = faults.get(kind, 0)
                self._metrics[mode][f"resrl/answer_check_{kind}"].append(float(total - seen.get((name, kind), 0)))
                seen[(name, kind)] = total
        self._faults_seen = seen

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        self._drop_stale_input_grad_hooks()
        return output

    def _drop_stale_input_grad_hooks(self) -> None:
        """Remove the input-embedding hooks that each gradient-checkpointing disable/enable cycle leaves behind.

        TRL switches gradient checkpointing off around its no-grad forwards; transformers' enable registers a new
        ``make_inputs_require_grads`` hook on the input embeddings every time, while its disable removes them only for
        PEFT models, so a full fine-tuning run gains two hooks per step. The hooks transformers currently tracks are
        kept; the stale copies go.
        """
        model = self.accelerator.unwrap_model(self.model)
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        current = {handle.id for handle in getattr(model, "_require_grads_hooks", None) or []}
        for module in model.modules():
            for hook_id, hook in list(module._forward_hooks.items()):
                if getattr(hook, "__name__", "") == "make_inputs_require_grads" and hook_id not in current:
                    del module._forward_hooks[hook_id]

    # --- A non-finite loss skips its optimiser step, and the scheduler's, instead of corrupting the weights. ---

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not model.training or bool(torch.isfinite(loss)):
            return loss
        logger.warning(
            "the loss of this micro-batch is %s; its optimiser step is skipped (the weights stay unchanged)",
            loss.item(),
        )
        self._skip_optimizer_step = True
        self._metrics["train"]["resrl/nonfinite_losses"].append(1.0)
        # A zero that still reaches every trainable parameter, so backward (and DDP's gradient hooks) run as usual.
        return sum((p.view(-1)[:1] * 0.0).sum() for p in model.parameters() if p.requires_grad)

    def create_optimizer(self, model=None):  # noqa: ANN001, ANN201
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        take_step = optimizer.step

        def step(*args: Any, **kwargs: Any) -> Any:
            skip, self._skip_optimizer_step = self._skip_optimizer_step, False
            if self.accelerator.num_processes > 1:  # one process's bad loss skips the step everywhere: replicas agree
                flag = torch.tensor(float(skip), device=self.accelerator.device)
                skip = bool(self.accelerator.reduce(flag, reduction="sum") > 0)
            # accelerate's flag of a skipped step (set by its fp16 scaler, else never): transformers advances the
            # learning-rate scheduler only when it is down, so a skipped step leaves the schedule where it was.
            wrapper = self.optimizer
            if wrapper is not optimizer and getattr(wrapper, "scaler", None) is None and hasattr(wrapper, SKIP_FLAG):
                setattr(wrapper, SKIP_FLAG, skip)
            return None if skip else take_step(*args, **kwargs)

        optimizer.step = step
        return optimizer

    # --- Checkpoints appear only once complete. ---

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        run_dir = self._get_output_dir(trial=trial)
        staging = os.path.join(run_dir, STAGING_DIR)
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(os.path.join(staging, folder), ignore_errors=True)  # left by a save that was killed
        self.accelerator.wait_for_everyone()
        # Transformers writes into <run_dir>/<folder>: point it at the staging directory, which resuming ignores.
        self._get_output_dir = lambda trial=None: staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            target = os.path.join(run_dir, folder)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, folder), target)  # one atomic rename publishes the whole checkpoint
            with contextlib.suppress(OSError):  # left only while a save is under way; never holds a finished one
                os.rmdir(staging)
            best = self.state.best_model_checkpoint
            if best and best.startswith(staging):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()
