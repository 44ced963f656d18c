"""Test-only shim for vLLM's CPU build, so that TRL can push trained weights into it.

On the CPU, vLLM repacks every linear layer's weight for its own matrix kernels once the model is loaded
(``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``) and leaves an empty parameter behind; TRL's weight sync
then fails with ``'Parameter' object has no attribute 'weight_loader'``, for TRL's own ``GRPOTrainer`` too. GPU
builds of vLLM keep their weights and need nothing of this. The shim keeps the plain weight and multiplies with
``torch.nn.functional.linear``, so a weight TRL loads is the weight vLLM uses. It is never part of the training path.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


def _plain_linear(layer: torch.nn.Module, remove_weight: bool) -> None:
    layer.cpu_linear = torch.nn.functional.linear  # called as cpu_linear(x, layer.weight, bias)


def install() -> None:
    """Keep vLLM's CPU linear weights in place, and build TRL's colocated engine without graph compilation."""
    from vllm.model_executor.layers import utils as vllm_layer_utils

    vllm_layer_utils.dispatch_cpu_unquantized_gemm = _plain_linear
    # vLLM's CPU graph compilation is slow and fragile: TRL's colocated engine runs eagerly in the tests.
    from trl.generation import vllm_generation

    if not getattr(vllm_generation.LLM, "_resrl_eager", False):
        eager = functools.partial(vllm_generation.LLM, enforce_eager=True)
        eager._resrl_eager = True  # type: ignore[attr-defined]
        vllm_generation.LLM = eager


def eager_llm(**kwargs: Any) -> Any:
    """A vLLM engine for the tests: eager, with the shim in place."""
    install()
    from vllm import LLM

    return LLM(enforce_eager=True, **kwargs)
