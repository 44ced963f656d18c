"""Every advantage mode's advantages, as pure tensor functions: the one place that says what each method changes.

A rollout's ``(B,)`` sequence advantages (:func:`sequence_advantages`) are what the loss uses for every mode without
token weights, and what the token weights multiply for ResRL (:func:`token_advantages`):

- ``grpo``: TRL's group-normalised advantage (not recomputed here);
- ``resrl``: GRPO's advantage with positive completions' advantages times ``pos_weight``, then each negative token's
  advantage times its residual weight;
- ``resrl_pos_only`` and ``resrl_tokens_only``: ResRL's two parts alone (ablations);
- the baselines of the ResRL paper, from RLVR-Decomposed (Zhu et al., 2025): REINFORCE-style advantages with no group
  normalisation, used in the same clipped policy loss as GRPO. With rewards ``r`` in {0, 1}: PSR (positive samples
  only) ``A = r``; NSR (negative samples only) ``A = r - 1``; W-REINFORCE ``A = lambda`` for a correct completion,
  ``-1`` for a wrong one (``lambda = 0.1``).

ResRL scales a positive completion by one factor at every token, so scaling its sequence advantage is the same
(bit for bit) as scaling its tokens: positives are scaled here, once, and the token weights of positives are 1.
"""

from __future__ import annotations

import torch

__all__ = [
    "ADVANTAGE_MODES",
    "SCALES_POSITIVES",
    "USES_TOKEN_WEIGHTS",
    "group_normalised_advantages",
    "reinforce_advantages",
    "sequence_advantages",
    "token_advantages",
]

ADVANTAGE_MODES = ("resrl", "grpo", "psr", "nsr", "w_reinforce", "resrl_pos_only", "resrl_tokens_only")
"""Every method the trainer runs: ResRL, its baselines, and ResRL's two parts alone (ablations)."""
USES_TOKEN_WEIGHTS = frozenset({"resrl", "resrl_tokens_only"})
"""Modes that weight negative tokens by their residual outside the positive subspace."""
SCALES_POSITIVES = frozenset({"resrl", "resrl_pos_only"})
"""Modes that multiply positive completions' GRPO advantages by ``pos_weight``."""
REINFORCE_MODES = frozenset({"psr", "nsr", "w_reinforce"})
"""Modes whose advantages come from the rewards alone (:func:`reinforce_advantages`)."""


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


def sequence_advantages(
    mode: str,
    grpo_advantages: torch.Tensor,
    rewards: torch.Tensor,
    is_positive: torch.Tensor,
    pos_weight: float = 1.0,
    w_reinforce_lambda: float = 0.1,
) -> torch.Tensor:
    """The ``(B,)`` advantages advantage mode ``mode`` trains with, before any token weight.

    Args:
        mode: one of :data:`ADVANTAGE_MODES`.
        grpo_advantages: ``(B,)`` TRL's group-normalised advantages of the completions.
        rewards: ``(B,)`` total rewards (``NaN`` where no reward function could score).
        is_positive: ``(B,)`` bool, whether each completion is correct.
        pos_weight: ResRL's factor on positive completions (``resrl_pos_weight``), used by :data:`SCALES_POSITIVES`.
        w_reinforce_lambda: W-REINFORCE's weight on correct completions.

    Returns:
        ``(B,)`` advantages (a new tensor where the mode changes them, else ``grpo_advantages`` itself).
    """
    if mode in REINFORCE_MODES:
        return reinforce_advantages(rewards, is_positive, mode, w_reinforce_lambda).to(grpo_advantages.device)
    if mode in SCALES_POSITIVES:
        return torch.where(is_positive, grpo_advantages * pos_weight, grpo_advantages)
    if mode in ADVANTAGE_MODES:
        return grpo_advantages
    raise ValueError(f"advantage_mode must be one of {ADVANTAGE_MODES}, got {mode!r}")


def token_advantages(advantages: torch.Tensor, token_weights: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` per-token advantages: ``(B,)`` sequence advantages (or ``(B, T)`` ones) times ``(B, T)`` token
    weights (a negative token's residual weight, 1 everywhere else)."""
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    return advantages * token_weights


def group_normalised_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages as TRL computes them by default, for analyses that have rewards but no trainer:
    ``(r - mean_g) / (std_g + eps)`` over each group ``g`` of ``group_ids`` (``std`` with Bessel's correction)."""
    index = torch.unique(group_ids, return_inverse=True)[1]
    zeros = torch.zeros(int(index.max()) + 1 if len(index) else 0, dtype=rewards.dtype, device=rewards.device)
    counts = zeros.index_add(0, index, torch.ones_like(rewards))
    centred = rewards - (zeros.index_add(0, index, rewards) / counts)[index]
    std = (zeros.index_add(0, index, centred**2) / (counts - 1)).sqrt()
    return centred / (std[index] + eps)
