"""TRL's tool calling and environments keep working with ResRLTrainer.

TRL runs a tool loop when the trainer gets ``tools`` or an ``environment_factory``: it parses tool calls out of each
completion with the tokenizer's ``response_template``, runs the tools, appends their output to the completion and
lets the model continue. The appended tool-output tokens carry ``tool_mask`` 0: TRL's loss leaves them out, and so
must ResRL (neither in a group's positive subspace nor among the weighted negative tokens). With an environment that
defines ``get_reward``, ``reward_funcs`` may be omitted: the environment's reward alone decides which completions are
positive.

The tiny random model does not write tool calls, so its ``generate`` is replaced by a script that writes a fixed
reply for each completion (a correct call, a wrong call or a direct answer) and, after a tool ran, repeats the tool's
output as the answer. Everything else (TRL's parsing, tool loop, masks, rewards; ResRL's hidden states, subspaces,
weights; the loss and the optimiser step) runs for real.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
import torch
from conftest import COMMON, make_model, make_prompts_dataset, make_tokenizer, record_training_forwards
from datasets import Dataset
from transformers import PreTrainedTokenizerFast

from resrl_trl import ResRLConfig, ResRLTrainer
from resrl_trl.placement import IS_POSITIVE_KEY, Rollout

TOOL_TOKENS = ["<tool>", "<call>", "</call>"]

# A chat template that renders a whole tool-calling exchange: the tools' names in a system line, each assistant tool
# call as JSON between <call> and </call>, and tool output as a <tool> turn. Each message is rendered on its own, so
# earlier messages render the same whatever follows (TRL's tool loop needs that).
TOOL_CHAT_TEMPLATE = (
    "{%- if tools %}<system>tools:{% for t in tools %} {{ t.function.name }}{% endfor %}</s>{% endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}<assistant>{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<call>{{ c.function | tojson }}</call>{% endfor %}</s>"
    "{%- else -%}<{{ m.role }}>{{ m.content }}</s>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<assistant>{% endif -%}"
)
# How transformers' parse_response reads a reply written in that template: text up to </s>, and any number of JSON
# tool calls between <call> and </call>.
TOOL_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<assistant>",
    "fields": {
        "tool_calls": {
            "open": "<call>",
            "close": "</call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close": "</s>", "content": "text"},
    },
}
QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")
AFTER_TOOL = re.compile(r"<tool>([^<]*)</s><assistant>$")


def make_tool_tokenizer() -> PreTrainedTokenizerFast:
    """The tests' character-level tokenizer with tool markers, a tool-calling chat template and a response parser."""
    tokenizer = make_tokenizer()
    tokenizer.add_tokens(TOOL_TOKENS, special_tokens=True)
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    tokenizer.response_template = TOOL_RESPONSE_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def tool_tokenizer() -> PreTrainedTokenizerFast:
    return make_tool_tokenizer()


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


def make_questions_dataset() -> Dataset:
    """Conversational prompts: a system message, an earlier exchange, then the question; the answer is the sum."""
    pairs = [(a, b) for a in range(2, 6) for b in range(1, 5)]
    prompts = [
        [
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": "What is 1 + 1?"},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": f"What is {a} + {b}?"},
        ]
        for a, b in pairs
    ]
    return Dataset.from_dict({"prompt": prompts, "solution": [str(a + b) for a, b in pairs]})


def answer_reward(completions: list[list[dict[str, Any]]], solution: list[str], **kwargs: Any) -> list[float]:
    """1 when the last assistant message of the conversation is the right sum."""
    return [float(c[-1]["content"].strip() == s) for c, s in zip(completions, solution, strict=True)]


class ScriptedGenerate:
    """Stands in for ``model.generate``. In each group of four completions of a question "What is a + b?": the first
    two call add(a, b), the third calls add(a, b + 1), the fourth answers a + b + 1 without a tool. After a tool ran,
    the reply is the tool's output. Returns prompt and reply ids, as ``generate`` does."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, group_size: int) -> None:
        self.tokenizer, self.group_size = tokenizer, group_size
        self.turns: list[int] = []  # rows generated in each call

    def reply(self, row: int, prompt: str) -> str:
        after_tool = AFTER_TOOL.search(prompt)
        if after_tool:
            return f"{after_tool.group(1)}</s>"
        a, b = map(int, QUESTION.findall(prompt)[-1])
        position = row % self.group_size
        if position == self.group_size - 1:
            return f"{a + b + 1}</s>"
        call = {"name": "add", "arguments": {"a": a, "b": b + (position == self.group_size - 2)}}
        return f"Sum:<call>{json.dumps(call)}</call></s>"

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        prompts = self.tokenizer.batch_decode(input_ids)
        replies = [self.tokenizer.encode(self.reply(i, p), add_special_tokens=False) for i, p in enumerate(prompts)]
        width = max(map(len, replies))
        out = torch.full((len(replies), width), self.tokenizer.pad_token_id, dtype=input_ids.dtype)
        for i, ids in enumerate(replies):
            out[i, : len(ids)] = torch.tensor(ids)
        self.turns.append(len(replies))
        return torch.cat([input_ids, out.to(input_ids.device)], dim=1)


class AdderEnvironment:
    """An environment that owns the reward: its tool adds, and the rollout is right when the tool's last result is
    the row's solution."""

    def __init__(self) -> None:
        self.solution: str | None = None
        self.results: list[int] = []

    def reset(self, **row: Any) -> None:
        self.solution, self.results = row["solution"], []

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        self.results.append(a + b)
        return a + b

    def get_reward(self) -> float:
        return float(bool(self.results) and str(self.results[-1]) == self.solution)


def make_tool_trainer(
    tmp_path,
    tokenizer: PreTrainedTokenizerFast,
    placement: str,
    monkeypatch: pytest.MonkeyPatch,
    reward_funcs: Any = None,
    config: dict[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> tuple[ResRLTrainer, ScriptedGenerate]:
    settings = {**COMMON, "max_completion_length": 80, "max_steps": 1, "resrl_rank": 4, "resrl_subspace": placement}
    if placement == "rollout":  # micro-batches of half a group: each group's subspace is built at rollout time
        settings.update(per_device_train_batch_size=2, gradient_accumulation_steps=4)
    settings.update(config or {})
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer = ResRLTrainer(
        model=make_model(tokenizer),
        reward_funcs=reward_funcs,
        args=ResRLConfig(output_dir=str(tmp_path / placement), **settings),
        train_dataset=make_questions_dataset(),
        processing_class=tokenizer,
        **trainer_kwargs,
    )
    script = ScriptedGenerate(tokenizer, trainer.num_generations)
    monkeypatch.setattr(trainer.model, "generate", script)
    return trainer, script


def record_weighting(trainer: ResRLTrainer) -> tuple[list, list]:
    """Watch the placement's seams: every valid-token mask it is given (a rollout's, for its subspaces, and each
    training forward's), and every micro-batch it weights (with the advantages before and after and the token sums)."""
    masks: list = []
    weighted = record_training_forwards(trainer.placement)
    finish_rollout = trainer.placement.finish_rollout

    def recording_finish(rollout: Rollout) -> dict[str, float]:
        masks.append((rollout.batch["completion_mask"].clone(), rollout.batch.get("tool_mask"), rollout.valid.clone()))
        return finish_rollout(rollout)

    trainer.placement.finish_rollout = recording_finish
    return masks, weighted


def train_and_check_update(trainer: ResRLTrainer) -> list[dict[str, float]]:
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs)
    moved = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, "the run did not update the trained parameters"
    return logs


def check_tool_output_left_out(tokenizer: PreTrainedTokenizerFast, masks: list, weighted: list) -> None:
    """Tool-output tokens (tool_mask 0) are exactly the tool turns TRL appended; ResRL's valid mask leaves them out,
    they keep weight 1 and are not counted among the weighted tokens; other negative tokens get ResRL weights."""
    masks = masks + [(batch["completion_mask"], batch["tool_mask"], batch["valid"]) for batch in weighted]
    assert masks and all(tool_mask is not None for _, tool_mask, _ in masks)
    for completion_mask, tool_mask, valid in masks:
        assert torch.equal(valid, completion_mask.bool() & tool_mask.bool())
    assert weighted
    tool_rows = reweighted = 0
    for batch in weighted:
        ids, tool_mask, completion_mask = batch["completion_ids"], batch["tool_mask"], batch["completion_mask"]
        is_positive = batch[IS_POSITIVE_KEY]
        tool_output = completion_mask.bool() & ~tool_mask.bool()
        for row in range(len(ids)):
            if tool_output[row].any():
                tool_rows += 1
                assert re.fullmatch(r"<tool>\d+</s><assistant>", tokenizer.decode(ids[row][tool_output[row]]))
        negatives = ~is_positive[:, None]
        before = batch["before"][:, None].expand_as(batch["after"])
        assert torch.equal(batch["after"][tool_output & negatives], before[tool_output & negatives])
        valid_negative = completion_mask.bool() & tool_mask.bool() & negatives
        # Every group is mixed (two right, two wrong), so every valid token of a negative completion is weighted.
        assert int(batch["result"].token_sums[3]) == int(valid_negative.sum())  # the weighted tokens
        reweighted += int((batch["after"][valid_negative] != before[valid_negative]).sum())
    assert tool_rows, "no completion carried tool output"
    assert reweighted, "no negative token got a ResRL weight"


@pytest.mark.parametrize("placement", ["step", "rollout"])
def test_tool_calls_train_with_tool_output_left_out(placement, tmp_path, tool_tokenizer, monkeypatch):
    trainer, script = make_tool_trainer(
        tmp_path, tool_tokenizer, placement, monkeypatch, reward_funcs=answer_reward, tools=[add]
    )
    masks, weighted = record_weighting(trainer)
    logs = train_and_check_update(trainer)
    assert script.turns == [8, 6]  # the first turn, then the six completions that called the tool
    assert logs[0]["tools/call_frequency"] == pytest.approx(6 / 8)
    assert logs[0]["rewards/answer_reward/mean"] == pytest.approx(0.5)
    check_tool_output_left_out(tool_tokenizer, masks, weighted)
    assert 0.1 <= logs[0]["resrl/neg_token_weight_mean"] < 1.0


ROLLOUT_FROM_TRL_FORWARD = {  # TRL computes old log-probabilities over the rollout; ResRL reuses its hidden states
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "steps_per_generation": 4,
    "max_steps": 2,  # two optimiser steps train the whole generation
}


@pytest.mark.parametrize("placement", ["step", "rollout"])
def test_environment_reward_decides_positives_without_reward_funcs(placement, tmp_path, tool_tokenizer, monkeypatch):
    """reward_funcs omitted: the environment's get_reward is the only reward, and it alone makes completions positive
    (the two that called add with the question's numbers) or negative (a wrong call, or no call)."""
    config = ROLLOUT_FROM_TRL_FORWARD if placement == "rollout" else None
    trainer, script = make_tool_trainer(
        tmp_path, tool_tokenizer, placement, monkeypatch, config=config, environment_factory=AdderEnvironment
    )
    assert trainer.reward_func_names == ["AdderEnvironment"]
    masks, weighted = record_weighting(trainer)
    rollouts = []
    generate_and_score = trainer._generate_and_score_completions

    def spy(inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = generate_and_score(inputs)
        rewards = [env.get_reward() for env in trainer.environments]
        calls = [list(env.results) for env in trainer.environments]
        rollouts.append((output[IS_POSITIVE_KEY].tolist(), rewards, calls, output.get("old_per_token_logps")))
        return output

    monkeypatch.setattr(trainer, "_generate_and_score_completions", spy)
    logs = train_and_check_update(trainer)
    assert len(rollouts) == 1 and script.turns == [8, 6]
    is_positive, rewards, calls, old_logps = rollouts[0]
    assert rewards == [1.0, 1.0, 0.0, 0.0] * 2
    assert is_positive == [r > 0 for r in rewards]
    assert [len(c) for c in calls] == [1, 1, 1, 0] * 2  # each environment ran its own rollout's tool call
    assert (old_logps is not None) == (placement == "rollout")
    assert logs[0]["rewards/AdderEnvironment/mean"] == pytest.approx(0.5)
    assert logs[0]["resrl/mixed_group_frac"] == 1.0
    assert logs[0]["resrl/positives"] == logs[0]["resrl/negatives"] == 4
    check_tool_output_left_out(tool_tokenizer, masks, weighted)
    assert 0.1 <= logs[0]["resrl/neg_token_weight_mean"] < 1.0


def test_tools_the_chat_template_cannot_carry_are_refused_at_construction(tmp_path):
    """Tools need a chat template that renders tool calls and a parser for the model's replies: without them TRL
    refuses when the trainer is built (before any rollout), and ResRLTrainer lets its message through."""
    args = ResRLConfig(output_dir=str(tmp_path), **{**COMMON, "max_steps": 1})
    plain = make_tokenizer()  # its template drops tool calls
    with pytest.raises(ValueError, match="does not support tool calling"):
        ResRLTrainer(
            make_model(plain),
            reward_funcs=answer_reward,
            args=args,
            train_dataset=make_prompts_dataset(),
            processing_class=plain,
            tools=[add],
        )
    unparsed = make_tool_tokenizer()
    unparsed.response_template = None  # a template TRL does not know, and no parser of its own
    with pytest.raises(ValueError, match="failed to add response schema"):
        ResRLTrainer(
            make_model(unparsed),
            reward_funcs=answer_reward,
            args=args,
            train_dataset=make_questions_dataset(),
            processing_class=unparsed,
            tools=[add],
        )
