"""resrl-trl: ResRL (ICML 2026) for Hugging Face TRL."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Imported on first use, so that light modules (the answer-checking worker, the maths) do not pull in TRL and torch.
_EXPORTS = {
    "ResRLConfig": ".config",
    "ResRLTrainer": ".trainer",
    "SubspaceSettings": ".residual",
    "TrainingCurvesCallback": ".callbacks",
    "compute_residual_weights": ".residual",
    "think_span_mask": ".masks",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'resrl_trl' has no attribute {name!r}")
