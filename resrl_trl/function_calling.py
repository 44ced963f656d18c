"""Multi-turn function calling over BFCL v4's stateful APIs, offline.

The ``bfcl-eval`` package ships BFCL v4's multi-turn data (each entry: user turns, the APIs involved and their
initial state, and the ground-truth calls of each turn) and the APIs themselves as plain Python classes (a file
system, a messaging service, a trading bot, ...). Install it with ``pip install --no-deps bfcl-eval``: the eight
multi-turn APIs need only the standard library and ``mpmath``.

**Tasks.** Training runs TRL's tool loop, which answers one user message. A BFCL entry with K user turns therefore
becomes K tasks (:func:`bfcl_tasks`): task k shows turns 1..k-1 with their ground-truth calls and results (replayed on
the environment's APIs, so the state matches what the conversation shows) and asks turn k. BFCL is an evaluation set:
entries are split into ``train`` and a held-out ``test`` by entry number (every fifth entry is held out), never by
task, so no conversation is seen in both. :func:`files_demo_tasks` generates small tasks over BFCL's file-system API
with four of its tools, for the CPU demo (each prompt opens with two solved requests of the asked kind).

**Checking** follows BFCL's multi-turn checker, for the asked turn: the same calls are replayed on a second, reference
copy of the APIs followed by the turn's ground-truth calls; the rollout is right when every API's public state
equals the reference's and every result the ground-truth calls returned is among the results the conversation holds
(the history's and the model's, counted with multiplicity). A turn whose ground truth makes calls is not answered by a
reply that makes none. The faults of :mod:`resrl_trl.agent_env` (malformed or unknown calls, an unfinished loop, the
time limits) earn 0 first.

**Tools.** TRL renders an environment's public methods as tools, so each set of APIs gets its own environment class
(:func:`environment_class`) whose methods carry BFCL's function documentation (name, description, typed parameters
and defaults) and forward to the API instances.
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import json
import random
from functools import cache
from importlib import resources
from typing import Any

from datasets import Dataset

from resrl_trl.agent_env import CallTimeout, ToolEnvironment

__all__ = [
    "API_MODULES",
    "APIWorld",
    "FunctionCallingEnvironment",
    "bfcl_tasks",
    "environment_class",
    "environment_name",
    "files_demo_tasks",
    "parse_call",
    "task_dataset",
]

_PACKAGE = "bfcl_eval"
_SOURCE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
# BFCL's multi-turn APIs: class name -> module (and function-doc file) name.
API_MODULES = {
    "GorillaFileSystem": "gorilla_file_system",
    "MathAPI": "math_api",
    "MessageAPI": "message_api",
    "TwitterAPI": "posting_api",
    "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
}
STATELESS_APIS = {"MathAPI"}
BFCL_CATEGORIES = ("multi_turn_base", "multi_turn_long_context", "multi_turn_miss_param")
SYSTEM_PROMPT = (
    "You complete the user's requests by calling the functions you are given. Make the calls a request needs, read "
    "their results, and answer briefly when the request is done."
)
_JSON_TYPES = {"string": str, "integer": int, "float": float, "number": float, "boolean": bool, "dict": dict}
_MISSING_PACKAGE = "the bfcl-eval package is not installed: pip install --no-deps bfcl-eval"


def _require_bfcl() -> None:
    if importlib.util.find_spec(_PACKAGE) is None:
        raise ModuleNotFoundError(_MISSING_PACKAGE)


def api_class(name: str) -> type:
    """BFCL's API class ``name`` (one of :data:`API_MODULES`)."""
    if name not in API_MODULES:
        raise ValueError(f"unknown BFCL API {name!r}: expected one of {sorted(API_MODULES)}")
    _require_bfcl()
    return getattr(importlib.import_module(f"{_SOURCE}.{API_MODULES[name]}"), name)


@cache
def function_docs(name: str) -> dict[str, dict[str, Any]]:
    """BFCL's documentation of API ``name``'s functions (the schemas BFCL shows a model), by function name."""
    _require_bfcl()
    path = resources.files(_PACKAGE) / "data" / "multi_turn_func_doc" / f"{API_MODULES[name]}.json"
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {doc["name"]: doc for doc in docs}


def parse_call(text: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """``(name, positional arguments, keyword arguments)`` of a ground-truth call written as Python, e.g.
    ``"mv(source='a.txt', destination='temp')"``. Arguments must be literals; nothing is evaluated."""
    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a function call: {text!r}")
    args = tuple(ast.literal_eval(arg) for arg in node.args)
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
    return node.func.id, args, kwargs


def format_result(result: Any) -> str:
    """A call's result as BFCL records it: text as is, a dict as JSON, anything else with ``str``."""
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        try:
            return json.dumps(result)
        except (TypeError, ValueError):
            return str(result)
    return str(result)


class APIWorld:
    """Fresh instances of the involved APIs, loaded with the task's initial state, and the calls that run on them."""

    def __init__(self, involved: list[str], initial_config: dict[str, Any], long_context: bool = False) -> None:
        self.instances: dict[str, Any] = {}
        self.methods: dict[str, Any] = {}
        for name in involved:
            instance = api_class(name)()
            if name not in STATELESS_APIS:
                instance._load_scenario(copy.deepcopy(initial_config.get(name, {})), long_context=long_context)
            self.instances[name] = instance
            for method_name, method in inspect.getmembers(instance, predicate=inspect.ismethod):
                if not method_name.startswith("_"):
                    self.methods[method_name] = method

    def call(self, name: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> str:
        """Run one call and return its result as BFCL formats it; an exception becomes BFCL's error text."""
        if name not in self.methods:
            return f"Error during execution: no function named {name}"
        try:
            return format_result(self.methods[name](*args, **(kwargs or {})))
        except CallTimeout:  # the time limit's signal: the environment ends the rollout, the API does not answer
            raise
        except Exception as error:
            return f"Error during execution: {error}"

    def replay(self, calls: list[str]) -> list[str]:
        """Run ground-truth calls (Python call strings) in order; their results."""
        results = []
        for text in calls:
            name, args, kwargs = parse_call(text)
            results.append(self.call(name, args, kwargs))
        return results

    def state(self) -> dict[str, dict[str, Any]]:
        """Each stateful API's public attributes (what BFCL's state check compares)."""
        return {
            name: {key: value for key, value in vars(instance).items() if not key.startswith("_")}
            for name, instance in self.instances.items()
            if name not in STATELESS_APIS
        }


class FunctionCallingEnvironment(ToolEnvironment):
    """One rollout's APIs. :meth:`reset` takes the row's ``task`` (JSON: ``involved_classes``, ``initial_config``,
    ``history`` (ground-truth calls of the shown turns), ``target`` (the asked turn's)); the tools are added per API
    set by :func:`environment_class`. Every other method is private: TRL would offer a public one as a tool."""

    def reset(self, task: str, **row: Any) -> None:
        self._spec = json.loads(task)
        self._start_episode()
        self._world = self._shown_world()
        self._results = [result for turn in self._spec["history"] for result in self._world.replay(turn)]

    def _shown_world(self) -> APIWorld:
        """Fresh APIs with the shown turns' ground-truth calls replayed (their results are discarded)."""
        spec = self._spec
        return APIWorld(spec["involved_classes"], spec["initial_config"], spec.get("long_context", False))

    def _invoke(self, name: str, arguments: dict[str, Any]) -> str:
        return self._run_call(name, arguments, lambda: self._world.call(name, (), arguments))

    def _check(self, messages: list[dict[str, Any]]) -> float:
        target = self._spec["target"]
        if not target:  # BFCL: a turn whose request cannot be done yet (a missing parameter) must make no call
            return float(not self.calls)
        if not self.calls:  # BFCL: a turn that needs calls is not answered by a reply without any
            return 0.0
        reference = self._shown_world()
        for turn in self._spec["history"]:
            reference.replay(turn)
        expected = reference.replay(target)
        if self._world.state() != reference.state():
            return 0.0
        available = self._results + [m["content"] for m in messages if m.get("role") == "tool"]
        for result in expected:  # each expected result matched by its own occurrence
            if result not in available:
                return 0.0
            available.remove(result)
        return 1.0


def _tool_method(doc: dict[str, Any], short: bool = False) -> Any:
    """A method named and documented as BFCL's function ``doc``, which forwards its arguments to the API. ``short``
    leaves out the preamble every function of an API repeats (``"This tool belongs to ... Tool description: "``)."""
    name, properties = doc["name"], doc["parameters"]["properties"]
    required = set(doc["parameters"].get("required", []))
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    description = " ".join(doc["description"].split())
    if short:
        description = description.split("Tool description: ", 1)[-1]
    lines = [description, "", "Args:"]
    for param, schema in properties.items():
        kind = schema["type"]
        hint: Any = list[_JSON_TYPES.get(schema.get("items", {}).get("type"), str)] if kind == "array" else None
        hint = hint or _JSON_TYPES.get(kind, str)
        default = inspect.Parameter.empty if param in required else schema.get("default")
        if param not in required and default is None:
            hint = hint | None
        annotations[param] = hint
        parameters.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint))
        description = " ".join(schema.get("description", param).split()) or param
        lines.append(f"    {param}: {description}")
    annotations["return"] = str

    signature = inspect.Signature(parameters, return_annotation=str)

    def method(self: FunctionCallingEnvironment, **arguments: Any) -> str:
        signature.bind(self, **arguments)  # arguments that do not fit raise here, before reaching the API
        return self._invoke(name, arguments)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = "\n".join(lines if properties else lines[:1])
    method.__annotations__ = annotations
    method.__signature__ = signature  # type: ignore[attr-defined]
    return method


def environment_name(
    involved: list[str], functions: list[str] | None = None, excluded: list[str] | None = None
) -> str:
    """The name that selects an environment class: the APIs joined by ``+``, then ``:`` and the exposed functions
    when only some are, or ``!`` and the withheld ones (BFCL's ``excluded_function``)."""
    name = "+".join(involved)
    if functions:
        name += ":" + ",".join(functions)
    if excluded:
        name += "!" + ",".join(excluded)
    return name


@cache
def environment_class(name: str) -> type[FunctionCallingEnvironment]:
    """The environment class for :func:`environment_name` ``name``: BFCL's functions of those APIs as tools. An
    environment that shows a chosen few functions (the demo's) shows each function's own description without the
    preamble its API repeats in every one; the others show BFCL's documentation as it is."""
    name_and_only, _, withheld = name.partition("!")
    apis, _, only = name_and_only.partition(":")
    involved, functions = apis.split("+"), set(only.split(",")) if only else None
    excluded = set(withheld.split(",")) if withheld else set()
    members: dict[str, Any] = {}
    for api in involved:
        for function, doc in function_docs(api).items():
            if (functions is None or function in functions) and function not in excluded:
                if function in members:
                    raise ValueError(f"{name}: two APIs define {function}")
                members[function] = _tool_method(doc, short=functions is not None)
    if functions is not None and not functions <= set(members):
        raise ValueError(f"{name}: no such functions {sorted(functions - set(members))}")
    class_name = "".join(api for api in involved) + ("Subset" if functions else "") + "Environment"
    return type(class_name, (FunctionCallingEnvironment,), members)


def _keyword_calls(world: APIWorld, calls: list[str]) -> list[dict[str, Any]]:
    """Ground-truth calls as the tool calls of an assistant turn (positional arguments named)."""
    tool_calls = []
    for text in calls:
        name, args, kwargs = parse_call(text)
        bound = inspect.signature(world.methods[name]).bind_partial(*args, **kwargs).arguments
        # arguments as JSON text: one Arrow schema for every call, and chat templates render text as is
        tool_calls.append({"type": "function", "function": {"name": name, "arguments": json.dumps(dict(bound))}})
    return tool_calls


def _task_row(
    involved: list[str],
    initial_config: dict[str, Any],
    turns: list[str],
    calls: list[list[str]],
    asked: int,
    functions: list[str] | None,
    source: str,
    excluded: list[str] | None = None,
    long_context: bool = False,
) -> dict[str, Any]:
    """The training row for turn ``asked``: the earlier turns with their ground-truth calls and results, then the
    asked turn's request."""
    world = APIWorld(involved, initial_config, long_context)
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for turn, turn_calls in zip(turns[:asked], calls[:asked], strict=True):
        messages.append({"role": "user", "content": turn})
        if turn_calls:
            tool_calls = _keyword_calls(world, turn_calls)
            messages.append({"role": "assistant", "content": "", "tool_calls": tool_calls})
            for call, result in zip(tool_calls, world.replay(turn_calls), strict=True):
                messages.append({"role": "tool", "name": call["function"]["name"], "content": result})
        messages.append({"role": "assistant", "content": "Done." if turn_calls else "I need more details first."})
    messages.append({"role": "user", "content": turns[asked]})
    spec = {
        "involved_classes": involved,
        "initial_config": initial_config,
        "history": calls[:asked],
        "target": calls[asked],
        "long_context": long_context,
    }
    return {
        "prompt": messages,
        "task": json.dumps(spec),
        "environment": environment_name(involved, functions, excluded),
        "source": source,
    }


def bfcl_tasks(category: str = "multi_turn_base", split: str = "train", holdout_every: int = 5) -> list[dict]:
    """One task per user turn of BFCL v4's ``category`` entries: ``split`` ``"train"`` keeps the entries whose number
    is not a multiple of ``holdout_every``, ``"test"`` the others (entry 0, 5, 10, ...)."""
    if category not in BFCL_CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}: expected one of {BFCL_CATEGORIES}")
    if split not in ("train", "test"):
        raise ValueError(f"BFCL split must be 'train' or 'test' (held out by entry), got {split!r}")
    _require_bfcl()
    data = resources.files(_PACKAGE) / "data"
    entries = [json.loads(line) for line in (data / f"BFCL_v4_{category}.json").read_text().splitlines() if line]
    answers = {
        a["id"]: a["ground_truth"]
        for a in map(json.loads, (data / "possible_answer" / f"BFCL_v4_{category}.json").read_text().splitlines())
    }
    rows = []
    for entry in entries:
        number = int(entry["id"].rsplit("_", 1)[1])
        if (number % holdout_every == 0) != (split == "test"):
            continue
        turns = [" ".join(m["content"] for m in turn if m["role"] == "user") for turn in entry["question"]]
        calls = answers[entry["id"]]
        for asked in range(len(turns)):
            row = _task_row(
                entry["involved_classes"],
                entry["initial_config"],
                turns,
                calls,
                asked,
                None,
                entry["id"],
                excluded=entry.get("excluded_function"),
                long_context=category == "multi_turn_long_context",
            )
            rows.append(row)
    return rows


# The demo's APIs and tools: BFCL's file system, four of its functions.
DEMO_FUNCTIONS = ["ls", "cd", "mkdir", "touch"]
_NAMES = ["notes", "reports", "data", "drafts", "music", "photos", "backup", "archive", "todo", "plans", "ideas"]
_EXTENSIONS = [".txt", ".md", ".csv", ".log"]


def _demo_request(rng: random.Random, taken: set[str], kind: int) -> tuple[str, list[str]]:
    """A request of ``kind`` (0-4) over the demo's file system, and its ground-truth calls."""
    name = rng.choice([n for n in _NAMES if n not in taken])
    taken.add(name)
    file = name + rng.choice(_EXTENSIONS)
    folder = rng.choice(["docs", "src"])
    if kind == 0:
        return f"Create a folder named {name}.", [f"mkdir(dir_name={name!r})"]
    if kind == 1:
        return f"Make an empty file called {file}.", [f"touch(file_name={file!r})"]
    if kind == 2:
        return f"Go into the {folder} folder and create a folder named {name} there.", [
            f"cd(folder={folder!r})",
            f"mkdir(dir_name={name!r})",
        ]
    if kind == 3:
        return f"Create a file named {file} inside the {folder} folder.", [
            f"cd(folder={folder!r})",
            f"touch(file_name={file!r})",
        ]
    return f"List what is in the {folder} folder.", [f"cd(folder={folder!r})", "ls()"]


def files_demo_tasks(count: int, seed: int, split: str = "train", shots: int = 2) -> list[dict]:
    """``count`` generated tasks over BFCL's file system (tools: :data:`DEMO_FUNCTIONS`): ``shots`` solved requests,
    then the asked one, all of one kind with other names (SmolLM2-135M writes the asked calls exactly in about 1 of 5
    samples with two examples, almost never with one). ``split`` ``"test"`` draws from another seed stream."""
    rng = random.Random(f"files_demo/{split}/{seed}")
    rows = []
    for index in range(count):
        folders = {
            "docs": {"type": "directory", "contents": {"readme.txt": {"type": "file", "content": "Start here."}}},
            "src": {"type": "directory", "contents": {}},
        }
        config = {"GorillaFileSystem": {"root": {"workspace": {"type": "directory", "contents": folders}}}}
        taken: set[str] = set()
        kind = rng.randrange(5)
        turns, calls = [], []
        for _ in range(shots + 1):
            request, request_calls = _demo_request(rng, taken, kind)
            if request_calls[0].startswith("cd(") and calls:  # an earlier request left the top folder: go back up
                request_calls = ["cd(folder='..')", *request_calls]
            turns.append(request)
            calls.append(request_calls)
        source = f"files_demo_{split}_{index}"
        rows.append(_task_row(["GorillaFileSystem"], config, turns, calls, shots, DEMO_FUNCTIONS, source))
    return rows


def task_dataset(rows: list[dict[str, Any]]) -> Dataset:
    """The tasks as a dataset TRL trains on (``prompt`` messages, ``task``, ``environment``, ``source``)."""
    return Dataset.from_list(rows)
