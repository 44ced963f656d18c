"""Tiny models and a character-level tokenizer built in memory, so tests run offline in seconds."""

from __future__ import annotations

import importlib.util
import string

import pytest
import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
# The vLLM tests run in their own environment (make test-vllm): elsewhere they are not collected.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["with_vllm"]

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


def parity_reward(completions, **kwargs) -> list[float]:
    """A verifiable reward a random tiny model gets right about half the time: an even number of characters."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(len(t) % 2 == 0) for t in texts]


def checksum_reward(completions, **kwargs) -> list[float]:
    """A reward that stays mixed within groups even when every completion hits the length limit: the parity of the
    sum of the character codes."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(sum(map(ord, t)) % 2 == 0) for t in texts]


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def make_prompts_dataset() -> Dataset:
    questions = [f"What is {a} + {b}?" for a in range(4) for b in range(4)]
    return Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": q}] for q in questions], "solution": ["0"] * len(questions)}
    )


@pytest.fixture
def prompts_dataset() -> Dataset:
    return make_prompts_dataset()
