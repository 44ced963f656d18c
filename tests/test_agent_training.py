"""ResRL across turns: the agent recipe's environments, reward and chat template in a real ResRLTrainer step, and
resrl-inspect on multi-turn rollouts.

The tiny model does not write tool calls, so its ``generate`` is replaced by a script: in each group of four
rollouts of a files_demo task, the first two make the task's ground-truth calls, the third makes a wrong call (a
folder of another name), the fourth answers without a call; after a tool ran, every rollout closes with "Done.".
Everything else runs for real: SmolLM2's tokenizer with the tool-calling template, TRL's parsing, tool loop and
masks, the BFCL file-system API behind each rollout's own environment, the agent reward, ResRL's hidden states,
subspaces and weights, the loss and the optimiser step.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
import torch
from conftest import COMMON, record_training_forwards
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from resrl_trl import ResRLConfig, ResRLTrainer
from resrl_trl.agent_env import AgentReward
from resrl_trl.agent_tasks import environment_factories
from resrl_trl.function_calling import files_demo_tasks, parse_call, task_dataset
from resrl_trl.inspector import iter_agent_groups, write_inspection
from resrl_trl.models import embedded_model
from resrl_trl.residual import SubspaceSettings
from resrl_trl.tool_chat import add_tool_calling
from resrl_trl.trainer import GROUP_IDS_KEY, IS_POSITIVE_KEY

GROUP = 4
LAST_REQUEST = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)


@pytest.fixture(scope="module")
def chat_tokenizer() -> Any:
    """SmolLM2's tokenizer (from the embedded GGUF) with the tool-calling template."""
    folder, gguf_file = embedded_model()
    return add_tool_calling(AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, padding_side="left"))


def tiny_model(tokenizer: Any) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def tasks() -> list[dict[str, Any]]:
    return files_demo_tasks(2, seed=3)


def call_json(text: str) -> str:
    name, _, arguments = parse_call(text)
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


class ScriptedGenerate:
    """Stands in for ``model.generate``: the reply of each row by its place in its group (see the module's
    docstring); returns prompt and reply ids, as ``generate`` does."""

    def __init__(self, tokenizer: Any, rows: list[dict[str, Any]]) -> None:
        self.tokenizer = tokenizer
        self.targets = {row["prompt"][-1]["content"]: json.loads(row["task"])["target"] for row in rows}
        self.turns: list[int] = []

    def reply(self, row: int, prompt: str) -> str:
        if prompt.rstrip().endswith("<|im_start|>assistant") and "<|im_start|>tool" in prompt.rsplit("user\n", 1)[-1]:
            return "Done.<|im_end|>"
        target = self.targets[LAST_REQUEST.findall(prompt)[-1]]
        place = row % GROUP
        if place < 2:
            return "".join(call_json(text) for text in target) + "<|im_end|>"
        if place == 2:
            return call_json("mkdir(dir_name='wrong_folder')") + "<|im_end|>"
        return "Sure.<|im_end|>"

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        prompts = self.tokenizer.batch_decode(input_ids)
        replies = [self.tokenizer.encode(self.reply(i, p), add_special_tokens=False) for i, p in enumerate(prompts)]
        width = max(map(len, replies))
        out = torch.full((len(replies), width), self.tokenizer.pad_token_id, dtype=input_ids.dtype)
        for i, ids in enumerate(replies):
            out[i, : len(ids)] = torch.tensor(ids)
        self.turns.append(len(replies))
        return torch.cat([input_ids, out.to(input_ids.device)], dim=1)


@pytest.fixture
def agent_trainer(tmp_path, chat_tokenizer, monkeypatch) -> tuple[ResRLTrainer, ScriptedGenerate]:
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    rows = tasks()
    dataset = task_dataset(rows)
    settings = {
        **COMMON, "num_generations": GROUP, "per_device_train_batch_size": 2 * GROUP, "max_steps": 1,
        "max_completion_length": 96, "max_tool_calling_iterations": 2, "resrl_rank": 4, "resrl_subspace": "step",
        "shuffle_dataset": False,
    }  # fmt: skip
    trainer = ResRLTrainer(
        model=tiny_model(chat_tokenizer),
        reward_funcs=AgentReward(),
        args=ResRLConfig(output_dir=str(tmp_path), **settings),
        train_dataset=dataset,
        processing_class=chat_tokenizer,
        environment_factory=environment_factories(dataset),
    )
    script = ScriptedGenerate(chat_tokenizer, rows)
    monkeypatch.setattr(trainer.model, "generate", script)
    return trainer, script


def test_multi_turn_rollouts_keep_their_group_and_only_model_tokens_are_weighted(agent_trainer, monkeypatch):
    trainer, script = agent_trainer
    rollouts = []
    generate_and_score = trainer._generate_and_score_completions

    def spy_rollout(inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = generate_and_score(inputs)
        specs = [json.loads(row["task"]) for row in inputs]
        targets = [env._spec["target"] for env in trainer.environments]
        rollouts.append((output, specs, targets, [len(env.calls) for env in trainer.environments]))
        return output

    monkeypatch.setattr(trainer, "_generate_and_score_completions", spy_rollout)
    weighted = record_training_forwards(trainer.placement)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()

    # two turns: all eight rows, then the six that called a tool
    assert script.turns == [2 * GROUP, 6]
    (output, specs, targets, calls), = rollouts  # fmt: skip
    # a group keeps one id across turns: rows 0-3 are the first task's rollouts, 4-7 the second's, each in an
    # environment reset with its own row's task, though the second turn regenerated only a subset of the rows
    assert output[GROUP_IDS_KEY].tolist() == [0] * GROUP + [1] * GROUP
    assert targets == [spec["target"] for spec in specs]
    assert specs[0] == specs[GROUP - 1] and specs[0] != specs[GROUP]
    prompt_ids = output["prompt_ids"]
    assert all(torch.equal(prompt_ids[0], prompt_ids[r]) for r in range(GROUP))
    assert calls == [len(specs[0]["target"])] * 2 + [1, 0] + [len(specs[GROUP]["target"])] * 2 + [1, 0]
    assert output[IS_POSITIVE_KEY].tolist() == [True, True, False, False] * 2

    # only the model's own tokens count: TRL's tool_mask marks the tool turns 0, and ResRL's valid tokens are
    # exactly completion_mask & tool_mask
    assert weighted and all(
        torch.equal(b["valid"], b["completion_mask"].bool() & b["tool_mask"].bool()) for b in weighted
    )
    tool_rows = 0
    for batch in weighted:
        tool_output = batch["completion_mask"].bool() & ~batch["tool_mask"].bool()
        for row in range(len(tool_output)):
            if tool_output[row].any():
                tool_rows += 1
                text = trainer.processing_class.decode(batch["completion_ids"][row][tool_output[row]])
                assert text.startswith("\n<|im_start|>tool\n") and text.endswith("<|im_start|>assistant\n")
        negatives = ~batch[IS_POSITIVE_KEY][:, None]
        own = batch["completion_mask"].bool() & batch["tool_mask"].bool()
        before_adv = batch["before"][:, None].expand_as(batch["after"])
        # tool-output tokens of negatives keep their advantage; every own token of a negative is weighted
        assert torch.equal(batch["after"][tool_output & negatives], before_adv[tool_output & negatives])
        assert int(batch["result"].token_sums[3]) == int((own & negatives).sum())  # weighted tokens
    assert tool_rows == 6

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert math.isfinite(logs[0]["loss"]) and logs[0]["tools/call_frequency"] > 0
    assert logs[0]["rewards/agent_reward/mean"] == pytest.approx(0.5)
    assert logs[0]["resrl/mixed_group_frac"] == 1.0 and 0.1 <= logs[0]["resrl/neg_token_weight_mean"] < 1.0
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_inspect_shows_a_multi_turn_completions_weights(tmp_path, chat_tokenizer):
    """resrl-inspect on an agent task: rollouts built as TRL builds them; a failed rollout's own tokens carry
    weights, its tool turn is shown in place without a weight, on the page and in weights.json."""
    rows = tasks()
    model = tiny_model(chat_tokenizer)
    model.generate = ScriptedGenerate(chat_tokenizer, rows)  # type: ignore[method-assign]
    factories = environment_factories(task_dataset(rows))
    settings = SubspaceSettings(rank=4, max_pos_tokens=4096, q_low=0.2, q_high=0.8, min_weight=0.1, niter=4)
    sampled = iter_agent_groups(
        model, chat_tokenizer, rows[:1], factories, num_generations=GROUP, max_tokens=96, max_turns=2
    )
    shown = write_inspection(sampled, chat_tokenizer, tmp_path, settings)
    (group,) = shown
    assert len(group["positives"]) == 2 and len(group["negatives"]) == 2 and group["bounds"] is not None
    wrong_call, no_call = group["negatives"]
    tool_tokens = [t for t, w in zip(wrong_call["tokens"], wrong_call["weights"], strict=True) if w is None]
    assert "tool" in "".join(tool_tokens) and "assistant" in "".join(tool_tokens)
    own = [w for w in wrong_call["weights"] if w is not None]
    assert own and all(0.1 <= w <= 1.0 for w in own) and min(own) < 1.0
    assert all(w is not None for w in no_call["weights"])  # no call, no tool turn
    saved = json.loads((tmp_path / "weights.json").read_text())
    assert saved["groups"][0]["negatives"][0]["weights"] == wrong_call["weights"]
    page = (tmp_path / "inspect.html").read_text()
    assert "class='tok tool'" in page and (tmp_path / "inspect.png").stat().st_size > 10_000
