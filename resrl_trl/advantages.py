"""Sequence-level advantages of the methods ResRL is compared with, as pure tensor functions.

The baselines of the ResRL paper come from RLVR-Decomposed (Zhu et al., 2025): REINFORCE-style advantages with no
group normalisation, used in the same clipped policy loss as GRPO. With rewards ``r`` in {0, 1}:

- PSR (positive samples only): ``A = r``;
- NSR (negative samples only): ``A = r - 1``;
- W-REINFORCE: ``A = lambda`` for a correct completion, ``-1`` for a wrong one (``lambda = 0.1``).

GRPO's group-normalised advantage is TRL's own and is not recomputed here.
"""

from __future__ import annotations

import torch

__all__ = ["ADVANTAGE_MODES", "SCALES_POSITIVES", "USES_TOKEN_WEIGHTS", "reinforce_advantages"]

ADVANTAGE_MODES = ("resrl", "grpo", "psr", "nsr", "w_reinforce", "resrl_pos_only", "resrl_tokens_only")
"""Every method the trainer runs: ResRL, its baselines, and ResRL's two parts alone (ablations)."""
USES_TOKEN_WEIGHTS = frozenset({"resrl", "resrl_tokens_only"})
"""Modes that weight negative tokens by their residual outside the positive subspace."""
SCALES_POSITIVES = frozenset({"resrl", "resrl_pos_only"})
"""Modes that multiply positive completions' GRPO advantages by ``pos_weight``."""


def reinforce_advantages(
    rewards: torch.Tensor, is_positive: torch.Tensor, mode: str, w_reinforce_lambda: float = 0.1
) -> torch.Tensor:
    """``(B,)`` advantages of PSR, NSR or W-REINFORCE.

    Args:
        rewards: ``(B,)`` total rewards (``NaN`` for a completion no reward function could score).
        is_positive: ``(B,)`` bool, whether each completion is correct (reward above the positive threshold).
        mode: ``"psr"`` (``A = r``), ``"nsr"`` (``A = r - 1``) or ``"w_reinforce"`` (``lambda`` if correct, else -1).
        w_reinforce_lambda: W-REINFORCE's weight on correct completions.

    Returns:
        float32 advantages; unscorable completions get 0, as TRL gives them.
    """
    rewards = rewards.float()
    if mode == "psr":
        advantages = rewards
    elif mode == "nsr":
        advantages = rewards - 1.0
    elif mode == "w_reinforce":
        advantages = torch.where(is_positive, w_reinforce_lambda, -1.0).to(rewards)
    else:
        raise ValueError(f"reinforce_advantages takes 'psr', 'nsr' or 'w_reinforce', not {mode!r}")
    return torch.where(torch.isnan(rewards), 0.0, advantages)
