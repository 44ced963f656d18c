"""``resrl-agent-eval``: run n multi-turn rollouts per task in the training environments, score them with the
training reward, summarise.

    resrl-agent-eval --dataset files_demo --num_tasks 32 --num_samples 8 --output_dir eval/agent_base
    resrl-agent-eval --adapter outputs/agent_demo --dataset files_demo --num_tasks 32 --output_dir eval/agent_demo
    resrl-agent-eval --model Qwen/Qwen3-4B --dataset bfcl_multi_turn_base --num_samples 8 --max_tokens 2048 \
        --output_dir eval/bfcl_qwen3_4b

A rollout is the loop TRL's trainer runs: the model replies, each call it makes runs on the rollout's own
environment (BFCL's APIs, or a text game), the results come back as tool turns, and the loop ends when a reply
makes no call, after ``--max_turns`` replies that called tools, or when ``--max_tokens`` (replies and tool results
together, as ``max_completion_length`` counts them in training) are spent. The reward is
:class:`~resrl_trl.agent_env.AgentReward`'s, so a rollout scores here as it would in training. The datasets are
:mod:`resrl_trl.agent_tasks`'s, ``--split test`` by default (BFCL's held-out entries; the generated tasks' and games'
other seed stream).

Writes ``samples.jsonl`` (per rollout: task id, sample index, the conversation, correct, fault, calls made) and
``summary.json`` (Avg@n and unbiased Pass@k with bootstrap intervals over tasks, as ``resrl-eval`` reports them,
plus calls per rollout and fault counts). An interrupted run started again with the same arguments continues with
the tasks it has not finished. Generation uses vLLM when it is installed and can run here, else transformers.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from trl.chat_template_utils import parse_response

from .agent_env import FAULTS, ToolEnvironment, count_tool_calls, score_rollout
from .agent_tasks import AGENT_DATASETS, environment_factories, load_agent_tasks
from .evaluation import (
    VLLMSampler,
    _check_resume,
    _read_samples,
    add_backend_arguments,
    add_policy_arguments,
    add_sampling_arguments,
    check_sampling,
    choose_backend,
)
from .metrics import summarize
from .models import load_policy_for_sampling, plain_model_folder
from .tool_chat import add_tool_calling

__all__ = ["build_parser", "evaluate", "main", "run_rollouts"]

SAMPLES_FILE, SUMMARY_FILE = "samples.jsonl", "summary.json"
SAMPLING_KEYS = (
    "model",
    "gguf_file",
    "adapter",
    "dataset",
    "split",
    "num_tasks",
    "temperature",
    "top_p",
    "max_tokens",
    "max_turns",
    "seed",
)


def environment_tools(environment: ToolEnvironment) -> list[Any]:
    """The environment's tools as TRL finds them: its class's public functions other than ``reset``."""
    return [
        getattr(environment, name)
        for name, _ in inspect.getmembers(type(environment), predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    ]


def run_tool_calls(tools: dict[str, Any], calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool turns for a reply's calls, run as TRL runs them: an unknown name or arguments that do not fit give
    an error result (and never reach the environment)."""
    messages = []
    for call in calls:
        function = call.get("function", {})
        name = function.get("name", "unknown")
        try:
            if name not in tools:
                raise ValueError(f"Tool {name} not found.")
            result: Any = tools[name](**function.get("arguments", {}))
        except Exception as error:
            result = {"error": str(error)}
        messages.append({"role": "tool", "name": name, "content": str(result)})
    return messages


class TransformersGenerator:
    """One reply per conversation with ``model.generate`` (left-padded batch), seeded per call."""

    def __init__(self, model: Any, tokenizer: Any, opts: argparse.Namespace) -> None:
        self.model, self.tokenizer, self.opts = model.eval(), tokenizer, opts

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], budgets: list[int], seed: int) -> list[list[int]]:
        pad = self.tokenizer.pad_token_id
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        torch.manual_seed(seed)
        output = self.model.generate(
            input_ids=ids.to(self.model.device),
            attention_mask=mask.to(self.model.device),
            do_sample=True,
            temperature=self.opts.temperature,
            top_p=self.opts.top_p,
            top_k=0,
            max_new_tokens=max(budgets),
            pad_token_id=pad,
        )[:, width:]
        replies = []
        for row, budget in zip(output.tolist(), budgets, strict=True):
            row = row[:budget]
            if self.tokenizer.eos_token_id in row:  # up to the end-of-turn token, kept as TRL's completions keep it
                row = row[: row.index(self.tokenizer.eos_token_id) + 1]
            replies.append(row)
        return replies


class VLLMGenerator(VLLMSampler):
    """One reply per conversation with vLLM (GPU or CPU build) from token ids; a PEFT adapter served as LoRA."""

    def generate(self, prompts: list[list[int]], budgets: list[int], seed: int) -> list[list[int]]:
        from vllm import SamplingParams, TokensPrompt

        opts = self.opts
        params = [
            SamplingParams(temperature=opts.temperature, top_p=opts.top_p, max_tokens=budget, seed=seed + row)
            for row, budget in enumerate(budgets)
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, lora_request=self.lora, use_tqdm=False
        )
        return [list(output.outputs[0].token_ids) for output in outputs]


def _render(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[Any], generation_prompt: bool = True
) -> list[int]:
    """The token ids of a conversation (ready for the model's next reply with ``generation_prompt``)."""
    ids = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
    )
    return list(ids)


def tool_suffix_ids(tokenizer: Any, tool_messages: list[dict[str, Any]]) -> list[int]:
    """The tokens TRL appends after a reply that called tools: the tool turns and the next reply's header, cut from
    a rendering of a stand-in exchange after its end-of-turn token (the reply already ends with it)."""
    call = {"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}
    exchange = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    before = _render(tokenizer, exchange, [], generation_prompt=False)
    after = _render(tokenizer, exchange + tool_messages, [])
    ends = [i for i, token in enumerate(before) if token == tokenizer.eos_token_id]
    before = before[: ends[-1] + 1] if ends else before
    if after[: len(before)] != before:
        raise ValueError("the chat template renders an exchange differently once tool turns follow it")
    return after[len(before) :]


def run_rollouts(
    generator: Any,
    tokenizer: Any,
    row: dict[str, Any],
    environments: list[ToolEnvironment],
    max_turns: int,
    max_tokens: int,
    seed: int,
) -> list[dict[str, Any]]:
    """One rollout per environment of ``row``'s task, side by side, built token by token as TRL's tool loop builds
    them: each reply's tokens, then (when it called tools) the tool turns' tokens, which ``tool_mask`` marks 0.
    Each record holds the conversation after the prompt, its score and fault, the calls made, and the prompt and
    completion ids with the tool mask."""
    reset_row = {k: v for k, v in row.items() if k not in ("prompt", "environment")}
    episodes = []
    for environment in environments:
        environment.reset(**reset_row)
        tools = environment_tools(environment)
        prompt = _render(tokenizer, row["prompt"], tools)
        episodes.append({"tools": tools, "prompt": prompt, "completion": [], "tool_mask": [], "messages": []})
    active = list(episodes)
    for turn in range(max_turns + 1):
        if not active:
            break
        budgets = [max_tokens - len(e["completion"]) for e in active]
        replies = generator.generate(
            [e["prompt"] + e["completion"] for e in active], budgets, seed * 1_000_003 + turn * 10_007
        )
        still_active = []
        for episode, reply in zip(active, replies, strict=True):
            prefix = episode["prompt"] + episode["completion"]
            message = parse_response(tokenizer, reply, prefix=prefix, tools=episode["tools"]) if reply else {}
            episode["completion"] += reply
            episode["tool_mask"] += [1] * len(reply)
            if message:
                episode["messages"].append(message)
            calls = message.get("tool_calls") if message else None
            if not calls or turn == max_turns:
                continue
            tool_turns = run_tool_calls({t.__name__: t for t in episode["tools"]}, calls)
            suffix = tool_suffix_ids(tokenizer, tool_turns)
            if len(episode["completion"]) + len(suffix) >= max_tokens:  # TRL drops a tool result that overflows
                continue
            episode["messages"] += tool_turns
            episode["completion"] += suffix
            episode["tool_mask"] += [0] * len(suffix)
            still_active.append(episode)
        active = still_active
    records = []
    for episode, environment in zip(episodes, environments, strict=True):
        reward, fault = score_rollout(environment, episode["messages"])
        records.append(
            {
                "messages": episode["messages"],
                "correct": reward >= 1.0,
                "reward": reward,
                "fault": fault,
                "tool_calls": count_tool_calls(episode["messages"]),
                "completion_tokens": len(episode["completion"]),
                "prompt_ids": episode["prompt"],
                "completion_ids": episode["completion"],
                "tool_mask": episode["tool_mask"],
            }
        )
    return records


def _load_generator(opts: argparse.Namespace) -> tuple[Any, Any]:
    backend, why = choose_backend(opts.backend)
    print(f"resrl-agent-eval: sampling with {backend} ({why})", file=sys.stderr)
    if backend == "vllm":
        from transformers import AutoTokenizer

        generator = VLLMGenerator(opts)
        tokenizer = AutoTokenizer.from_pretrained(plain_model_folder(opts.model, opts.gguf_file))
        return generator, add_tool_calling(tokenizer)
    model, tokenizer = load_policy_for_sampling(opts.model, opts.gguf_file, opts.adapter, opts.dtype)
    return TransformersGenerator(model, add_tool_calling(tokenizer), opts), tokenizer


def evaluate(opts: argparse.Namespace) -> dict[str, Any]:
    """Run (or continue) an agent evaluation; returns the summary also written to ``summary.json``."""
    output_dir = Path(opts.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(output_dir, vars(opts), SAMPLING_KEYS)
    tasks = load_agent_tasks(opts.dataset, opts.split, opts.seed, opts.num_tasks)
    if opts.max_problems is not None:
        tasks = tasks.select(range(min(opts.max_problems, len(tasks))))
    factories = environment_factories(tasks, opts.call_time_s, opts.episode_time_s)
    samples_path = output_dir / SAMPLES_FILE
    records = [r for r in _read_samples(samples_path) if r["sample_index"] < opts.num_samples]
    done = Counter(r["problem_id"] for r in records)
    todo = [i for i in range(len(tasks)) if done[str(i)] < opts.num_samples]
    if todo:
        generator, tokenizer = _load_generator(opts)
        kept = {str(i) for i in range(len(tasks)) if i not in todo}
        records = [r for r in records if r["problem_id"] in kept]  # a task cut short is run again whole
        samples_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        with samples_path.open("a") as sink:
            for index in tqdm(todo, desc="tasks", disable=opts.quiet):
                row = tasks[index]
                environments = [factories[row["environment"]]() for _ in range(opts.num_samples)]
                seed = opts.seed * 1_000_003 + index * 10_007
                results = run_rollouts(generator, tokenizer, row, environments, opts.max_turns, opts.max_tokens, seed)
                for k, result in enumerate(results):
                    kept = {key: value for key, value in result.items() if not key.endswith(("_ids", "_mask"))}
                    record = {"problem_id": str(index), "sample_index": k, "source": row["source"], **kept}
                    sink.write(json.dumps(record) + "\n")
                    records.append(record)
                sink.flush()
    summary = summarize(records, seed=opts.seed)
    summary.pop("diversity", None)  # answers' diversity is a maths notion; calls and faults say more here
    summary["tool_calls_per_rollout"] = sum(r["tool_calls"] for r in records) / len(records)
    summary["rollouts_with_calls"] = sum(r["tool_calls"] > 0 for r in records) / len(records)
    summary["faults"] = {kind: sum(r["fault"] == kind for r in records) for kind in FAULTS}
    summary["settings"] = {k: getattr(opts, k) for k in SAMPLING_KEYS} | {"num_samples": opts.num_samples}
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resrl-agent-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_policy_arguments(parser)
    parser.add_argument("--dataset", default="files_demo", choices=AGENT_DATASETS)
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--num_tasks", type=int, default=32, help="generated tasks or games (BFCL: its split)")
    add_sampling_arguments(parser, num_samples=8, temperature=0.7, max_tokens=160, unit="tasks")
    parser.add_argument("--max_turns", type=int, default=3, help="replies that may call tools, per rollout")
    parser.add_argument("--call_time_s", type=float, default=5.0)
    parser.add_argument("--episode_time_s", type=float, default=60.0)
    add_backend_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    opts = build_parser().parse_args(argv)
    check_sampling(opts, "resrl-agent-eval")
    if opts.max_turns < 0:
        sys.exit("resrl-agent-eval: --max_turns must be 0 or more")
    try:
        summary = evaluate(opts)
    except ValueError as error:
        sys.exit(f"resrl-agent-eval: {error}")
    n = summary["num_samples"]
    line = ", ".join(f"pass@{k} {v['mean']:.3f}" for k, v in summary["pass@k"].items())
    print(f"{summary['num_problems']} tasks x {n} rollouts: avg@{n} {summary[f'avg@{n}']['mean']:.3f}; {line}")
    faults = ", ".join(f"{kind} {count}" for kind, count in summary["faults"].items() if count) or "none"
    print(f"calls per rollout {summary['tool_calls_per_rollout']:.2f}; faults (rollouts): {faults}")
    print(f"wrote {Path(opts.output_dir) / SAMPLES_FILE} and {Path(opts.output_dir) / SUMMARY_FILE}")


if __name__ == "__main__":
    main()
