"""ResRLTrainer: TRL's GRPOTrainer with ResRL's per-token advantages."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import torch
from torch import nn
from trl import GRPOTrainer

from .advantages import SCALES_POSITIVES, USES_TOKEN_WEIGHTS, reinforce_advantages
from .config import ResRLConfig
from .model_card import RESRL_PAPER, ModelCardMixin
from .models import decoder_layer_for_hidden_state
from .placement import GROUP_IDS_KEY, IS_POSITIVE_KEY, make_placement
from .residual import ResidualStats, completion_states, group_stream_seed, think_span_mask
from .safety import SafeTrainingMixin
from .trainer_logging import HeadProbe, TokenStatistics, check_head_probe, log_group_counts, show_sequence_advantages
from .trl_compat import (
    check_trl_internals,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

RESRL_STATE_FILE = "resrl_state.json"


def shuffle_groups(batch: dict[str, Any], group_size: int) -> dict[str, Any]:
    """Shuffle the rows of a rollout batch at the level of whole groups of ``group_size`` consecutive rows.

    It draws exactly the permutation TRL's row shuffle would draw (``torch.randperm`` of the batch size, from the
    global RNG) and orders the groups by where they first appear in it, so the RNG stream, and with it every later
    sampled completion, is the same as under ``GRPOTrainer``; every order of the groups is equally likely.
    """
    batch_size = len(next(v for v in batch.values() if v is not None))
    permutation = torch.randperm(batch_size)
    num_groups = batch_size // group_size
    first_seen = torch.full((num_groups,), batch_size).scatter_reduce(
        0, permutation // group_size, torch.arange(batch_size), reduce="amin"
    )
    group_order = torch.argsort(first_seen)
    rows = (group_order[:, None] * group_size + torch.arange(group_size)).flatten()

    def permute(value: Any) -> Any:
        if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
            return value
        if isinstance(value, torch.Tensor):
            return value[rows.to(value.device)]
        return [value[i] for i in rows.tolist()]

    return {key: permute(value) for key, value in batch.items()}


def think_marker_ids(processing_class: Any, start: str, end: str) -> tuple[list[int], list[int]]:
    """The token ids of the think-span markers ``start`` and ``end`` in the tokenizer of ``processing_class``."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    start_ids = tokenizer.encode(start, add_special_tokens=False)
    end_ids = tokenizer.encode(end, add_special_tokens=False)
    if not start_ids or not end_ids:
        raise ValueError(
            f"resrl_mask_think=True but the tokenizer encodes {start!r} or {end!r} to no tokens; set "
            "resrl_think_start/resrl_think_end to the markers your model writes"
        )
    return start_ids, end_ids


class ResRLTrainer(SafeTrainingMixin, ModelCardMixin, GRPOTrainer):
    """Trainer for ResRL (Lin et al., "ResRL: Boosting LLM Reasoning via Negative Sample Projection Residual
    Reinforcement Learning", ICML 2026, https://arxiv.org/abs/2605.00380).

    ResRL is GRPO with per-token advantages. In each prompt group, the hidden states of the positive completions'
    tokens span a low-rank subspace; every token of a negative completion keeps a share of its negative advantage
    that grows with how far its hidden state lies outside that subspace (weights in ``[resrl_min_weight, 1]``), and
    positive completions' advantages are multiplied by ``resrl_pos_weight``.

    What changes with respect to [`trl.GRPOTrainer`]:

    - rollouts carry each completion's group id and whether it is positive;
    - with ``resrl_subspace="step"``, rollouts are shuffled by whole groups, so each micro-batch holds whole groups;
      with ``"rollout"``, each group's subspace and energy quantiles are built once per generation, from the whole
      group on every process that holds part of it;
    - in the training forward that ``_compute_loss`` already runs, a forward hook on one decoder block reads its
      hidden states and turns the ``(B,)`` advantages into ``(B, T)`` advantages before the loss uses them.

    The clipped loss, KL, aggregation and everything else are TRL's. The maths lives in :mod:`resrl_trl.residual`.
    """

    _tag_names = ["trl", "resrl"]
    _name = "ResRL"
    _paper = RESRL_PAPER

    def __init__(self, model: Any, reward_funcs: Any = None, args: ResRLConfig | None = None, **kwargs: Any) -> None:
        # reward_funcs may be omitted when an environment owns the reward (TRL's environment_factory): TRL then adds
        # the environment's reward as a reward function of weight 1, and ResRL reads it like any other.
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = ResRLConfig(f"{str(name).split('/')[-1]}-ResRL")
        if not isinstance(args, ResRLConfig):
            raise TypeError(
                f"ResRLTrainer needs a ResRLConfig, got {type(args).__name__}; build the arguments with "
                "resrl_trl.ResRLConfig (it takes every GRPOConfig field)"
            )
        check_trl_internals()  # a TRL release that moved what ResRL hooks into fails here, naming what moved
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self._resrl_layer = (  # only the token-weight modes read hidden states
            decoder_layer_for_hidden_state(self.model, args.resrl_hidden_layer)
            if args.advantage_mode in USES_TOKEN_WEIGHTS
            else None
        )
        self._placement = make_placement(self) if self._resrl_layer is not None else None
        if args.resrl_log_interference:
            check_head_probe(self)
        # ResRL's randomness (positive-token subsampling, the PCA's random start) comes from one stream per group,
        # seeded from resrl_seed, the generation's index and the group's id: never from the global RNG (so the
        # sampled completions stay as under GRPOTrainer), and the same wherever the group's rows are processed.
        self._resrl_seed = args.seed if args.resrl_seed is None else args.resrl_seed
        self._generations = {"train": 0, "eval": 0}
        self._group_seed = {"train": 0, "eval": 0}  # of the latest generation, per mode
        self._num_groups = {"train": 0, "eval": 0}  # groups in the latest generation (ids are 0..n-1), per mode
        self._think_markers = (
            think_marker_ids(self.processing_class, args.resrl_think_start, args.resrl_think_end)
            if args.resrl_mask_think
            else None
        )
        self._last_rewards_per_func: torch.Tensor | None = None
        self._token_stats = TokenStatistics()

    # --- Rollouts: remember each completion's group and whether it succeeded. ---

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: ANN001, ANN202
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # gathered over all processes, shape (N_total, F)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self._placement is not None:
            self._placement.start_rollout()
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func, self._last_rewards_per_func = self._last_rewards_per_func, None
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        # A completion no reward function could score is not positive (TRL gives it a zero advantage).
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
        mode = "train" if self.model.training else "eval"
        # Eval generations draw from their own sequence of seeds, so evaluating never shifts training's.
        self._group_seed[mode] = group_stream_seed(self._resrl_seed + (mode == "eval") * 7919, self._generations[mode])
        self._generations[mode] += 1
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        start = self.accelerator.process_index * len(inputs)
        local = slice(start, start + len(inputs))
        self._num_groups[mode] = len(inputs) * self.accelerator.num_processes // group_size
        device = output["completion_ids"].device
        all_positive = rewards > self.args.resrl_positive_threshold  # every process's rows
        is_positive = all_positive[local].to(device)
        output[IS_POSITIVE_KEY] = is_positive
        output[GROUP_IDS_KEY] = torch.arange(start, start + len(inputs), device=device) // group_size
        method = self.args.advantage_mode
        baseline = None
        if method in ("psr", "nsr", "w_reinforce"):
            baseline = reinforce_advantages(rewards, all_positive, method, self.args.w_reinforce_lambda)
            output["advantages"] = baseline[local].to(device)
        elif method == "resrl_pos_only":  # no token weights: the positive scaling is all there is, per sequence
            advantages = output["advantages"]
            output["advantages"] = torch.where(is_positive, advantages * self.args.resrl_pos_weight, advantages)
        # A non-finite advantage (a reward function's NaN or inf, say) would turn the whole loss into NaN: such a
        # completion takes no part in the update, and is counted.
        finite = torch.isfinite(output["advantages"])
        self._metrics[mode]["resrl/nonfinite_advantages"].append(float((~finite).sum()))
        output["advantages"] = torch.where(finite, output["advantages"], 0.0)
        # TRL's completions table shows the sequence advantages the method uses, not the GRPO ones TRL logged.
        show_sequence_advantages(self._logs["advantages"], all_positive, baseline, method, self.args.resrl_pos_weight)
        if self._placement is not None:
            self._placement.finish_rollout(output, all_positive, group_size, mode)
        return output

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if self._placement is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        with self._placement.old_logprob_forward(logits_to_keep):  # rollout placement reuses its hidden states
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )

    def _prepare_inputs(self, generation_batch: dict[str, Any]) -> dict[str, Any]:
        # As GRPOTrainer._prepare_inputs, with TRL's row shuffle replaced by a shuffle of whole groups.
        if not self.model.training or self._placement is None or not self._placement.shuffles_groups:
            return super()._prepare_inputs(generation_batch)
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            generation_batch = self._generate_and_score_completions(generation_batch)
            generation_batch = split_pixel_values_by_grid(generation_batch)
            generation_batch = shuffle_groups(generation_batch, self.num_generations)
            generation_batches = split_tensor_dict(generation_batch, self.args.steps_per_generation)
            self._buffered_inputs = [unsplit_pixel_values_by_grid(batch) for batch in generation_batches]
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    # --- Training step: per-token advantages from the hidden states of the forward TRL already runs. ---

    def _compute_loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        if self.args.advantage_mode not in USES_TOKEN_WEIGHTS:
            return super()._compute_loss(model, inputs)
        # A shallow copy: the hook swaps in per-token advantages, and buffered rollouts are reused across iterations.
        inputs = dict(inputs)
        found: list[ResidualStats] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if found:  # the weights of this step are set; a repeated call (e.g. recomputation) changes nothing
                return
            hidden = output[0] if isinstance(output, tuple) else output
            found.append(self._apply_residual_weights(hidden.detach(), inputs))

        handle = self._resrl_layer.register_forward_hook(hook)
        sequence_advantages = inputs["advantages"]
        probe = HeadProbe(self.accelerator.unwrap_model(model)) if self.args.resrl_log_interference else None
        try:
            with probe or contextlib.nullcontext():
                loss = super()._compute_loss(model, inputs)
        finally:
            handle.remove()  # before backward: gradient-checkpoint recomputation never reaches the hook
        if not found:
            raise RuntimeError(
                "ResRL's hook on the decoder block never fired during the training forward; the model's forward did "
                "not run its decoder blocks as nn.Module calls"
            )
        self._log_residual_stats(found[0])
        if probe is not None:
            cosines = probe.cosines(
                inputs["completion_ids"], self._valid_tokens(inputs), inputs[IS_POSITIVE_KEY], sequence_advantages,
                inputs["advantages"], self.temperature, seed=self._step,
            )  # fmt: skip
            for name, value in zip(("plain", "weighted"), cosines, strict=True):
                self._metrics["train" if self.model.training else "eval"][f"resrl/head_cosine_{name}"].append(value)
        return loss

    def _apply_residual_weights(self, hidden: torch.Tensor, inputs: dict[str, Any]) -> ResidualStats:
        completion_ids = inputs["completion_ids"]
        num_tokens = completion_ids.size(1)
        total = inputs["prompt_ids"].size(1) + num_tokens
        if hidden.size(1) != total:
            raise RuntimeError(
                f"ResRL expected hidden states over {total} positions (prompt + completion), got {hidden.size(1)}"
            )
        completion_hidden = completion_states(hidden, num_tokens, self.args.resrl_weight_position)
        valid = self._valid_tokens(inputs)
        group_ids, is_positive, args = inputs[GROUP_IDS_KEY], inputs[IS_POSITIVE_KEY], self.args
        mode = "train" if self.model.training else "eval"
        result = self._placement.weights(completion_hidden, valid, group_ids, is_positive, mode)
        pos_weight = args.resrl_pos_weight if args.advantage_mode in SCALES_POSITIVES else 1.0
        factor = torch.where(is_positive[:, None], pos_weight, result.weights)
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages[:, None]
        inputs["advantages"] = advantages * factor
        return result.stats

    def _valid_tokens(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The completion tokens that take part: not padding, not tool output, not inside a masked think span."""
        valid = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            valid = valid & inputs["tool_mask"].bool()
        if self._think_markers is not None:
            valid = valid & ~think_span_mask(inputs["completion_ids"], *self._think_markers)
        return valid

    def _log_residual_stats(self, stats: ResidualStats) -> None:
        totals = self.accelerator.reduce(torch.stack(list(stats)), reduction="sum")
        mode = "train" if self.model.training else "eval"
        self._token_stats.add(mode, totals)  # means over the weighted tokens at the next log
        if self._placement.name == "step":  # else logged once per rollout, for whole groups
            log_group_counts(self._metrics[mode], ResidualStats(*totals.tolist()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        for name, mean in self._token_stats.pop_means(mode).items():
            self._metrics[mode][name] = [mean]
        super().log(logs, start_time)

    # --- Saved models carry a card that names ResRL and lists its settings. ---

    # --- Checkpoints: ResRL's random-stream state travels with them (SafeTrainingMixin makes them atomic). ---

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.args.should_save:
            state = {"generations": self._generations}
            with open(os.path.join(output_dir, RESRL_STATE_FILE), "w") as handle:
                json.dump(state, handle)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        path = os.path.join(checkpoint, RESRL_STATE_FILE) if checkpoint else None
        if path and os.path.isfile(path):
            with open(path) as handle:
                self._generations = {**self._generations, **json.load(handle)["generations"]}
