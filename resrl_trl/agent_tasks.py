"""The agent datasets by name, and the environment factories TRL needs for them.

=====================  ==========================================================================================
``files_demo``         generated three-turn tasks over BFCL's file system, four tools (the CPU demo)
``bfcl_<category>``    BFCL v4 multi-turn, one task per user turn; ``<category>``: ``multi_turn_base``,
                       ``multi_turn_long_context`` or ``multi_turn_miss_param``; split ``train`` or the held-out
                       ``test`` (every fifth entry)
``text_games``         TextWorld games built here (one room, three objects, a one-step quest by default)
=====================  ==========================================================================================

Every row has ``prompt`` (messages), ``task`` (what the environment's ``reset`` reads) and ``environment`` (the name
of its environment class, which fixes the tools the prompt shows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datasets import Dataset

from resrl_trl.agent_env import ToolEnvironment
from resrl_trl.function_calling import BFCL_CATEGORIES, bfcl_tasks, environment_class, files_demo_tasks, task_dataset
from resrl_trl.text_games import TEXT_GAME_ENVIRONMENT, TextGameEnvironment, text_game_tasks

__all__ = ["AGENT_DATASETS", "environment_factories", "load_agent_tasks"]

AGENT_DATASETS = ("files_demo", *(f"bfcl_{category}" for category in BFCL_CATEGORIES), "text_games")


def load_agent_tasks(name: str | None, split: str, seed: int, num_tasks: int) -> Dataset:
    """The tasks of agent dataset ``name`` (one of :data:`AGENT_DATASETS`) for ``split`` (``train`` or ``test``);
    ``num_tasks`` tasks for the generated ones, the whole split for BFCL."""
    if split not in ("train", "test"):
        raise ValueError(f"agent datasets have the splits 'train' and 'test' (held out), got {split!r}")
    if num_tasks < 1:
        raise ValueError(f"--num_tasks must be at least 1, got {num_tasks}")
    if name == "files_demo":
        return task_dataset(files_demo_tasks(num_tasks, seed, split))
    if name == "text_games":
        return text_game_tasks(num_tasks, seed, split)
    if name is not None and name.startswith("bfcl_") and name[len("bfcl_") :] in BFCL_CATEGORIES:
        return task_dataset(bfcl_tasks(name[len("bfcl_") :], split))
    raise ValueError(f"unknown agent dataset {name!r}: expected one of {', '.join(AGENT_DATASETS)}")


def environment_factories(
    dataset: Dataset, call_time_s: float = 5.0, episode_time_s: float = 60.0
) -> dict[str, Callable[[], ToolEnvironment]]:
    """One factory per environment the rows name, each making environments with these time limits."""

    def factory(cls: type[ToolEnvironment]) -> Callable[[], ToolEnvironment]:
        def make() -> ToolEnvironment:
            environment = cls()
            environment.call_time_s, environment.episode_time_s = call_time_s, episode_time_s
            return environment

        return make

    classes: dict[str, Any] = {}
    for name in sorted(set(dataset["environment"])):
        classes[name] = TextGameEnvironment if name == TEXT_GAME_ENVIRONMENT else environment_class(name)
    return {name: factory(cls) for name, cls in classes.items()}
