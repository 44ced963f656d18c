"""The tests' shared helpers: tiny models and a character-level tokenizer built in memory (so tests run offline in
seconds), verifiable rewards, trainers with the tests' settings, and hand-made rollout batches."""

from __future__ import annotations

import copy
import importlib.util
import string

import pytest
import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from resrl_trl import ResRLConfig, ResRLTrainer
from resrl_trl.trainer import GROUP_IDS_KEY, IS_POSITIVE_KEY

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


def make_trainer(
    tmp_path,
    tokenizer,
    dataset,
    cls=ResRLTrainer,
    model=None,
    peft_config=None,
    reward_funcs=parity_reward,
    **overrides,
):
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


def grpo_twin(tmp_path, tokenizer, dataset, resrl):
    """A GRPOTrainer on an identical copy of `resrl`'s model."""
    return make_trainer(
        tmp_path, tokenizer, dataset, cls=GRPOTrainer, model=copy.deepcopy(resrl.model), gradient_checkpointing=False
    )


def hand_batch(tokenizer, batch=8, group_size=4, prompt_len=5, completion_len=9, seed=0):
    """A rollout batch in the form `_compute_loss` receives, with mixed groups and ragged completions."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(10, 90, (batch, prompt_len), generator=g)
    prompt_mask = torch.ones(batch, prompt_len, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    prompt_ids[0, :2] = tokenizer.pad_token_id
    completion_ids = torch.randint(10, 90, (batch, completion_len), generator=g)
    completion_mask = torch.ones(batch, completion_len, dtype=torch.long)
    completion_mask[1, 6:] = 0  # right padding
    completion_mask[6, 7:] = 0
    is_positive = torch.tensor([True, False, True, False, False, True, False, True])[:batch]
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.where(is_positive, 1.0, -1.0) * torch.linspace(0.5, 1.5, batch),
        "num_items_in_batch": completion_mask.sum(),
        GROUP_IDS_KEY: torch.arange(batch) // group_size,
        IS_POSITIVE_KEY: is_positive,
    }


def reference_hidden(model, batch, index=-2):
    """`output_hidden_states[index]` at the positions whose logits score the completion tokens."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        states = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    length, tokens = input_ids.size(1), batch["completion_ids"].size(1)
    return states[index][:, length - tokens - 1 : length - 1]
