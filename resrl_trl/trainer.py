"""ResRLTrainer: TRL's GRPOTrainer with ResRL's per-token advantages."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import torch
from torch import nn
from trl import GRPOTrainer

from .advantages import USES_TOKEN_WEIGHTS, sequence_advantages
from .capture import decoder_block
from .config import ResRLConfig
from .masks import think_marker_ids, valid_completion_tokens
from .model_card import RESRL_PAPER, ModelCardMixin
from .placement import GROUP_IDS_KEY, IS_POSITIVE_KEY, Rollout, SeedStream, make_collective, make_placement
from .safety import SafeTrainingMixin
from .trainer_logging import HeadProbe, TokenStatistics, check_head_probe, show_advantages_used
from .trl_compat import (
    check_trl_internals,
    disable_gradient_checkpointing,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

__all__ = ["GROUP_IDS_KEY", "IS_POSITIVE_KEY", "RESRL_STATE_FILE", "ResRLTrainer"]

RESRL_STATE_FILE = "resrl_state.json"


class ResRLTrainer(SafeTrainingMixin, ModelCardMixin, GRPOTrainer):
    """Trainer for ResRL (Lin et al., "ResRL: Boosting LLM Reasoning via Negative Sample Projection Residual
    Reinforcement Learning", ICML 2026, https://arxiv.org/abs/2605.00380).

    ResRL is GRPO with per-token advantages. In each prompt group, the hidden states of the positive completions'
    tokens span a low-rank subspace; every token of a negative completion keeps a share of its negative advantage
    that grows with how far its hidden state lies outside that subspace (weights in ``[resrl_min_weight, 1]``), and
    positive completions' advantages are multiplied by ``resrl_pos_weight``.

    What changes with respect to [`trl.GRPOTrainer`]:

    - rollouts carry each completion's group id and whether it is positive, and the method's sequence advantages
      (:func:`resrl_trl.advantages.sequence_advantages`; positives scaled there);
    - for the token-weight modes, a placement (:mod:`resrl_trl.placement`), built once from explicit parts, is called
      at TRL's seams: it orders the rollout (whole groups with ``resrl_subspace="step"``), builds each group's
      subspace after the rollout (``"rollout"``), and in the training forward that ``_compute_loss`` already runs
      reads one decoder block's hidden states and turns the ``(B,)`` advantages into ``(B, T)`` ones before the loss
      uses them.

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
        self.seeds = SeedStream(args.seed if args.resrl_seed is None else args.resrl_seed)
        self._think_markers = (
            think_marker_ids(self.processing_class, args.resrl_think_start, args.resrl_think_end)
            if args.resrl_mask_think
            else None
        )
        self.placement = None  # only the token-weight modes read hidden states
        if args.advantage_mode in USES_TOKEN_WEIGHTS:
            self.placement = make_placement(
                args.resrl_subspace,
                block=decoder_block(self.model, args.resrl_hidden_layer),
                settings=args.subspace_settings,
                weight_position=args.resrl_weight_position,
                seeds=self.seeds,
                collective=make_collective(self.accelerator.process_index, self.accelerator.num_processes),
                group_sizes={"train": self.num_generations, "eval": self.num_generations_eval},
                run_decoder=self._run_decoder,
            )
        if args.resrl_log_interference:
            plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
            zero3 = plugin is not None and plugin.zero_stage == 3
            check_head_probe(self.model.config, head_is_sharded=self.is_fsdp_enabled or zero3)
        self._last_rewards_per_func: torch.Tensor | None = None
        self._token_stats = TokenStatistics()

    # --- Rollouts: each completion's group and whether it succeeded; the method's sequence advantages. ---

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: ANN001, ANN202
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # gathered over all processes, shape (N_total, F)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.placement is not None:
            self.placement.start_rollout(self._trl_runs_old_logprob_forward())
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func, self._last_rewards_per_func = self._last_rewards_per_func, None
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        # A completion no reward function could score is not positive (TRL gives it a zero advantage).
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        start = self.accelerator.process_index * len(inputs)
        local = slice(start, start + len(inputs))
        self.seeds.advance(mode, len(inputs) * self.accelerator.num_processes // group_size)
        device = output["completion_ids"].device
        all_positive = rewards > self.args.resrl_positive_threshold  # every process's rows
        output[IS_POSITIVE_KEY] = all_positive[local].to(device)
        output[GROUP_IDS_KEY] = torch.arange(start, start + len(inputs), device=device) // group_size
        advantages = sequence_advantages(
            self.args.advantage_mode, output["advantages"], rewards[local].to(device), output[IS_POSITIVE_KEY],
            self.args.resrl_pos_weight, self.args.w_reinforce_lambda,
        )  # fmt: skip
        # A non-finite advantage (a reward function's NaN or inf, say) would turn the whole loss into NaN: such a
        # completion takes no part in the update, and is counted.
        finite = torch.isfinite(advantages)
        self._metrics[mode]["resrl/nonfinite_advantages"].append(float((~finite).sum()))
        output["advantages"] = torch.where(finite, advantages, 0.0)
        if self.log_completions:  # the same on every process: the gather is collective
            # TRL's completions table shows the sequence advantages the loss reads (before token weights), in place
            # of the GRPO ones TRL logged.
            show_advantages_used(self._logs["advantages"], self.accelerator.gather(output["advantages"]))
        if self.placement is not None:
            args = self.args
            rows_per_forward = args.per_device_train_batch_size if mode == "train" else args.per_device_eval_batch_size
            rollout = Rollout(output, self._valid_tokens(output), all_positive, group_size, mode, rows_per_forward)
            for name, value in self.placement.finish_rollout(rollout).items():
                self._metrics[mode][name].append(value)
        return output

    def _trl_runs_old_logprob_forward(self) -> bool:
        """Whether GRPOTrainer computes old log-probabilities over the rollout (the condition it uses itself)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        forward = self.placement.old_logprob_forward(logits_to_keep) if self.placement else contextlib.nullcontext()
        with forward:  # the rollout placement reads its hidden states from TRL's old-log-prob forward
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )

    def _run_decoder(self, chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One no-grad forward of the policy's decoder stack per chunk, for the placement to read its block.

        Only hidden states are wanted: the LM head never runs. (Calling the LM head module here, where the training
        forward only reads its weight through TRL's fused kernel, leaves ZeRO-3 unable to gather that weight again in
        the backward.)"""
        model = self.accelerator.unwrap_model(self.model)
        decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
        checkpointing_kwargs = self.args.gradient_checkpointing_kwargs
        with torch.no_grad(), disable_gradient_checkpointing(self.model, checkpointing_kwargs):
            for input_ids, attention_mask in chunks:
                with self.accelerator.autocast():
                    decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    def _prepare_inputs(self, generation_batch: dict[str, Any]) -> dict[str, Any]:
        # As GRPOTrainer._prepare_inputs, with TRL's row shuffle replaced by the placement's (whole groups for "step").
        if not self.model.training or self.placement is None:
            return super()._prepare_inputs(generation_batch)
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            generation_batch = self._generate_and_score_completions(generation_batch)
            generation_batch = split_pixel_values_by_grid(generation_batch)
            generation_batch = self.placement.shuffle_rollout(generation_batch, self.num_generations)
            generation_batches = split_tensor_dict(generation_batch, self.args.steps_per_generation)
            self._buffered_inputs = [unsplit_pixel_values_by_grid(batch) for batch in generation_batches]
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    # --- Training step: per-token advantages from the hidden states of the forward TRL already runs. ---

    def _compute_loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        if self.placement is None:
            return super()._compute_loss(model, inputs)
        # A shallow copy: the placement swaps in per-token advantages; buffered rollouts are reused across iterations.
        inputs = dict(inputs)
        mode = "train" if self.model.training else "eval"
        valid, sequence_advantages = self._valid_tokens(inputs), inputs["advantages"]
        probe = HeadProbe(self.accelerator.unwrap_model(model)) if self.args.resrl_log_interference else None
        with self.placement.training_forward(inputs, valid, mode) as weighed, probe or contextlib.nullcontext():
            loss = super()._compute_loss(model, inputs)
        self._token_stats.add(mode, weighed.token_sums)  # means over the weighted tokens at the next log
        for name, value in weighed.metrics.items():
            self._metrics[mode][name].append(value)
        if probe is not None:
            cosines = probe.cosines(
                inputs["completion_ids"], valid, inputs[IS_POSITIVE_KEY], sequence_advantages, inputs["advantages"],
                self.temperature, seed=self._step,
            )  # fmt: skip
            for name, value in zip(("plain", "weighted"), cosines, strict=True):
                self._metrics[mode][f"resrl/head_cosine_{name}"].append(value)
        return loss

    def _valid_tokens(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The completion tokens that take part: not padding, not tool output, not inside a masked think span."""
        return valid_completion_tokens(
            inputs["completion_ids"], inputs["completion_mask"], inputs.get("tool_mask"), self._think_markers
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        for name, mean in self._token_stats.pop_means(mode).items():
            self._metrics[mode][name] = [mean]
        super().log(logs, start_time)

    # --- Checkpoints: ResRL's random-stream state travels with them (SafeTrainingMixin makes them atomic). ---

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.args.should_save:
            with open(os.path.join(output_dir, RESRL_STATE_FILE), "w") as handle:
                json.dump(self.seeds.state_dict(), handle)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        path = os.path.join(checkpoint, RESRL_STATE_FILE) if checkpoint else None
        if path and os.path.isfile(path):
            with open(path) as handle:
                self.seeds.load_state_dict(json.load(handle))
