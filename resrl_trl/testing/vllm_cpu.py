"""A patch for vLLM's CPU build, so that TRL can push trained weights into it: for the vLLM tests and the CPU
benchmark only. Nothing in the training path imports it, and training on vLLM's CPU build is not a supported setup.

On the CPU, vLLM repacks every linear layer's weight for its own matrix kernels once the model is loaded
(``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``) and leaves an empty parameter behind; TRL's weight sync
then fails with ``'Parameter' object has no attribute 'weight_loader'``, for TRL's own ``GRPOTrainer`` too. GPU
builds of vLLM keep their weights and need nothing of this. The patch keeps the plain weight and multiplies with
``torch.nn.functional.linear``, so a weight TRL loads is the weight vLLM uses.
"""

from __future__ import annotations

import functools

import torch


def _plain_linear(layer: torch.nn.Module, remove_weight: bool) -> None:
    layer.cpu_linear = torch.nn.functional.linear  # called as cpu_linear(x, layer.weight, bias)


def install() -> None:
    """Keep vLLM's CPU linear weights in place, and build TRL's colocated engine without graph compilation."""
    from vllm.model_executor.layers import utils as vllm_layer_utils

    vllm_layer_utils.dispatch_cpu_unquantized_gemm = _plain_linear
    # vLLM's CPU graph compilation is slow and fragile: TRL's colocated engine runs eagerly here.
    from trl.generation import vllm_generation

    if not getattr(vllm_generation.LLM, "_resrl_eager", False):
        eager = functools.partial(vllm_generation.LLM, enforce_eager=True)
        eager._resrl_eager = True  # type: ignore[attr-defined]
        vllm_generation.LLM = eager
