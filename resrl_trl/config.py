"""Configuration of the ResRL trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .advantages import ADVANTAGE_MODES, USES_TOKEN_WEIGHTS
from .residual import WEIGHT_POSITIONS, SubspaceSettings

SUBSPACE_FIELDS = {
    "rank": "resrl_rank",
    "max_pos_tokens": "resrl_max_pos_tokens",
    "q_low": "resrl_q_low",
    "q_high": "resrl_q_high",
    "min_weight": "resrl_min_weight",
    "niter": "resrl_pca_niter",
}
"""Each field of :class:`~resrl_trl.residual.SubspaceSettings` and the config field that sets it."""


@dataclass
class ResRLConfig(GRPOConfig):
    r"""
    Configuration class for [`ResRLTrainer`].

    [`ResRLConfig`] inherits every parameter of [`trl.GRPOConfig`] and adds the ResRL fields below, each with the
    paper's default (Lin et al., "ResRL: Boosting LLM Reasoning via Negative Sample Projection Residual Reinforcement
    Learning", ICML 2026). Per prompt group, the hidden states of the positive completions' tokens span a low-rank
    subspace; a negative completion's tokens keep their negative advantage in proportion to how far their hidden
    states fall outside it, and positive completions' advantages are scaled down by `resrl_pos_weight`.

    Each group's subspace is built either in the training step from the micro-batch's own hidden states (as the
    reference does; every micro-batch must then hold whole groups) or once per rollout from the whole group, after
    which each training step only projects its negatives (any `per_device_train_batch_size` works); see
    `resrl_subspace`.

    Parameters:
        advantage_mode (`str`, *optional*, defaults to `"resrl"`):
            The method: `"resrl"`; the paper's baselines `"grpo"` (TRL's group-normalised advantage), `"psr"`
            (`A = r`), `"nsr"` (`A = r - 1`), `"w_reinforce"` (`A = w_reinforce_lambda` if correct, else -1); or one
            part of ResRL alone, for ablations: `"resrl_pos_only"` (positives x `resrl_pos_weight`, no token
            weights) and `"resrl_tokens_only"` (token weights, positives unscaled). Everything else (sampling, the
            clipped loss, LoRA, data) is shared: `"grpo"` gives TRL's GRPO losses with ResRL's logging.
        w_reinforce_lambda (`float`, *optional*, defaults to `0.1`):
            W-REINFORCE's advantage of a correct completion.
        resrl_rank (`int`, *optional*, defaults to `64`):
            Rank of the positive subspace, before clamping to `min(rank, |P| - 1, hidden size)`.
        resrl_max_pos_tokens (`int`, *optional*, defaults to `4096`):
            Most positive tokens used to build a group's subspace; a larger set is subsampled uniformly without
            replacement.
        resrl_q_low (`float`, *optional*, defaults to `0.2`):
            Quantile of the negative tokens' residual energies that maps to `resrl_min_weight`.
        resrl_q_high (`float`, *optional*, defaults to `0.8`):
            Quantile of the negative tokens' residual energies that maps to weight 1.
        resrl_min_weight (`float`, *optional*, defaults to `0.1`):
            Smallest weight of a negative token (tokens that look like successful reasoning).
        resrl_pos_weight (`float`, *optional*, defaults to `0.1`):
            Factor on the advantages of positive completions.
        resrl_pca_niter (`int`, *optional*, defaults to `4`):
            Power iterations of the randomised PCA that finds the subspace.
        resrl_hidden_layer (`int`, *optional*, defaults to `-2`):
            Which hidden states to use, indexed as Hugging Face's `output_hidden_states` tuple: `-2` is the output of
            the second-to-last decoder block. Must name a decoder block's output (not the embeddings, index 0, nor
            the final-normed output, index -1).
        resrl_weight_position (`str`, *optional*, defaults to `"previous"`):
            Which hidden state a completion token's weight is read from, for the positives' subspace and the
            negatives' energies alike. `"previous"` (the paper's and the reference's): the state at the position
            before the token, whose logits chose it (the alignment of the token's log-probability). That state has
            not read the token, so the token where a failed completion first leaves a successful one's text is read
            from a state both share, and is spared (weight near `resrl_min_weight`). `"own"` (an ablation): the state
            at the token's own position, which has read it.
        resrl_positive_threshold (`float`, *optional*, defaults to `0.0`):
            A completion is positive when its total reward is strictly above this value.
        resrl_mask_think (`bool`, *optional*, defaults to `False`):
            Leave the tokens inside `<think>…</think>` (markers included) out of both the positive subspace and the
            weighted negative tokens.
        resrl_think_start (`str`, *optional*, defaults to `"<think>"`):
            Opening marker of a think span, used when `resrl_mask_think=True`.
        resrl_think_end (`str`, *optional*, defaults to `"</think>"`):
            Closing marker of a think span, used when `resrl_mask_think=True`.
        resrl_subspace (`str`, *optional*, defaults to `"auto"`):
            Where each group's positive subspace is built. `"step"`: in the training forward, from the hidden states
            of the micro-batch (the reference's behaviour; `per_device_train_batch_size` must be a multiple of
            `num_generations`). `"rollout"`: once per generation, from the whole group's hidden states under the
            rollout policy, even when the group's completions sit on several processes (only per-group sums of size
            hidden x rank travel between them); each training step then projects its negatives, with current hidden
            states, onto their group's stored subspace and maps them with the group's stored energy quantiles. It
            costs one no-grad forward over the completions of mixed groups per generation, unless TRL already runs
            one (old log-probabilities), whose hidden states are reused. With one optimisation step per generation
            both give the same weights. `"auto"` (resolved when the config is built): `"step"` when
            `per_device_train_batch_size` is a multiple of `num_generations`, else `"rollout"`.
        resrl_seed (`int`, *optional*):
            Seed of ResRL's own random stream (positive-token subsampling and randomised PCA). Defaults to `seed`.
            The stream is separate from the global one, so ResRL does not change which completions are sampled.
        resrl_log_interference (`bool`, *optional*, defaults to `False`):
            Also log the cosine between the positive and the negative completions' policy gradient at the output
            head, with and without ResRL's token weights (`resrl/head_cosine_plain`, `resrl/head_cosine_weighted`;
            see `resrl_trl.analysis`): computed per micro-batch on up to 256 sampled tokens per side, and logged as
            the mean over the micro-batches since the last log, on the main process. Costs the head and a softmax
            over the vocabulary for those tokens. Modes with token weights only; refused under ZeRO-3/FSDP and for
            models that scale or soft-cap their logits.

    The property `subspace_settings` gives `resrl_rank`, `resrl_max_pos_tokens`, `resrl_q_low`, `resrl_q_high`,
    `resrl_min_weight` and `resrl_pca_niter` as the [`~resrl_trl.residual.SubspaceSettings`] the maths takes.
    """

    advantage_mode: str = field(
        default="resrl",
        metadata={
            "help": f"The method, one of {', '.join(ADVANTAGE_MODES)} (default: resrl). 'grpo' is ResRLTrainer with "
            "GRPO's advantages: TRL's losses and ResRL's logging (TRL's own trainer, unchanged, is the recipe's "
            "--trainer_cls GRPOTrainer)."
        },
    )
    w_reinforce_lambda: float = field(
        default=0.1, metadata={"help": "W-REINFORCE's advantage of a correct completion (paper: 0.1)."}
    )
    resrl_rank: int = field(default=64, metadata={"help": "Rank of the positive subspace (paper: 64)."})
    resrl_max_pos_tokens: int = field(
        default=4096, metadata={"help": "Most positive tokens per group, subsampled beyond (paper: 4096)."}
    )
    resrl_q_low: float = field(
        default=0.2, metadata={"help": "Residual-energy quantile mapped to resrl_min_weight (paper: 0.2)."}
    )
    resrl_q_high: float = field(default=0.8, metadata={"help": "Residual-energy quantile mapped to 1 (paper: 0.8)."})
    resrl_min_weight: float = field(default=0.1, metadata={"help": "Smallest negative-token weight (paper: 0.1)."})
    resrl_pos_weight: float = field(
        default=0.1, metadata={"help": "Factor on positive completions' advantages (paper: 0.1)."}
    )
    resrl_pca_niter: int = field(default=4, metadata={"help": "Power iterations of the randomised PCA (paper: 4)."})
    resrl_hidden_layer: int = field(
        default=-2,
        metadata={"help": "Index into output_hidden_states of the hidden states to use (paper: -2)."},
    )
    resrl_weight_position: str = field(
        default="previous",
        metadata={
            "help": "Which hidden state a token's weight is read from: previous (the position whose logits chose the "
            "token; paper) or own (the token's own position; an ablation)."
        },
    )
    resrl_positive_threshold: float = field(
        default=0.0, metadata={"help": "A completion is positive when its reward is above this (paper: 0)."}
    )
    resrl_mask_think: bool = field(
        default=False, metadata={"help": "Leave <think>…</think> spans out of ResRL's statistics (paper: off)."}
    )
    resrl_think_start: str = field(default="<think>", metadata={"help": "Opening marker of a think span."})
    resrl_think_end: str = field(default="</think>", metadata={"help": "Closing marker of a think span."})
    resrl_subspace: str = field(
        default="auto",
        metadata={
            "help": "Where group subspaces are built: step (in the training forward; whole groups per micro-batch), "
            "rollout (once per generation; any micro-batch size), or auto (step when the micro-batch holds whole "
            "groups, else rollout)."
        },
    )
    resrl_seed: int | None = field(
        default=None, metadata={"help": "Seed of ResRL's own random stream; defaults to `seed`."}
    )
    resrl_log_interference: bool = field(
        default=False,
        metadata={"help": "Log the positive/negative head-gradient cosine, with and without token weights."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.advantage_mode not in ADVANTAGE_MODES:
            problems.append(f"advantage_mode must be one of {list(ADVANTAGE_MODES)}, got {self.advantage_mode!r}")
        if not self.w_reinforce_lambda >= 0.0:
            problems.append(
                f"w_reinforce_lambda must be >= 0 (the reward of a correct sample), got {self.w_reinforce_lambda}"
            )
        if self.advantage_mode in USES_TOKEN_WEIGHTS and self.loss_type == "vespo":
            problems.append(
                "loss_type='vespo' picks its per-sequence shaping from the sign of each sequence's advantage and does "
                "not take ResRL's per-token advantages; use loss_type 'dapo' (TRL's default), 'grpo', 'dr_grpo', "
                "'bnpo', 'cispo', 'sapo' or 'luspo', or advantage_mode 'grpo'"
            )
        # The subspace settings are checked by the class the maths takes, in the config's field names.
        subspace_values = {name: getattr(self, field) for name, field in SUBSPACE_FIELDS.items()}
        problems.extend(SubspaceSettings.problems(subspace_values, SUBSPACE_FIELDS))
        if not self.resrl_pos_weight >= 0.0:
            problems.append(f"resrl_pos_weight must be >= 0, got {self.resrl_pos_weight}")
        if self.resrl_hidden_layer in (0, -1):
            problems.append(
                f"resrl_hidden_layer={self.resrl_hidden_layer} is not a decoder block's output (0 is the embeddings, "
                "-1 the final-normed output); use -2 (the paper's choice) or another block"
            )
        if self.resrl_weight_position not in WEIGHT_POSITIONS:
            problems.append(
                f"resrl_weight_position must be one of {list(WEIGHT_POSITIONS)} (paper: 'previous'), got "
                f"{self.resrl_weight_position!r}"
            )
        if self.resrl_log_interference and self.advantage_mode not in USES_TOKEN_WEIGHTS:
            problems.append(
                f"resrl_log_interference compares gradients with and without token weights, which advantage_mode "
                f"{self.advantage_mode!r} has none of; use advantage_mode 'resrl' or 'resrl_tokens_only'"
            )
        if self.resrl_mask_think and not (self.resrl_think_start and self.resrl_think_end):
            problems.append("resrl_mask_think=True needs non-empty resrl_think_start and resrl_think_end")
        whole_micro_batches = self.auto_subspace == "step"  # every micro-batch holds whole prompt groups
        if self.resrl_subspace == "auto":
            self.resrl_subspace = self.auto_subspace
        if self.resrl_subspace not in ("step", "rollout"):
            problems.append(f"resrl_subspace must be 'auto', 'step' or 'rollout', got {self.resrl_subspace!r}")
        whole_groups = self.advantage_mode in USES_TOKEN_WEIGHTS and self.resrl_subspace == "step"
        if whole_groups and not whole_micro_batches:
            problems.append(
                f"resrl_subspace='step' needs per_device_train_batch_size ({self.per_device_train_batch_size}) to be "
                f"a multiple of num_generations ({self.num_generations}), so that every training micro-batch holds "
                "whole prompt groups; set per_device_train_batch_size to a multiple of it, or "
                "resrl_subspace='rollout' (or 'auto') to build each group's subspace at rollout time"
            )
        num_eval_generations = self.num_generations_eval or self.num_generations
        if whole_groups and self.eval_strategy != "no" and self.per_device_eval_batch_size % num_eval_generations != 0:
            problems.append(
                f"per_device_eval_batch_size ({self.per_device_eval_batch_size}) must be a multiple of the "
                f"generations per prompt in evaluation ({num_eval_generations}) so that evaluation batches hold whole "
                "groups"
            )
        if problems:
            raise ValueError("Invalid ResRLConfig:\n  - " + "\n  - ".join(problems))

    @property
    def auto_subspace(self) -> str:
        """What `resrl_subspace="auto"` means for these batch sizes: `"step"` (the reference's) when every training
        micro-batch holds whole prompt groups, else `"rollout"`."""
        return "step" if self.per_device_train_batch_size % self.num_generations == 0 else "rollout"

    @property
    def subspace_settings(self) -> SubspaceSettings:
        """The `resrl_rank`, `resrl_max_pos_tokens`, `resrl_q_low`, `resrl_q_high`, `resrl_min_weight` and
        `resrl_pca_niter` fields as the settings :mod:`resrl_trl.residual` takes."""
        return SubspaceSettings(**{name: getattr(self, field) for name, field in SUBSPACE_FIELDS.items()})
