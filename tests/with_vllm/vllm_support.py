"""Helpers of the vLLM tests: the environment vLLM's CPU build needs, a training run, and log-probabilities."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl import GRPOConfig, GRPOTrainer

from resrl_trl import ResRLConfig, ResRLTrainer
from resrl_trl.data import load_math_dataset
from resrl_trl.testing.tiny import checksum_reward

# vLLM's CPU build: 1 GiB of KV cache, and the engine in this process (TRL's colocated mode drives it directly).
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
SHIM_PATH = Path(__file__).parent / "subprocess_shim"
TRAINERS: list[GRPOTrainer] = []  # created by the running test, released after it (see release_trainers)
LORA = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")


def train(
    model_dir: str,
    output_dir: Path,
    trainer_cls: type = ResRLTrainer,
    peft: bool = False,
    max_steps: int = 2,
    **overrides: Any,
) -> GRPOTrainer:
    """Train the embedded SmolLM2 (as a plain folder) with vLLM colocated, on the checksum reward (mixed groups)."""
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "seed": 0,
        "num_generations": 8,
        "per_device_train_batch_size": 8,
        "max_completion_length": 32,
        "temperature": 0.7,
        "learning_rate": 1e-5,
        "max_steps": max_steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_vllm": True,
        "vllm_mode": "colocate",
    } | overrides
    args = GRPOConfig(**settings) if trainer_cls is GRPOTrainer else ResRLConfig(**settings)
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=checksum_reward,
        args=args,
        train_dataset=load_math_dataset("arithmetic", "train", None, 0).select(range(16)),
        processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left"),
        peft_config=LORA if peft else None,
    )
    TRAINERS.append(trainer)
    trainer.train()
    return trainer


def release_trainers() -> None:
    """Shut down the colocated engines of this test's trainers and drop their tensors.

    vLLM's in-process engine stays referenced after its trainer is gone (about 2.5 GB a test otherwise).
    """
    while TRAINERS:
        trainer = TRAINERS.pop()
        generation = getattr(trainer, "vllm_generation", None)
        if getattr(generation, "llm", None) is not None:
            generation.llm.llm_engine.engine_core.shutdown()
            generation.llm = None
        for name in ("model", "model_wrapped", "ref_model", "optimizer", "lr_scheduler", "vllm_generation"):
            setattr(trainer, name, None)
    gc.collect()


def step_logs(trainer: GRPOTrainer) -> list[dict[str, float]]:
    return [log for log in trainer.state.log_history if "loss" in log]


def policy_logprobs(model: PreTrainedModel, token_ids: list[int]) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1, under a transformers model, in float32."""
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(token_ids[1:])[:, None]).squeeze(1)


def vllm_logprobs(llm: Any, token_ids: list[int]) -> torch.Tensor:
    """The same log-probabilities as vLLM's engine computes them (``prompt_logprobs``)."""
    from vllm import SamplingParams, TokensPrompt

    output = llm.generate(
        [TokensPrompt(prompt_token_ids=token_ids)], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )[0]
    return torch.tensor(
        [entry[tok].logprob for tok, entry in zip(token_ids[1:], output.prompt_logprobs[1:], strict=True)]
    )


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that runs TRL with vLLM's CPU build: the shim on its path."""
    path = os.pathsep.join(p for p in (str(SHIM_PATH), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **VLLM_CPU_ENV, "PYTHONPATH": path, **extra}
