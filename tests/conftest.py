"""The tests' fixtures and shared helpers. The tiny model, tokenizer, rewards and trainer come from
:mod:`resrl_trl.testing.tiny` (the benchmarks use them too) and are re-exported here; the hand-made rollout batches
are the tests' own."""

from __future__ import annotations

import contextlib
import copy
import importlib.util

import pytest
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast
from trl import GRPOTrainer

from resrl_trl.testing.tiny import (  # noqa: F401  (re-exported for the tests)
    COMMON,
    checksum_reward,
    make_model,
    make_prompts_dataset,
    make_tokenizer,
    make_trainer,
    parity_reward,
)
from resrl_trl.trainer import GROUP_IDS_KEY, IS_POSITIVE_KEY

# The vLLM tests run in their own environment (make test-vllm): elsewhere they are not collected.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["with_vllm"]


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def prompts_dataset() -> Dataset:
    return make_prompts_dataset()


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


def record_token_weights(placement) -> list[dict]:
    """Every call of ``placement.token_weights`` (the seam where a training forward's hidden states become token
    weights), from now on: its inputs (the completion-aligned hidden states, valid mask, group ids, positive flags,
    mode) and the weights and statistics it returned."""
    calls: list[dict] = []
    real = placement.token_weights

    def recording(hidden, valid, group_ids, is_positive, mode):
        result = real(hidden, valid, group_ids, is_positive, mode)
        calls.append(
            dict(
                hidden=hidden.clone(), valid=valid.clone(), group_ids=group_ids.clone(),
                is_positive=is_positive.clone(), mode=mode, weights=result.weights.clone(), stats=result.stats,
            )
        )  # fmt: skip
        return result

    placement.token_weights = recording
    return calls


def record_training_forwards(placement) -> list[dict]:
    """Every training forward the placement weighs (its ``training_forward`` seam), from now on: the micro-batch's
    inputs, the valid mask and mode it was given, the advantages before and after, and what it yielded."""
    calls: list[dict] = []
    real = placement.training_forward

    @contextlib.contextmanager
    def recording(inputs, valid, mode):
        before = inputs["advantages"].clone()
        with real(inputs, valid, mode) as result:
            yield result
        calls.append(
            dict(inputs, valid=valid.clone(), mode=mode, before=before, after=inputs["advantages"], result=result)
        )

    placement.training_forward = recording
    return calls
