"""resrl-compare as it runs on GPUs: each training under a launcher, each evaluation a resrl-eval subprocess sampling
with vLLM (here its CPU build), serving each run's adapter as a LoRA adapter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from resrl_trl.compare import main


def test_a_study_evaluates_every_run_with_vllm(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe_config = tmp_path / "recipe.yaml"
    recipe_config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": model_dir,
                "dataset_name": "arithmetic",
                "use_cpu": True,
                "use_peft": True,
                "lora_r": 8,
                "lora_target_modules": ["q_proj", "v_proj"],
                "num_generations": 4,
                "per_device_train_batch_size": 8,
                "max_completion_length": 8,
                "bf16": False,
                "max_steps": 1,
                "save_strategy": "no",
                "report_to": "none",
            }
        )
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            {
                "recipe": "math",
                "recipe_config": str(recipe_config),
                "arms": {"resrl": {"advantage_mode": "resrl"}, "grpo": {"advantage_mode": "grpo"}},
                "comparisons": [["resrl", "grpo"]],
                "evaluations": {
                    "arithmetic": {
                        "dataset": "arithmetic",
                        "max_problems": 3,
                        "num_samples": 2,
                        "max_tokens": 8,
                        "backend": "vllm",
                        "problems_per_call": 3,
                    }
                },
                "primary_metric": "arithmetic/avg@2",
                "seeds": [0],
            }
        )
    )
    out = tmp_path / "study"
    main(["run", "--plan", str(plan), "--output_dir", str(out), "--quiet", "--launcher", sys.executable])
    for run in ("base/untrained", "resrl/seed0", "grpo/seed0"):
        run_dir = out / "runs" / run
        assert json.loads((run_dir / "run.json").read_text())["done"]
        assert "sampling with vllm" in (run_dir / "eval" / "arithmetic" / "eval.log").read_text()
        config = json.loads((run_dir / "eval" / "arithmetic" / "eval_config.json").read_text())
        assert config["adapter"] == (None if run.startswith("base") else str(run_dir / "train"))
        lines = (run_dir / "eval" / "arithmetic" / "samples.jsonl").read_text().splitlines()
        assert len(lines) == 6
    assert (out / "report.md").is_file() and (out / "paired_differences.png").is_file()
    assert Path(json.loads((out / "runs/resrl/seed0/eval/arithmetic/eval_config.json").read_text())["model"]) == Path(
        model_dir
    )
