"""A tiny model and a character-level tokenizer built in memory (so tests and benchmarks run offline in seconds),
toy verifiable rewards that keep prompt groups mixed, and a trainer with the tests' settings."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from resrl_trl import ResRLConfig, ResRLTrainer

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
SPECIALS = ["<pad>", "</s>", "<unk>", "<user>", "<assistant>", "<system>"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    chars = sorted(set(string.printable) - set("\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="left"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[3:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def parity_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """A verifiable reward a random tiny model gets right about half the time: an even number of characters."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(len(t) % 2 == 0) for t in texts]


def checksum_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """A reward that stays mixed within groups even when every completion hits the length limit: the parity of the
    sum of the character codes."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(sum(map(ord, t)) % 2 == 0) for t in texts]


def make_prompts_dataset() -> Dataset:
    questions = [f"What is {a} + {b}?" for a in range(4) for b in range(4)]
    return Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": q}] for q in questions], "solution": ["0"] * len(questions)}
    )


COMMON = dict(
    use_cpu=True,
    report_to="none",
    num_generations=4,
    per_device_train_batch_size=8,
    max_completion_length=10,
    max_steps=2,
    logging_steps=1,
    save_strategy="no",
    learning_rate=1e-2,
    seed=0,
    beta=0.0,
    bf16=False,  # TRL's default autocasts to bf16, on CPU too; fp32 makes the comparisons exact
)
"""The tests' training settings: two steps of two prompt groups of four on the CPU, in float32."""


def make_trainer(
    tmp_path: Path,
    tokenizer: PreTrainedTokenizerFast,
    dataset: Dataset,
    cls: type[GRPOTrainer] = ResRLTrainer,
    model: torch.nn.Module | None = None,
    peft_config: Any = None,
    reward_funcs: Any = parity_reward,
    **overrides: Any,
) -> GRPOTrainer:
    """A ``cls`` trainer (ResRLTrainer or TRL's GRPOTrainer) with :data:`COMMON` and ``overrides``, writing under
    ``tmp_path / cls.__name__``, on a fresh tiny model unless one is given."""
    config_cls = ResRLConfig if cls is ResRLTrainer else GRPOConfig
    args = config_cls(output_dir=str(tmp_path / cls.__name__), **{**COMMON, **overrides})
    trainer = cls(
        model=model if model is not None else make_model(tokenizer),
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; tests call _compute_loss directly
    return trainer
