"""Reading hidden states out of a forward that someone else runs: which decoder block to read, and one forward hook
that reads it for as long as a ``with`` block lasts.

Training (the placement), the interference probe and resrl-inspect all read hidden states this way, so they read the
same tensor: the output of the block whose output is ``output_hidden_states[hidden_layer]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["capture_outputs", "decoder_block", "output_tensor"]


def decoder_block(model: nn.Module, hidden_layer: int) -> nn.Module:
    """The decoder block whose output is ``output_hidden_states[hidden_layer]``.

    Works through PEFT, DDP and DeepSpeed wrappers: it looks for the module list of decoder blocks, whose length is
    ``config.num_hidden_layers``. Index 0 (the embeddings) and -1 (the final-normed output) are not blocks' outputs.
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


def output_tensor(output: Any) -> torch.Tensor:
    """The hidden states a module returned: a decoder's ``last_hidden_state``, a block's first output, or itself."""
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is not None:
        return hidden
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def capture_outputs(module: nn.Module, on_output: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Call ``on_output`` with the hidden states ``module`` returns, at each of its forward calls inside the block.

    The hook is removed when the block ends, also on an error, so nothing reads the backward's recomputation (gradient
    checkpointing) or a later forward. ``on_output`` receives the tensor itself, not a copy: it must not change it.
    """
    handle = module.register_forward_hook(lambda _module, _args, output: on_output(output_tensor(output)))
    try:
        yield
    finally:
        handle.remove()
