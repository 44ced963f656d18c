"""The agent tasks: the tool-calling chat template, BFCL's multi-turn APIs and their check, the generated file-system
tasks, the TextWorld games, the reward's faults, and the evaluation's rollout loop.

No model writes the calls here: each test writes the assistant turns a model would (right ones, and attempts to game
the reward) and runs them through the environments' own tool methods, as TRL's tool loop does. Everything else (the
chat template, transformers' and TRL's parsing, BFCL's APIs, TextWorld's games, the checks) runs for real.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import inspect
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_model, make_tokenizer
from datasets import Dataset
from transformers import PreTrainedTokenizerFast
from transformers.utils import get_json_schema
from trl.chat_template_utils import is_chat_template_prefix_preserving, parse_response, supports_tool_calling

from resrl_trl.agent_env import FAULTS, AgentReward, ToolEnvironment, count_tool_calls, score_rollout
from resrl_trl.agent_eval import TransformersGenerator, environment_tools, run_rollouts, run_tool_calls
from resrl_trl.agent_tasks import environment_factories, load_agent_tasks
from resrl_trl.function_calling import (
    API_MODULES,
    bfcl_tasks,
    environment_class,
    environment_name,
    files_demo_tasks,
    function_docs,
    parse_call,
)
from resrl_trl.tool_chat import CHATML_TOOL_RESPONSE, CHATML_TOOL_TEMPLATE, add_tool_calling, renders_tools

requires_bfcl = pytest.mark.skipif(
    importlib.util.find_spec("bfcl_eval") is None, reason="needs bfcl-eval (pip install --no-deps bfcl-eval)"
)

# SmolLM2's chat template, as its tokenizer ships it: ChatML, no tools branch.
SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEMO_ENVIRONMENT = "GorillaFileSystem:ls,cd,mkdir,touch"


def chatml_tokenizer() -> PreTrainedTokenizerFast:
    """The tests' character-level tokenizer with ChatML's turn markers and SmolLM2's template (whose end-of-turn
    token, <|im_end|>, is SmolLM2-Instruct's eos token too)."""
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = SMOLLM_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def tool_tokenizer() -> PreTrainedTokenizerFast:
    return add_tool_calling(chatml_tokenizer())


def mkdir(dir_name: str) -> str:
    """Create a new directory.

    Args:
        dir_name: The new directory's name.
    """
    return "None"


def call(name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    """A tool call as an assistant message carries it."""
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def reply_text(calls: list[tuple[str, dict[str, Any]]], content: str = "") -> str:
    """A reply as the model writes it in the tool template, ended by <|im_end|>."""
    written = "".join(f"<tool_call>{json.dumps({'name': n, 'arguments': a})}</tool_call>" for n, a in calls)
    return content + written + "<|im_end|>"


# --- the tool-calling chat template ------------------------------------------------------------------------------


@pytest.mark.parametrize("system", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_tool_template_without_tools_renders_as_smollm(system: bool, add_generation_prompt: bool) -> None:
    """Without tools, the tool template renders a conversation exactly as SmolLM2's own template did (with its
    default system turn or the conversation's, with and without the generation prompt)."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    messages += [{"role": "user", "content": "What is 2 + 2?"}]
    if system:
        messages = [{"role": "system", "content": "Be brief."}, *messages]
    tokenizer = chatml_tokenizer()
    original = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert add_tool_calling(tokenizer) is tokenizer
    assert tokenizer.chat_template == CHATML_TOOL_TEMPLATE
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert rendered == original


def test_tool_template_shows_tools_and_writes_calls(tool_tokenizer: PreTrainedTokenizerFast) -> None:
    """With tools, the system turn lists each tool's schema; an assistant's calls render as
    <tool_call>{"name": ..., "arguments": {...}}</tool_call> whether the arguments are a dict, a JSON string, or the
    call has no "function" wrapper; a tool result is a tool turn."""

    def touch(file_name: str) -> str:
        """Create a file.

        Args:
            file_name: The file's name.
        """
        return "None"

    messages = [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Make a and b."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                call("mkdir", {"dir_name": "a"}),
                call("mkdir", '{"dir_name": "b"}'),
                {"name": "touch", "arguments": {"file_name": "c.txt"}},
            ],
        },
        {"role": "tool", "name": "mkdir", "content": "done a"},
        {"role": "assistant", "content": "Done."},
    ]
    text = tool_tokenizer.apply_chat_template(messages, tools=[mkdir, touch], tokenize=False)
    assert text.startswith("<|im_start|>system\nUse the tools.\n\nYou can call these tools")
    assert '"name": "mkdir"' in text and '"name": "touch"' in text
    calls = (
        '<tool_call>{"name": "mkdir", "arguments": {"dir_name": "a"}}</tool_call>'
        '<tool_call>{"name": "mkdir", "arguments": {"dir_name": "b"}}</tool_call>'
        '<tool_call>{"name": "touch", "arguments": {"file_name": "c.txt"}}</tool_call>'
    )
    assert f"<|im_start|>assistant\n{calls}<|im_end|>\n" in text
    assert text.endswith("<|im_start|>tool\ndone a<|im_end|>\n<|im_start|>assistant\nDone.<|im_end|>\n")


def test_trl_accepts_the_tool_template_only_after_add_tool_calling() -> None:
    """TRL's check that a template carries a whole tool exchange fails on SmolLM2's template and passes after
    add_tool_calling, which also sets the response parser; the template is prefix preserving (TRL's tool loop
    appends tool turns by rendering them after the conversation)."""
    tokenizer = chatml_tokenizer()
    assert not supports_tool_calling(tokenizer) and not renders_tools(tokenizer)
    add_tool_calling(tokenizer)
    assert supports_tool_calling(tokenizer) and renders_tools(tokenizer)
    assert is_chat_template_prefix_preserving(tokenizer)
    assert tokenizer.response_template == CHATML_TOOL_RESPONSE


def test_parse_response_reads_calls_and_leaves_malformed_ones_as_text(tool_tokenizer: PreTrainedTokenizerFast) -> None:
    """trl's parse_response reads a generated reply's calls (several, typed by the tool's schema) and its text; a
    reply without calls is plain content; a call with broken JSON stays in the content as text, with no tool_calls."""
    conversation = [{"role": "user", "content": "Make a and b."}]
    prompt = tool_tokenizer.apply_chat_template(
        conversation, tools=[mkdir], add_generation_prompt=True, tokenize=True, return_dict=False
    )

    def parse(text: str) -> dict[str, Any]:
        ids = tool_tokenizer.encode(text, add_special_tokens=False)
        return parse_response(tool_tokenizer, ids, prefix=list(prompt), tools=[mkdir])

    parsed = parse(reply_text([("mkdir", {"dir_name": "a"}), ("mkdir", {"dir_name": "b"})], content="Sure."))
    assert parsed["content"] == "Sure."
    assert parsed["tool_calls"] == [call("mkdir", {"dir_name": "a"}), call("mkdir", {"dir_name": "b"})]
    assert parse("All done.<|im_end|>") == {"role": "assistant", "content": "All done."}
    broken = parse('<tool_call>{"name": "mkdir", "arguments": {"dir_name": </tool_call><|im_end|>')
    assert "tool_calls" not in broken
    assert "<tool_call>" in broken["content"]


def test_add_tool_calling_keeps_tool_templates_and_refuses_other_templates() -> None:
    """A template that already renders tools is kept as it is; a template that is neither (not ChatML, no tools
    branch) is refused with a ValueError that says what to pass instead."""
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match="pass a model whose template renders tools.*tokenizer.chat_template"):
        add_tool_calling(tokenizer)
    template = "{% for t in tools or [] %}{{ t.function.name }}{% endfor %}{% for m in messages %}{{ m.content }}"
    template += "{% endfor %}"
    tokenizer.chat_template = template
    assert add_tool_calling(tokenizer).chat_template == template
    assert getattr(tokenizer, "response_template", None) is None


# --- BFCL's multi-turn tasks ---------------------------------------------------------------------------------------


def ground_truth_calls(environment: Any, texts: list[str]) -> list[dict[str, Any]]:
    """Ground-truth calls (Python call text) as an assistant turn's tool calls, positional arguments named by the
    API method's signature."""
    calls = []
    for text in texts:
        name, args, kwargs = parse_call(text)
        bound = inspect.signature(environment._world.methods[name]).bind_partial(*args, **kwargs).arguments
        calls.append(call(name, dict(bound)))
    return calls


def play(environment: Any, calls: list[dict[str, Any]], final: str | None = "Done.") -> list[dict[str, Any]]:
    """A rollout's messages: one assistant turn with ``calls`` (none when empty), their results from the tools as
    TRL runs them, then a final assistant turn ``final`` (left out when None)."""
    messages: list[dict[str, Any]] = []
    if calls:
        tools = {tool.__name__: tool for tool in environment_tools(environment)}
        messages += [{"role": "assistant", "content": "", "tool_calls": calls}, *run_tool_calls(tools, calls)]
    if final is not None:
        messages.append({"role": "assistant", "content": final})
    return messages


def start(row: dict[str, Any]) -> Any:
    """A fresh environment of ``row``'s class, reset to its task."""
    environment = environment_class(row["environment"])()
    environment.reset(**{k: v for k, v in row.items() if k != "environment"})
    return environment


@pytest.fixture(scope="module")
def base_train() -> list[dict[str, Any]]:
    return bfcl_tasks("multi_turn_base", "train")


@requires_bfcl
def test_bfcl_splits_hold_out_whole_entries(base_train: list[dict[str, Any]]) -> None:
    """The train and test splits never share a BFCL entry; test holds the entries numbered 0, 5, 10, ...; every row
    asks one user turn (its prompt ends with a user message) after the earlier turns of its entry."""
    test = bfcl_tasks("multi_turn_base", "test")
    train_ids, test_ids = {r["source"] for r in base_train}, {r["source"] for r in test}
    assert train_ids and test_ids and not train_ids & test_ids
    assert all(int(i.rsplit("_", 1)[1]) % 5 == 0 for i in test_ids)
    assert all(int(i.rsplit("_", 1)[1]) % 5 != 0 for i in train_ids)
    for row in base_train + test:
        assert row["prompt"][0]["role"] == "system" and row["prompt"][-1]["role"] == "user"
        spec = json.loads(row["task"])
        assert sum(m["role"] == "user" for m in row["prompt"]) == len(spec["history"]) + 1
        assert row["environment"].partition("!")[0] == environment_name(spec["involved_classes"])
    with pytest.raises(ValueError, match="split"):
        bfcl_tasks("multi_turn_base", "validation")


@requires_bfcl
def test_bfcl_ground_truth_scores_one(base_train: list[dict[str, Any]]) -> None:
    """The ground-truth calls of each asked turn, made through the environment's own tool methods and followed by an
    answer without calls, score 1 (the first 60 train tasks)."""
    for row in base_train[:60]:
        environment = start(row)
        calls = ground_truth_calls(environment, json.loads(row["task"])["target"])
        messages = []
        if calls:
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            for c in calls:
                name, arguments = c["function"]["name"], c["function"]["arguments"]
                messages.append({"role": "tool", "name": name, "content": getattr(environment, name)(**arguments)})
        messages.append({"role": "assistant", "content": "Done."})
        assert score_rollout(environment, messages) == (1.0, None), row["source"]


@requires_bfcl
def test_bfcl_missing_parameter_turn_is_right_only_without_calls() -> None:
    """In multi_turn_miss_param, a turn whose request lacks a parameter (empty ground truth) scores 1 when the reply
    asks instead of calling, and 0 when it calls anything."""
    rows = bfcl_tasks("multi_turn_miss_param", "train")
    row = next(r for r in rows if not json.loads(r["task"])["target"])
    environment = start(row)
    assert score_rollout(environment, play(environment, [], "Which file do you mean?")) == (1.0, None)
    environment = start(row)
    reads = [  # a tool without required parameters: a call that fits, whatever it does
        tool.__name__
        for tool in environment_tools(environment)
        if all(p.default is not inspect.Parameter.empty for p in inspect.signature(tool).parameters.values())
    ]
    messages = play(environment, [call(reads[0], {})])
    assert len(environment.calls) == 1
    assert score_rollout(environment, messages) == (0.0, None)


# --- gaming the reward ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_rows() -> list[dict[str, Any]]:
    return files_demo_tasks(40, seed=0, split="train")


def demo_row(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """A demo task of ``kind``: "mkdir" (one mkdir call) or "listing" (cd back up, cd into a folder, ls)."""
    for row in rows:
        target = json.loads(row["task"])["target"]
        if kind == "mkdir" and len(target) == 1 and target[0].startswith("mkdir("):
            return row
        if kind == "listing" and target[-1] == "ls()":
            return row
    raise LookupError(kind)


@requires_bfcl
def test_answering_with_the_expected_result_as_text_earns_nothing(demo_rows: list[dict[str, Any]]) -> None:
    """A reply that writes the listing the calls would return, without calling, earns 0 (the turn needs calls)."""
    row = demo_row(demo_rows, "listing")
    target = json.loads(row["task"])["target"]
    reference = start(row)
    results = [reference._world.call(*parse_call(t)) for t in target]
    environment = start(row)
    assert score_rollout(environment, play(environment, [], "\n".join(results))) == (0.0, None)


@requires_bfcl
def test_skipping_the_read_or_changing_more_state_earns_nothing(demo_rows: list[dict[str, Any]]) -> None:
    """Only the state-changing half of a request (cd without the ls whose result was asked) earns 0, and so do the
    right calls plus a call that changes state besides (a second folder); the right calls alone earn 1."""
    listing = demo_row(demo_rows, "listing")
    environment = start(listing)
    cd_only = ground_truth_calls(environment, json.loads(listing["task"])["target"])[:-1]
    assert score_rollout(environment, play(environment, cd_only)) == (0.0, None)

    row = demo_row(demo_rows, "mkdir")
    environment = start(row)
    right = ground_truth_calls(environment, json.loads(row["task"])["target"])
    assert score_rollout(environment, play(environment, right)) == (1.0, None)
    environment = start(row)
    extra = [*right, call("mkdir", {"dir_name": "zzz_extra"})]
    assert score_rollout(environment, play(environment, extra)) == (0.0, None)


@requires_bfcl
def test_unfinished_unknown_and_misfit_calls_earn_nothing(demo_rows: list[dict[str, Any]]) -> None:
    """The right calls earn 0 when the last reply still calls a tool (unfinished: its calls ran, or the turn bound
    left them unrun), when a call names a function the environment does not have (it never reaches it:
    invalid_call), when a call's arguments do not fit the tool's signature (refused before the API: invalid_call),
    and when a reply holds a call the parser could not read (malformed_call)."""
    row = demo_row(demo_rows, "mkdir")

    environment = start(row)
    right = ground_truth_calls(environment, json.loads(row["task"])["target"])
    messages = play(environment, right, final=None)
    assert score_rollout(environment, messages) == (0.0, "unfinished")
    cut = [*messages, {"role": "assistant", "content": "", "tool_calls": [call("ls", {})]}]  # not run
    assert score_rollout(environment, cut) == (0.0, "unfinished")
    environment = start(row)
    assert score_rollout(environment, []) == (0.0, "unfinished")  # no reply at all

    environment = start(row)
    messages = play(environment, [*right, call("rm", {"file_name": "readme.txt"})])
    assert messages[2]["content"] == "{'error': 'Tool rm not found.'}"
    assert [name for name, _ in environment.calls] == ["mkdir"]
    assert score_rollout(environment, messages) == (0.0, "invalid_call")

    environment = start(row)
    misfit = call("mkdir", {**right[0]["function"]["arguments"], "parents": True})
    with pytest.raises(TypeError):
        environment.mkdir(**misfit["function"]["arguments"])
    assert environment.calls == []
    messages = play(environment, [*right, misfit])
    assert "error" in messages[2]["content"]
    assert score_rollout(environment, messages) == (0.0, "invalid_call")

    environment = start(row)
    messages = play(environment, right)
    messages[-1]["content"] = '<tool_call>{"name": "mkdir", "arguments": {"dir_name": </tool_call>'
    assert score_rollout(environment, messages) == (0.0, "malformed_call")


@requires_bfcl
def test_time_limits_end_the_rollout_with_nothing(
    demo_rows: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tool that runs past call_time_s is interrupted and the rollout earns 0 (time_limit); once the episode's
    tool time is spent, further calls are refused without running; reset starts a fresh budget."""
    row = demo_row(demo_rows, "mkdir")

    def slow(**arguments: Any) -> str:
        time.sleep(5)
        return "late"

    environment = start(row)
    right = ground_truth_calls(environment, json.loads(row["task"])["target"])
    environment.call_time_s = 0.05
    monkeypatch.setitem(environment._world.methods, "mkdir", slow)
    messages = play(environment, right)
    assert "ran past its 0.05 s limit" in messages[1]["content"]
    assert environment.timed_out
    assert score_rollout(environment, messages) == (0.0, "time_limit")

    environment = start(row)
    environment.episode_time_s = 0.05
    monkeypatch.setitem(environment._world.methods, "ls", lambda **arguments: time.sleep(5))
    first = play(environment, [call("ls", {})], final=None)
    assert "ran past its 0.05 s limit" in first[1]["content"]
    state = copy.deepcopy(environment._world.state())
    messages = first + play(environment, right)
    assert messages[-2]["content"] == "Error: this episode's 0.05 s of tool time is spent"
    assert environment._world.state() == state  # the refused mkdir did not run
    assert score_rollout(environment, messages) == (0.0, "time_limit")

    environment.reset(**{k: v for k, v in row.items() if k != "environment"})
    assert not environment.timed_out and environment.calls == [] and environment.time_used == 0.0
    assert score_rollout(environment, play(environment, right)) == (1.0, None)


@requires_bfcl
def test_agent_reward_counts_faults_and_needs_environments(demo_rows: list[dict[str, Any]]) -> None:
    """AgentReward scores each rollout in its own environment, counts the faults per kind and the calls made, and
    refuses to run without environments, naming environment_factory."""
    row = demo_row(demo_rows, "mkdir")
    environments = [start(row) for _ in range(4)]
    right = ground_truth_calls(environments[0], json.loads(row["task"])["target"])
    completions = [
        play(environments[0], right),
        play(environments[1], right, final=None),
        play(environments[2], [call("nope", {})]),
        play(environments[3], [], "<tool_call>{"),
    ]
    reward = AgentReward()
    assert reward(completions, environments=environments) == [1.0, 0.0, 0.0, 0.0]
    assert reward.faults == {"unfinished": 1, "invalid_call": 1, "malformed_call": 1}
    assert set(reward.faults) <= set(FAULTS)
    assert reward.tool_calls == 3 == sum(map(count_tool_calls, completions))
    with pytest.raises(ValueError, match="environment_factory"):
        reward(completions)


# --- the environment classes ---------------------------------------------------------------------------------------


def tool_names(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")} - {"reset"}


@requires_bfcl
def test_environment_classes_offer_bfcls_functions() -> None:
    """An environment class's tools are exactly BFCL's documented functions of its APIs; the "!" form withholds the
    listed ones, the ":" form offers only the listed ones; an unknown function is refused."""
    for api in API_MODULES:
        assert tool_names(environment_class(api)) == set(function_docs(api)), api
    pair = environment_class("MessageAPI+GorillaFileSystem")
    assert tool_names(pair) == set(function_docs("MessageAPI")) | set(function_docs("GorillaFileSystem"))
    withheld = environment_class(environment_name(["GorillaFileSystem"], excluded=["cp", "rm"]))
    assert tool_names(withheld) == set(function_docs("GorillaFileSystem")) - {"cp", "rm"}
    assert tool_names(environment_class(DEMO_ENVIRONMENT)) == {"ls", "cd", "mkdir", "touch"}
    with pytest.raises(ValueError, match="no such functions"):
        environment_class("GorillaFileSystem:ls,teleport")


@requires_bfcl
def test_tool_schemas_match_bfcls_documentation() -> None:
    """transformers' get_json_schema (what TRL shows the model) of every tool gives BFCL's parameters, types,
    descriptions and required list; the demo's tools drop the preamble BFCL repeats in every description."""
    types = {"string": "string", "integer": "integer", "float": "number", "boolean": "boolean", "dict": "object"}
    types["array"] = "array"
    for api in API_MODULES:
        environment = environment_class(api)()
        for name, doc in function_docs(api).items():
            schema = get_json_schema(getattr(environment, name))["function"]
            expected = doc["parameters"]
            assert schema["name"] == name
            assert schema["description"] == " ".join(doc["description"].split())
            properties = schema["parameters"].get("properties", {})
            assert set(properties) == set(expected["properties"]), name
            assert sorted(schema["parameters"].get("required", [])) == sorted(expected.get("required", [])), name
            for param, spec in expected["properties"].items():
                assert properties[param]["type"] == types[spec["type"]], (name, param)
                assert properties[param]["description"] == " ".join(spec.get("description", param).split())
    full = get_json_schema(environment_class("GorillaFileSystem")().mkdir)["function"]["description"]
    demo = get_json_schema(environment_class(DEMO_ENVIRONMENT)().mkdir)["function"]["description"]
    assert "Tool description: " in full and full.endswith(demo)
    assert demo == "Create a new directory in the current directory."


# --- the generated file-system tasks -------------------------------------------------------------------------------


@requires_bfcl
def test_files_demo_tasks_are_seeded_split_and_solvable() -> None:
    """files_demo tasks are the same for a seed, differ between train and test, show two solved requests before the
    asked one, name the demo's environment, and their ground truth scores 1."""
    train = files_demo_tasks(12, seed=3)
    assert train == files_demo_tasks(12, seed=3)
    test = files_demo_tasks(12, seed=3, split="test")
    assert [r["task"] for r in train] != [r["task"] for r in test]
    for row in train + test:
        spec = json.loads(row["task"])
        assert len(spec["history"]) == 2 and all(spec["history"])
        assert sum(m["role"] == "user" for m in row["prompt"]) == 3
        assert sum(m["role"] == "tool" for m in row["prompt"]) == sum(map(len, spec["history"]))
        assert row["environment"] == DEMO_ENVIRONMENT
        environment = start(row)
        messages = play(environment, ground_truth_calls(environment, spec["target"]))
        assert score_rollout(environment, messages) == (1.0, None), row["source"]


@requires_bfcl
def test_agent_datasets_and_factories(tool_tokenizer: PreTrainedTokenizerFast) -> None:
    """load_agent_tasks gives datasets whose prompts (after Arrow) still render with the tool template, calls with
    JSON-string arguments included; environment_factories makes environments with the given time limits."""
    demo = load_agent_tasks("files_demo", "train", seed=0, num_tasks=3)
    assert len(demo) == 3 and demo[0]["task"] == files_demo_tasks(3, 0)[0]["task"]
    factories = environment_factories(demo, call_time_s=1.5, episode_time_s=7.0)
    assert list(factories) == [DEMO_ENVIRONMENT]
    environment = factories[DEMO_ENVIRONMENT]()
    assert isinstance(environment, ToolEnvironment)
    assert (environment.call_time_s, environment.episode_time_s) == (1.5, 7.0)

    bfcl = load_agent_tasks("bfcl_multi_turn_base", "test", seed=0, num_tasks=1)
    assert set(bfcl["source"]) == {r["source"] for r in bfcl_tasks("multi_turn_base", "test")}
    row = next(r for r in bfcl if any(m["role"] == "tool" for m in r["prompt"]))
    environment = environment_factories(bfcl)[row["environment"]]()
    text = tool_tokenizer.apply_chat_template(row["prompt"], tools=environment_tools(environment), tokenize=False)
    first = next(m for m in row["prompt"] if m["tool_calls"])["tool_calls"][0]["function"]
    assert f'<tool_call>{{"name": "{first["name"]}", "arguments": {first["arguments"]}}}</tool_call>' in text
    for name, split, tasks in [("bfcl_other", "train", 1), ("files_demo", "dev", 1), ("files_demo", "train", 0)]:
        with pytest.raises(ValueError):
            load_agent_tasks(name, split, seed=0, num_tasks=tasks)


# --- TextWorld games -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_games(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    """Two games built once in a cache folder of the test's own."""
    pytest.importorskip("textworld")
    from resrl_trl.text_games import text_game_tasks

    cache = tmp_path_factory.mktemp("resrl_trl_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESRL_TRL_CACHE", str(cache))
        return text_game_tasks(2, seed=0, split="train"), cache


def walkthrough(game_file: str) -> list[str]:
    import textworld

    game = textworld.Game.load(str(Path(game_file).with_suffix(".json")))
    assert game.walkthrough
    return list(game.walkthrough)


def new_game(row: dict[str, Any]) -> Any:
    from resrl_trl.text_games import TextGameEnvironment

    environment = TextGameEnvironment()
    environment.reset(**row)
    return environment


def act_all(environment: Any, commands: list[str]) -> list[dict[str, Any]]:
    return play(environment, [call("act", {"command": c}) for c in commands])


def test_text_games_are_built_in_the_cache(text_games: tuple[Dataset, Path]) -> None:
    """text_game_tasks builds its games under $RESRL_TRL_CACHE/textworld, each prompt holds the objective, and the
    rows name the text-game environment with its one tool, act."""
    from resrl_trl.text_games import TEXT_GAME_ENVIRONMENT, TextGameEnvironment

    games, cache = text_games
    assert len(games) == 2 and len(set(games["task"])) == 2
    for row in games:
        assert Path(row["task"]).parent == cache / "textworld" and Path(row["task"]).exists()
        assert row["prompt"][-1]["content"].startswith("Objective: ")
        assert row["environment"] == TEXT_GAME_ENVIRONMENT
    assert tool_names(TextGameEnvironment) == {"act"}
    factory = environment_factories(games, call_time_s=2.0)[TEXT_GAME_ENVIRONMENT]
    assert isinstance(factory(), TextGameEnvironment) and factory().call_time_s == 2.0


def test_text_game_walkthrough_wins_and_wrong_commands_do_not(text_games: tuple[Dataset, Path]) -> None:
    """Each game's winning commands win it and score 1 (after the win the game is over); commands that do not
    reach the objective score 0."""
    games, _ = text_games
    rng = random.Random(0)
    for row in games:
        environment = new_game(row)
        messages = act_all(environment, walkthrough(row["task"]))
        assert messages[-2]["content"].endswith("You won.")
        assert score_rollout(environment, messages) == (1.0, None)
        assert environment.act("look") == "The game is over."

        environment = new_game(row)
        wrong = rng.sample(["look", "inventory", "go west", "examine the wall", "wait", "open the sky"], 4)
        messages = act_all(environment, wrong)
        assert not any("You won." in m["content"] for m in messages)
        assert score_rollout(environment, messages) == (0.0, None)
        environment._game.close()


def test_text_game_ends_after_its_command_bound(text_games: tuple[Dataset, Path]) -> None:
    """Past max_commands, act answers that the game is over and the winning commands no longer win."""
    games, _ = text_games
    environment = new_game(games[0])
    environment.max_commands = 3
    messages = act_all(environment, ["look"] * 3 + walkthrough(games[0]["task"]))
    assert messages[1 + 3]["content"] == "The game is over: 3 commands were allowed."
    assert all(m["content"] == "The game is over." for m in messages[5:-1])
    assert score_rollout(environment, messages) == (0.0, None)
    environment._game.close()


# --- the evaluation's rollout loop ---------------------------------------------------------------------------------


class ScriptedGenerator:
    """Stands in for the model: the reply to a conversation is ``replies[k]``, k the assistant replies already made
    after its last user message (the last reply repeats)."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, replies: list[str]) -> None:
        self.tokenizer, self.replies = tokenizer, replies
        self.batches: list[int] = []

    def generate(self, prompts: list[list[int]], budgets: list[int], seed: int) -> list[list[int]]:
        self.batches.append(len(prompts))
        out = []
        for ids, budget in zip(prompts, budgets, strict=True):
            turn = self.tokenizer.decode(ids).rsplit("<|im_start|>user\n", 1)[-1]
            made = turn.count("<|im_start|>assistant\n") - 1  # the generation prompt opens one more
            reply = self.tokenizer.encode(self.replies[min(made, len(self.replies) - 1)], add_special_tokens=False)
            out.append(reply[:budget])
        return out


@requires_bfcl
def test_run_tool_calls_refuses_unknown_tools_and_misfit_arguments(demo_rows: list[dict[str, Any]]) -> None:
    """run_tool_calls answers an unknown tool (also one the "!"/":" forms withhold) and arguments that do not fit
    with an error result, and neither reaches the environment; a good call runs and returns its result."""
    environment = start(demo_row(demo_rows, "mkdir"))
    tools = {tool.__name__: tool for tool in environment_tools(environment)}
    assert set(tools) == {"ls", "cd", "mkdir", "touch"}
    state = copy.deepcopy(environment._world.state())
    results = run_tool_calls(
        tools, [call("rm", {"file_name": "x"}), call("mkdir", {"name": "x"}), call("mkdir", {"dir_name": "new"})]
    )
    assert [r["name"] for r in results] == ["rm", "mkdir", "mkdir"]
    assert results[0]["content"] == "{'error': 'Tool rm not found.'}"
    assert results[1]["content"].startswith("{'error': ") and "name" in results[1]["content"]
    assert results[2]["content"] == "None"
    assert environment.calls == [("mkdir", {"dir_name": "new"})]
    assert environment._world.state() != state


@requires_bfcl
def test_run_rollouts_plays_a_call_then_an_answer(tool_tokenizer: PreTrainedTokenizerFast) -> None:
    """run_rollouts runs each rollout's calls in its own environment and lets the model answer: a reply with the
    right call, then one without, is a right two-turn rollout; its record carries the conversation, correct, fault
    and calls made, and its completion ids are the replies with the tool turn between them (tool_mask 0), as the
    whole conversation renders."""
    row = next(r for r in load_agent_tasks("files_demo", "test", 0, 40) if len(json.loads(r["task"])["target"]) == 1)
    name, args, kwargs = parse_call(json.loads(row["task"])["target"][0])
    assert not args
    replies = [reply_text([(name, kwargs)]), "Done.<|im_end|>"]
    first, last = (tool_tokenizer.encode(r, add_special_tokens=False) for r in replies)
    generator = ScriptedGenerator(tool_tokenizer, replies)
    factory = environment_factories(Dataset.from_list([row]))[row["environment"]]
    environments = [factory(), factory()]
    records = run_rollouts(generator, tool_tokenizer, row, environments, max_turns=3, max_tokens=2000, seed=0)
    assert generator.batches == [2, 2]
    for record, environment in zip(records, environments, strict=True):
        assert record["correct"] and record["reward"] == 1.0 and record["fault"] is None
        assert record["tool_calls"] == 1 and environment.calls == [(name, kwargs)]
        roles = [m["role"] for m in record["messages"]]
        assert roles == ["assistant", "tool", "assistant"]
        assert record["messages"][0]["tool_calls"] == [call(name, kwargs)]
        assert record["messages"][-1]["content"] == "Done."
        completion, mask = record["completion_ids"], record["tool_mask"]
        assert record["completion_tokens"] == len(completion) == len(mask) <= 2000
        assert completion[: len(first)] == first and completion[-len(last) :] == last
        tool_turn = len(completion) - len(first) - len(last)
        assert mask == [1] * len(first) + [0] * tool_turn + [1] * len(last)
        suffix = tool_tokenizer.decode(completion[len(first) : len(first) + tool_turn])
        assert suffix.startswith("\n<|im_start|>tool\n") and suffix.endswith("<|im_end|>\n<|im_start|>assistant\n")
        rendered = tool_tokenizer.apply_chat_template(
            row["prompt"] + record["messages"], tools=environment_tools(environment), tokenize=True, return_dict=False
        )
        assert list(rendered[: len(record["prompt_ids"]) + len(completion)]) == record["prompt_ids"] + completion


@requires_bfcl
def test_run_rollouts_stops_at_the_turn_and_token_bounds(tool_tokenizer: PreTrainedTokenizerFast) -> None:
    """A model that never stops calling is cut after max_turns replies that called tools (the last reply's calls do
    not run) and one whose tool result would overflow max_tokens is cut before it; both are unfinished and earn 0."""
    row = load_agent_tasks("files_demo", "test", 0, 1)[0]
    endless = reply_text([("ls", {})])
    generator = ScriptedGenerator(tool_tokenizer, [endless])
    environment = environment_class(row["environment"])()
    [record] = run_rollouts(generator, tool_tokenizer, row, [environment], max_turns=2, max_tokens=4000, seed=0)
    assert generator.batches == [1, 1, 1]
    assert [m["role"] for m in record["messages"]] == ["assistant", "tool"] * 2 + ["assistant"]
    assert len(environment.calls) == 2 and record["tool_calls"] == 3
    assert (record["correct"], record["fault"]) == (False, "unfinished")

    budget = len(tool_tokenizer.encode(endless, add_special_tokens=False)) + 5
    [record] = run_rollouts(generator, tool_tokenizer, row, [environment], max_turns=2, max_tokens=budget, seed=0)
    assert [m["role"] for m in record["messages"]] == ["assistant"]
    assert len(environment.calls) == 1 and record["tool_calls"] == 1
    assert (record["correct"], record["fault"]) == (False, "unfinished")


def test_transformers_generator_keeps_budgets_and_seeds(tool_tokenizer: PreTrainedTokenizerFast) -> None:
    """TransformersGenerator returns each reply within its token budget, cut after the end-of-turn token, and the
    same replies for the same seed."""
    model = make_model(tool_tokenizer, layers=1)
    opts = argparse.Namespace(temperature=1.0, top_p=1.0)
    generator = TransformersGenerator(model, tool_tokenizer, opts)
    prompts = [tool_tokenizer.encode("<|im_start|>user\nhi", add_special_tokens=False), [10, 11, 12, 13, 14, 15]]
    replies = generator.generate(prompts, [4, 9], seed=1)
    assert replies == generator.generate(prompts, [4, 9], seed=1)
    for reply, budget in zip(replies, [4, 9], strict=True):
        assert 0 < len(reply) <= budget
        assert tool_tokenizer.eos_token_id not in reply[:-1]
