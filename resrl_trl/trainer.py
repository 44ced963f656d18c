"""ResRLTrainer: TRL's GRPOTrainer with ResRL's per-token advantages."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from trl import GRPOTrainer
from trl.trainer.utils import split_pixel_values_by_grid, split_tensor_dict, unsplit_pixel_values_by_grid

from .advantages import SCALES_POSITIVES, USES_TOKEN_WEIGHTS, reinforce_advantages
from .config import ResRLConfig
from .residual import ResidualStats, compute_residual_weights, think_span_mask

GROUP_IDS_KEY = "resrl_group_ids"
IS_POSITIVE_KEY = "resrl_is_positive"


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


def decoder_layer_for_hidden_state(model: nn.Module, hidden_layer: int) -> nn.Module:
    """The decoder block whose output is ``output_hidden_states[hidden_layer]``.

    Works through PEFT, DDP and DeepSpeed wrappers: it looks for the module list of decoder blocks, whose length is
    ``config.num_hidden_layers``.
    """
    config = None
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "get_text_config"):
            config = config.get_text_config()
            break
    num_layers = getattr(config, "num_hidden_layers", None)
    if num_layers is None:
        raise ValueError("ResRL could not read num_hidden_layers from the model's config to find its decoder blocks")
    blocks = [m for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers and name]
    if not blocks:
        raise ValueError(
            f"ResRL found no list of {num_layers} decoder blocks in {type(model).__name__}; it needs a transformer "
            "whose decoder blocks sit in an nn.ModuleList (as in every Hugging Face causal LM)"
        )
    index = hidden_layer if hidden_layer >= 0 else num_layers + 1 + hidden_layer
    if not 1 <= index <= num_layers - 1:
        raise ValueError(
            f"resrl_hidden_layer={hidden_layer} does not name a decoder block's output in a model with {num_layers} "
            f"blocks: use an index in [1, {num_layers - 1}] or [{-num_layers}, -2] (the paper uses -2)"
        )
    return blocks[0][index - 1]


class ResRLTrainer(GRPOTrainer):
    """Trainer for ResRL (Lin et al., "ResRL: Boosting LLM Reasoning via Negative Sample Projection Residual
    Reinforcement Learning", ICML 2026, https://arxiv.org/abs/2605.00380).

    ResRL is GRPO with per-token advantages. In each prompt group, the hidden states of the positive completions'
    tokens span a low-rank subspace; every token of a negative completion keeps a share of its negative advantage
    that grows with how far its hidden state lies outside that subspace (weights in ``[resrl_min_weight, 1]``), and
    positive completions' advantages are multiplied by ``resrl_pos_weight``.

    What changes with respect to [`trl.GRPOTrainer`]:

    - rollouts carry each completion's group id and whether it is positive;
    - rollouts are shuffled by whole groups, so each micro-batch holds whole groups;
    - in the training forward that ``_compute_loss`` already runs, a forward hook on one decoder block reads its
      hidden states and turns the ``(B,)`` advantages into ``(B, T)`` advantages before the loss uses them.

    The clipped loss, KL, aggregation and everything else are TRL's. The maths lives in :mod:`resrl_trl.residual`.
    """

    _tag_names = ["trl", "resrl"]

    def __init__(self, model: Any, reward_funcs: Any, args: ResRLConfig | None = None, **kwargs: Any) -> None:
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = ResRLConfig(f"{str(name).split('/')[-1]}-ResRL")
        if not isinstance(args, ResRLConfig):
            raise TypeError(
                f"ResRLTrainer needs a ResRLConfig, got {type(args).__name__}; build the arguments with "
                "resrl_trl.ResRLConfig (it takes every GRPOConfig field)"
            )
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self._resrl_layer = (  # only the token-weight modes read hidden states
            decoder_layer_for_hidden_state(self.model, args.resrl_hidden_layer)
            if args.advantage_mode in USES_TOKEN_WEIGHTS
            else None
        )
        seed = args.seed if args.resrl_seed is None else args.resrl_seed
        # ResRL's own stream: the global RNG (and so the sampled completions) stays as under GRPOTrainer.
        self._resrl_generator = torch.Generator(device=self.accelerator.device)
        self._resrl_generator.manual_seed(seed + self.accelerator.process_index)
        self._think_markers = self._resolve_think_markers() if args.resrl_mask_think else None
        self._last_rewards_per_func: torch.Tensor | None = None

    def _resolve_think_markers(self) -> tuple[list[int], list[int]]:
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        start = tokenizer.encode(self.args.resrl_think_start, add_special_tokens=False)
        end = tokenizer.encode(self.args.resrl_think_end, add_special_tokens=False)
        if not start or not end:
            raise ValueError(
                f"resrl_mask_think=True but the tokenizer encodes {self.args.resrl_think_start!r} or "
                f"{self.args.resrl_think_end!r} to no tokens; set resrl_think_start/resrl_think_end to the markers "
                "your model writes"
            )
        return start, end

    # --- Rollouts: remember each completion's group and whether it succeeded. ---

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: ANN001, ANN202
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # gathered over all processes, shape (N_total, F)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func, self._last_rewards_per_func = self._last_rewards_per_func, None
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        # A completion no reward function could score is not positive (TRL gives it a zero advantage).
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        start = self.accelerator.process_index * len(inputs)
        local = slice(start, start + len(inputs))
        device = output["completion_ids"].device
        is_positive = (rewards[local] > self.args.resrl_positive_threshold).to(device)
        output[IS_POSITIVE_KEY] = is_positive
        output[GROUP_IDS_KEY] = torch.arange(start, start + len(inputs), device=device) // group_size
        method = self.args.advantage_mode
        if method in ("psr", "nsr", "w_reinforce"):
            output["advantages"] = reinforce_advantages(
                rewards[local].to(device), is_positive, method, self.args.w_reinforce_lambda
            )
        elif method == "resrl_pos_only":  # no token weights: the positive scaling is all there is, per sequence
            advantages = output["advantages"]
            output["advantages"] = torch.where(is_positive, advantages * self.args.resrl_pos_weight, advantages)
        return output

    def _prepare_inputs(self, generation_batch: dict[str, Any]) -> dict[str, Any]:
        # As GRPOTrainer._prepare_inputs, with TRL's row shuffle replaced by a shuffle of whole groups.
        if not self.model.training or self.args.advantage_mode not in USES_TOKEN_WEIGHTS:
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
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            handle.remove()  # before backward: gradient-checkpoint recomputation never reaches the hook
        if not found:
            raise RuntimeError(
                "ResRL's hook on the decoder block never fired during the training forward; the model's forward did "
                "not run its decoder blocks as nn.Module calls"
            )
        self._log_residual_stats(found[0])
        return loss

    def _apply_residual_weights(self, hidden: torch.Tensor, inputs: dict[str, Any]) -> ResidualStats:
        completion_ids = inputs["completion_ids"]
        num_tokens = completion_ids.size(1)
        total = inputs["prompt_ids"].size(1) + num_tokens
        if hidden.size(1) != total:
            raise RuntimeError(
                f"ResRL expected hidden states over {total} positions (prompt + completion), got {hidden.size(1)}"
            )
        group_ids = inputs[GROUP_IDS_KEY]
        group_sizes = torch.unique(group_ids, return_counts=True)[1]
        expected = self.num_generations if self.model.training else self.num_generations_eval
        if bool((group_sizes != expected).any()):
            raise RuntimeError(
                f"a micro-batch holds a partial prompt group (sizes {group_sizes.tolist()}, expected {expected}); "
                "ResRL needs whole groups in each micro-batch"
            )
        # The logits at position p score token p + 1: completion token t is scored from position P + t - 1.
        completion_hidden = hidden[:, total - num_tokens - 1 : total - 1]
        valid = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            valid = valid & inputs["tool_mask"].bool()
        if self._think_markers is not None:
            valid = valid & ~think_span_mask(completion_ids, *self._think_markers)
        is_positive = inputs[IS_POSITIVE_KEY]
        args = self.args
        result = compute_residual_weights(
            completion_hidden,
            valid,
            group_ids,
            is_positive,
            rank=args.resrl_rank,
            max_pos_tokens=args.resrl_max_pos_tokens,
            q_low=args.resrl_q_low,
            q_high=args.resrl_q_high,
            min_weight=args.resrl_min_weight,
            niter=args.resrl_pca_niter,
            generator=self._resrl_generator,
        )
        pos_weight = args.resrl_pos_weight if args.advantage_mode in SCALES_POSITIVES else 1.0
        factor = torch.where(is_positive[:, None], pos_weight, result.weights)
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages[:, None]
        inputs["advantages"] = advantages * factor
        return result.stats

    def _log_residual_stats(self, stats: ResidualStats) -> None:
        totals = self.accelerator.reduce(torch.stack(list(stats)), reduction="sum")
        s = ResidualStats(*totals.tolist())
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        tokens = max(s.weighted_tokens, 1.0)
        metrics["resrl/neg_token_weight_mean"].append(s.weight_sum / tokens)
        metrics["resrl/residual_energy_mean"].append(s.energy_sum / tokens)
        metrics["resrl/neg_alignment_mean"].append(s.alignment_sum / tokens)
        metrics["resrl/mixed_group_frac"].append(s.mixed_groups / max(s.groups, 1.0))
        metrics["resrl/skipped_groups"].append(s.skipped_groups)
        metrics["resrl/positives"].append(s.positives)
        metrics["resrl/negatives"].append(s.negatives)
