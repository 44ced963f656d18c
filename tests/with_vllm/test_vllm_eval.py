"""resrl-eval with its vLLM backend, run as users run it (a subprocess, no shim: evaluation never syncs weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from vllm_support import VLLM_CPU_ENV

SETTINGS = ["--dataset", "arithmetic", "--split", "test", "--max_problems", "3", "--num_samples", "4"]
CODE_SETTINGS = ["--dataset", "code_basic", "--split", "test", "--max_problems", "3", "--num_samples", "4"]


def run_eval(
    output_dir: Path, *flags: str, settings: list[str] = SETTINGS, max_tokens: int = 24
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "resrl_trl.evaluation", *settings, "--max_tokens", str(max_tokens), *flags]
    result = subprocess.run(
        [*command, "--output_dir", str(output_dir), "--quiet"],
        env={**os.environ, **VLLM_CPU_ENV, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def completions(output_dir: Path) -> dict[tuple[str, int], str]:
    lines = (output_dir / "samples.jsonl").read_text().splitlines()
    return {(r["problem_id"], r["sample_index"]): r["completion"] for r in map(json.loads, lines)}


def test_eval_with_vllm_base_and_adapter(model_dir, tmp_path):
    # The embedded default (a GGUF) is served from its plain folder; --backend auto picks vLLM and says so.
    base = run_eval(tmp_path / "base", "--backend", "auto")
    assert "sampling with vllm (vLLM is installed)" in base.stderr
    summary = json.loads((tmp_path / "base" / "summary.json").read_text())
    assert summary["num_problems"] == 3 and summary["num_samples"] == 4
    assert set(summary["pass@k"]) == {"1", "2", "4"}
    base_texts = completions(tmp_path / "base")
    assert len(base_texts) == 12 and sum(bool(t.strip()) for t in base_texts.values()) >= 10

    # A LoRA adapter with random (non-zero) weights changes what the model writes: vLLM really serves it. Its rank, 4,
    # is not one vLLM accepts as max_lora_rank: resrl-eval asks for the next one (8).
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(tmp_path / "adapter")
    tuned = run_eval(
        tmp_path / "tuned", "--backend", "vllm", "--model", model_dir, "--adapter", str(tmp_path / "adapter")
    )
    assert "sampling with vllm (asked for with --backend)" in tuned.stderr
    tuned_texts = completions(tmp_path / "tuned")
    assert tuned_texts.keys() == base_texts.keys()
    assert sum(tuned_texts[k] != base_texts[k] for k in base_texts) >= 10

    # Run again with the same arguments: nothing is re-sampled.
    again = run_eval(tmp_path / "base", "--backend", "auto")
    assert "sampling with" not in again.stderr and completions(tmp_path / "base") == base_texts


def test_code_eval_with_vllm(model_dir, tmp_path):
    # model_dir: the embedded model's plain folder, written once in the cache these subprocesses share.
    # code_basic is a code task (--task auto): the embedded model's programs run against the tests in the sandbox.
    # Programs need more tokens than answers; what it writes is scored whatever it is (a program, prose, or a fault).
    code = run_eval(tmp_path / "code", "--backend", "auto", settings=CODE_SETTINGS, max_tokens=160)
    assert "sampling with vllm (vLLM is installed)" in code.stderr
    summary = json.loads((tmp_path / "code" / "summary.json").read_text())
    assert summary["num_problems"] == 3 and summary["num_samples"] == 4 and summary["settings"]["task"] == "code"
    assert set(summary["pass@k"]) == {"1", "2", "4"} and 0 <= summary["avg@4"]["mean"] <= 1
    assert set(summary["diversity"]) == {"distinct_programs", "program_entropy", "distinct_1", "distinct_2"}
    records = [json.loads(line) for line in (tmp_path / "code" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 12 and sum(bool(r["completion"].strip()) for r in records) >= 10
    assert all(r["task_id"].startswith("code_basic/") and r["tests_total"] >= 4 for r in records)
    assert sum(r["fault"] is not None for r in records) == sum(summary["faults"].values())
    assert all(r["correct"] == (r["tests_passed"] == r["tests_total"]) for r in records)
    assert any("```" in r["completion"] and r["program"] != r["completion"] for r in records)  # fenced code found
    texts = completions(tmp_path / "code")

    # Run again with the same arguments: nothing is re-sampled.
    again = run_eval(tmp_path / "code", "--backend", "auto", settings=CODE_SETTINGS, max_tokens=160)
    assert "sampling with" not in again.stderr and completions(tmp_path / "code") == texts
