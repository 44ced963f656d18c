"""Setup the benchmark scripts share: model architectures and randomly initialised models of them, a tokenizer and
trainers for hand-made batches, synthetic rollout batches, timing and peak memory, and variants run in processes of
their own. Heavy libraries are imported where they are used, so that ``--help`` and the parent processes that only
collect their variants' results stay light."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]

SMOLLM2_135M = dict(  # SmolLM2-135M's architecture, for a randomly initialised model of the same size
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
    rope_theta=100000.0,
)
QWEN3_1_7B = dict(  # Qwen3-1.7B's architecture
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    tie_word_embeddings=True,
    rope_theta=1e6,
)
QWEN3_4B = QWEN3_1_7B | dict(  # Qwen3-4B's architecture
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
)
TINY_QWEN3 = QWEN3_1_7B | dict(  # Qwen3's code paths at toy size, for smoke runs on the CPU
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
MODELS = ("embedded", "random-smollm2", "random-qwen3-1.7b", "tiny")
"""``embedded``: the packaged SmolLM2-135M-Instruct GGUF; the others are randomly initialised (speed and memory do
not depend on the weights' values): SmolLM2-135M's and Qwen3-1.7B's architectures, and a tiny Qwen3."""


def build_model(name: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The model ``name`` (one of :data:`MODELS`) in ``dtype`` on ``device``; random ones from seed 0."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if name == "embedded":
        from resrl_trl.models import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(dtype=dtype)
        return model
    torch.manual_seed(0)
    if name == "random-smollm2":
        config, model_cls = LlamaConfig(**SMOLLM2_135M), LlamaForCausalLM
    else:
        config, model_cls = Qwen3Config(**(TINY_QWEN3 if name == "tiny" else QWEN3_1_7B)), Qwen3ForCausalLM
    config.dtype = dtype
    with torch.device(device):
        return model_cls(config).to(dtype)


def word_tokenizer() -> Any:
    """A two-word tokenizer: the benchmarks feed token ids directly and never decode."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "x": 1}, unk_token="x")),
        pad_token="<pad>",
        eos_token="<pad>",
        padding_side="left",
    )


def zero_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """The benchmarks' reward function: never called on hand-made batches, but the trainers need one."""
    return [0.0] * len(completions)


def bench_trainer(model: torch.nn.Module, resrl: bool, resrl_settings: dict[str, Any] | None = None, **settings: Any):
    """ResRLTrainer (``resrl``; ``resrl_settings`` added to its config) or TRL's GRPOTrainer over ``model``, with the
    config ``settings``, for timing ``_compute_loss`` on hand-made batches."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from resrl_trl import ResRLConfig, ResRLTrainer

    args = ResRLConfig(**settings, **(resrl_settings or {})) if resrl else GRPOConfig(**settings)
    return (ResRLTrainer if resrl else GRPOTrainer)(
        model=model,
        reward_funcs=zero_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * 8}),
        processing_class=word_tokenizer(),
    )


def synthetic_rollout(
    is_positive: torch.Tensor, group_size: int, prompt_len: int, completion_len: int, vocab: int, device: str
) -> dict[str, torch.Tensor]:
    """A rollout batch as TRL's ``_compute_loss`` receives it, with ResRL's keys: groups of ``group_size``
    consecutive rows, random token ids, completions of between half and all of ``completion_len`` tokens, rewards 1
    where ``is_positive`` and 0 elsewhere, and their group-normalised advantages. Random draws from seed 0."""
    g = torch.Generator().manual_seed(0)
    batch = len(is_positive)
    lengths = torch.randint(completion_len // 2, completion_len + 1, (batch,), generator=g)
    completion_mask = (torch.arange(completion_len)[None, :] < lengths[:, None]).long()
    grouped = is_positive.float().view(-1, group_size)
    advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).flatten()
    data = {
        "prompt_ids": torch.randint(100, vocab, (batch, prompt_len), generator=g),
        "prompt_mask": torch.ones(batch, prompt_len, dtype=torch.long),
        "completion_ids": torch.randint(100, vocab, (batch, completion_len), generator=g),
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
        "resrl_group_ids": torch.arange(batch) // group_size,
        "resrl_is_positive": is_positive,
    }
    return {k: v.to(device) for k, v in data.items()}


def sync(device: str) -> None:
    """Wait for the device's queued work, so that a timer reads the work's time, not its launch's."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(
    call: Callable[[], Any],
    repeats: int,
    device: str,
    warmup: int = 1,
    after_warmup: Callable[[], None] | None = None,
) -> float:
    """The median wall time of ``repeats`` calls (each synchronised), after ``warmup`` untimed calls and then
    ``after_warmup`` (which may, say, reset a peak-memory counter)."""
    for _ in range(warmup):
        call()
    sync(device)
    if after_warmup is not None:
        after_warmup()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_memory_mb(device: str) -> float:
    """Peak allocated CUDA memory on a GPU, peak resident set size of this process on the CPU, in MiB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run_in_own_process(script: str, argv: Sequence[str]) -> dict[str, Any]:
    """Run ``script`` with ``argv`` in a fresh Python process (so its peak memory is its own) and return the JSON
    object on the last line it prints; a failure ends this process with the child's output."""
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
