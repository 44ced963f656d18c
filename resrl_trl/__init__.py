"""resrl-trl: ResRL (ICML 2026) for Hugging Face TRL."""

from .config import ResRLConfig
from .residual import compute_residual_weights, residual_token_weights, think_span_mask
from .trainer import ResRLTrainer

__version__ = "0.1.0"

__all__ = [
    "ResRLConfig",
    "ResRLTrainer",
    "compute_residual_weights",
    "residual_token_weights",
    "think_span_mask",
]
