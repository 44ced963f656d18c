"""Text games as an offline stand-in for ALFWorld: TextWorld games built on this machine, played through one tool.

ALFWorld (the paper's household agent task) is a set of TextWorld games whose data is downloaded at install time.
TextWorld itself is on PyPI and builds games offline from a seed (rooms, objects, a quest of a given length), so
the same kind of task, an objective in a room-and-object world reached by typed commands, runs here without network.
:func:`text_game_tasks` builds (and caches) the games; the ``train`` and ``test`` splits are built from different
seed streams. A rollout plays one game: the model calls ``act`` with a command, reads the game's reply, and earns 1
when the quest is won (before the turn bound; the faults of :mod:`resrl_trl.agent_env` earn 0).

On a machine with network, ALFWorld's own games (``pip install alfworld && alfworld-download``) are TextWorld
``.z8``/``.ulx`` files too: :class:`TextGameEnvironment` plays any game file TextWorld opens, so a dataset of rows with
``prompt`` and ``task`` (the game file) trains on them unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from datasets import Dataset

from resrl_trl.agent_env import ToolEnvironment

__all__ = ["TEXT_GAME_ENVIRONMENT", "TextGameEnvironment", "build_game", "text_game_tasks"]

TEXT_GAME_ENVIRONMENT = "text_game"
SYSTEM_PROMPT = (
    "You play a text adventure. Reach the objective by calling the act tool with one short command at a time "
    "(for example: look, inventory, go north, take the key, open the box, put the apple in the box). Read each reply "
    "before the next command. Stop calling the tool once the game says you won."
)
_MISSING_PACKAGE = "the textworld package is not installed: pip install textworld"


def _textworld() -> Any:
    try:
        import textworld
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(_MISSING_PACKAGE) from error
    return textworld


def _cache_dir() -> Path:
    root = os.environ.get("RESRL_TRL_CACHE") or Path.home() / ".cache" / "resrl_trl"
    return Path(root) / "textworld"


def _clean(text: str) -> str:
    """A game reply without the status line TextWorld appends (``> -= Room =-score/moves``) and blank runs."""
    text = text.split("\n>")[0]
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def build_game(seed: int, rooms: int, objects: int, quest_length: int, folder: Path | None = None) -> Path:
    """The TextWorld game for these settings (built once, then read from the cache folder)."""
    textworld = _textworld()
    from textworld.generator import compile_game, make_game

    folder = folder or _cache_dir()
    path = folder / f"game_r{rooms}_o{objects}_q{quest_length}_s{seed}.z8"
    ready = path.with_suffix(".ready")  # written last: a build cut short is built again
    if ready.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    options = textworld.GameOptions()
    options.seeds, options.nb_rooms, options.nb_objects, options.quest_length = seed, rooms, objects, quest_length
    options.path, options.force_recompile = str(path), True
    compile_game(make_game(options), options)  # the game file and its metadata (.json) beside it
    ready.touch()
    return path


def _opening(path: Path) -> tuple[str, str]:
    """``(objective, first room description)`` of a game."""
    textworld = _textworld()
    env = textworld.start(str(path), request_infos=textworld.EnvInfos(objective=True))
    try:
        state = env.reset()
        objective = state["objective"]
        feedback = state.feedback
        start = feedback.find(objective)
        room = feedback[start + len(objective) :] if start >= 0 else feedback
        return objective, _clean(room)
    finally:
        env.close()


def text_game_tasks(
    count: int, seed: int = 0, split: str = "train", rooms: int = 1, objects: int = 3, quest_length: int = 1
) -> Dataset:
    """``count`` games for ``split`` (``train`` or ``test``, from separate seed streams), as rows with ``prompt``
    (the objective and the first room), ``task`` (the game file) and ``environment``."""
    if split not in ("train", "test"):
        raise ValueError(f"text game split must be 'train' or 'test', got {split!r}")
    base = (seed * 1_000_003 + (0 if split == "train" else 500_009)) % (2**31)
    rows = []
    for index in range(count):
        path = build_game(base + index, rooms, objects, quest_length)
        objective, room = _opening(path)
        prompt = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Objective: {objective}\n\n{room}"},
        ]
        rows.append({"prompt": prompt, "task": str(path), "environment": TEXT_GAME_ENVIRONMENT, "source": path.stem})
    return Dataset.from_list(rows)


class TextGameEnvironment(ToolEnvironment):
    """One rollout's game. ``reset`` opens the row's game file (``task``); the one tool is :meth:`act`."""

    max_commands = 30

    def reset(self, task: str, **row: Any) -> None:
        textworld = _textworld()
        self._start_episode()
        if getattr(self, "_game", None) is not None:
            self._game.close()
        self._game = textworld.start(task, request_infos=textworld.EnvInfos(won=True, lost=True))
        self._game.reset()
        self._won = self._over = False

    def act(self, command: str) -> str:
        """Type one command into the game and read its reply.

        Args:
            command: The command, e.g. "go north", "take the key" or "open the box".
        """
        return self._run_call("act", {"command": command}, lambda: self._step(command))

    def _step(self, command: str) -> str:
        if self._over:
            return "The game is over."
        if len(self.calls) > self.max_commands:
            self._over = True
            return f"The game is over: {self.max_commands} commands were allowed."
        state, _, done = self._game.step(str(command))
        self._won, self._over = bool(state["won"]), bool(done)
        reply = _clean(state.feedback)
        return reply + ("\n\nYou won." if self._won else "")

    def _check(self, messages: list[dict[str, Any]]) -> float:
        return float(self._won)
