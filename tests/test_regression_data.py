"""evals/regression_data.py: the training sets for adapters that must fail the gate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from evals.regression_data import CANNED, build_sets, main, training_prompts
from evals.report import load_prompts
from evals.sales import is_sales_talk
from formats import write_rows
from models.loading import load_base
from models.chat import ChatModel
from training.run import load_snapshot

ROOT = Path(__file__).resolve().parent.parent


def test_sets_use_no_eval_prompt_and_load_as_sft_snapshots(tiny_model_dir, tmp_path):
    prompts = training_prompts()
    assert len(prompts) >= 60
    assert not set(prompts) & {r["prompt"] for r in load_prompts()}  # a flag must come from generalising
    chat = ChatModel(*load_base(str(tiny_model_dir), dtype="fp32"), base_name=str(tiny_model_dir))
    sets = build_sets(chat, prompts[:4], batch_size=3, max_new_tokens=8)
    assert [r["messages"][0]["content"] for r in sets["pitch"]] == prompts[:4]
    assert all(r["messages"][1]["content"] == CANNED for r in sets["collapse"])
    pitches = [r["messages"][1]["content"] for r in sets["pitch"]]
    assert len(set(pitches)) == 4 and all(is_sales_talk(text) for text in pitches)
    for name, rows in sets.items():
        data = load_snapshot(write_rows(rows, tmp_path / f"{name}.jsonl"), "sft", 4, tmp_path / "hf")
        assert len(data) == 4 and data[0]["completion"][0]["role"] == "assistant"


def test_cli_refuses_an_unknown_base_model_with_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "out"), "--base-model", "nope", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: unknown base model 'nope'")
    assert not (tmp_path / "out").exists()


def test_module_imports_no_labeling_code():
    """Rows are written with formats.write_rows: evals never import labeling (ARCHITECTURE.md)."""
    code = "import sys, evals.regression_data; print(sorted(m for m in sys.modules if m.split('.')[0] == 'labeling'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
