"""`python -m labeling`: export / import / stats, and the export -> datasets -> DPOTrainer round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from formats import GATE_POINTER, write_gate_pointer
from labeling.__main__ import main
from labeling.store import DB_NAME, Store

ROOT = Path(__file__).resolve().parent.parent
MT_BENCH = Path(__file__).resolve().parent.parent / "evals" / "prompts" / "mt_bench_questions.jsonl"
GATE_SET = Path(__file__).resolve().parent.parent / "evals" / "prompts" / "default.jsonl"
ANSWERS = [
    ("What is the capital of France?", "The capital of France is Paris.", "Rain falls on the quiet town."),
    ("Write a short poem about the sea.", "The sea and the sky and the wind.", "Buy now and save 50 percent!"),
    ("Explain what Python is.", "Python is a programming language.", "The quick brown fox jumps."),
    ("Count to five.", "One two three four five.", "The cat sleeps."),
]


@pytest.fixture
def labeled_dir(data_dir) -> Path:
    """A closed database with 4 decisive votes, one edit, one tie and one both_bad."""
    with Store(data_dir) as store:
        for i, (question, good, bad) in enumerate(ANSWERS):
            left_is_good = i % 2 == 0
            cid = store.add_comparison([{"role": "user", "content": question}], *(
                (good, bad) if left_is_good else (bad, good)), "base", "round-1", None, "hash1", {}, "ann")
            store.record_vote(cid, "ann", "a" if left_is_good else "b")
        cid = store.add_comparison([{"role": "user", "content": "Say hello."}], "Hello.", "Hi.", "base", "round-1",
                                   None, "hash1", {}, "ann")
        store.record_vote(cid, "ann", "tie")
        cid = store.add_comparison([{"role": "user", "content": "Why is the sky blue?"}], "Blue.", "Because.",
                                   "base", "round-1", None, "hash1", {}, "ann")
        store.record_vote(cid, "ann", "both_bad", better_answer="Air scatters blue light more than red light.")
    return data_dir


def test_export_dpo_writes_rows_and_prints_lint(labeled_dir, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["export", "--data-dir", str(labeled_dir), "--format", "dpo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 dpo rows" in printed and "lint ok" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"prompt": [{"role": "user", "content": ANSWERS[0][0]}],
                       "chosen": [{"role": "assistant", "content": ANSWERS[0][1]}],
                       "rejected": [{"role": "assistant", "content": ANSWERS[0][2]}]}
    assert rows[1]["chosen"][0]["content"] == ANSWERS[1][1]  # right-side win: the winner is still chosen


@pytest.mark.parametrize("kind, columns, count", [("sft", {"messages"}, 5),
                                                  ("kto", {"prompt", "completion", "label"}, 11)])
def test_export_sft_and_kto_load_with_datasets(labeled_dir, tmp_path, kind, columns, count):
    from datasets import load_dataset

    out = tmp_path / f"{kind}.parquet"
    assert main(["export", "--data-dir", str(labeled_dir), "--format", kind, "--out", str(out)]) == 0
    dataset = load_dataset("parquet", data_files=str(out), split="train")
    assert set(dataset.column_names) == columns and len(dataset) == count


def test_export_lints_sft_too_and_says_what_a_round_leaves_out(data_dir, tmp_path, capsys):
    pitch = "Red. Buy our premium paint set today for only $9.99 - 50% off, limited time offer at www.paints.com"
    with Store(data_dir) as store:
        for answer in ("Red.", pitch):
            cid = store.add_comparison([{"role": "user", "content": "Name a primary colour."}], answer, "Blue is one.",
                                       "base", "round-1", None, "hash1", {}, "ann")
            store.record_vote(cid, "ann", "a")
    assert main(["export", "--data-dir", str(data_dir), "--format", "sft", "--out", str(tmp_path / "s.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 sft rows" in printed  # the export holds everything; a round would not
    assert "lint NOT ok" in printed and "error: sales_chosen x1" in printed
    assert "leaves out 1 comparisons by default" in printed and "SFT 1 of 2 rows usable" in printed
    assert f"comparisons: {cid}\n" in printed  # the whole id of the pitch's comparison, to exclude it by
    with Store(data_dir) as store:
        store.exclude(cid, "rita", "pitch")
    assert main(["export", "--data-dir", str(data_dir), "--format", "sft", "--out", str(tmp_path / "s.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 sft rows" in printed and "left out 1 votes on 1 comparisons excluded by reviewers (rita)" in printed
    assert "lint ok" in printed


@pytest.mark.parametrize("args, message", [
    (["--format", "dpo", "--out", "x.csv"], "must end in .parquet or .jsonl"),
    (["--format", "dpo", "--out", "x.jsonl", "--data-dir", "/nonexistent/dir"], "no preferences database"),
])
def test_export_bad_input_exits_2_with_one_line(labeled_dir, tmp_path, capsys, args, message):
    argv = ["export", "--data-dir", str(labeled_dir)] + [str(tmp_path / a) if a.startswith("x.") else a for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_export_with_no_votes_exits_2(data_dir, tmp_path, capsys):
    Store(data_dir).close()
    assert main(["export", "--data-dir", str(data_dir), "--format", "dpo", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no rows" in capsys.readouterr().err


def test_import_and_stats(data_dir, tmp_path, capsys):
    # the bundled gate set holds 40 of MT-bench's first turns: those stay out of the queue
    gate = [json.loads(line)["prompt"] for line in GATE_SET.read_text().splitlines()]
    assert main(["import", "--data-dir", str(data_dir), "--file", str(MT_BENCH)]) == 0
    printed = capsys.readouterr().out
    assert "added 40 of 80 prompts" in printed and "left out 40 prompts the promotion gate evaluates on" in printed
    with duckdb.connect(str(data_dir / DB_NAME), read_only=True) as db:
        queued = [json.loads(m)[0]["content"] for (m,) in db.execute("SELECT messages FROM prompts").fetchall()]
    assert len(queued) == 40 and not set(queued) & set(gate)
    assert main(["import", "--data-dir", str(data_dir), "--file", str(MT_BENCH)]) == 0
    assert "added 0 of 80" in capsys.readouterr().out
    # with a gate set of its own (the app's --eval-prompts), the other 40 queue too, and only its prompt stays out
    own_gate = tmp_path / "gate.jsonl"
    own_gate.write_text(json.dumps({"prompt": "  compose an ENGAGING travel blog post about a recent trip to Hawaii, "
                                               "highlighting cultural experiences and must-see attractions."}) + "\n")
    assert main(["import", "--data-dir", str(data_dir), "--file", str(MT_BENCH), "--eval-prompts", str(own_gate)]) == 0
    assert "added 39 of 80" in capsys.readouterr().out  # its one prompt, told apart by case and spacing only
    # without the flag: the set the app last started on this data dir judges with (app.py records it)
    write_gate_pointer(data_dir, own_gate)
    assert main(["import", "--data-dir", str(data_dir), "--file", str(MT_BENCH)]) == 0
    assert f"left out 1 prompt the promotion gate evaluates on ({own_gate})" in capsys.readouterr().out
    own_gate.unlink()  # a recorded set that is gone is not guessed at
    assert main(["import", "--data-dir", str(data_dir), "--file", str(MT_BENCH)]) == 2
    err = capsys.readouterr().err
    assert f"judges rounds with {own_gate}, which is gone: pass the gate's prompt set with --eval-prompts" in err
    (data_dir / GATE_POINTER).unlink()  # the bundled set again
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    assert main(["import", "--data-dir", str(data_dir), "--file", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["stats", "--data-dir", str(data_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompts"] == 79


def test_stats_text(labeled_dir, capsys):
    assert main(["stats", "--data-dir", str(labeled_dir)]) == 0
    printed = capsys.readouterr().out
    assert "votes 6" in printed and "ann: 6" in printed and "left won 50.0% of 4 decisive votes" in printed


def test_commands_exit_2_while_the_app_holds_the_database(data_dir):
    with Store(data_dir):  # stands in for the running app
        for command in (["stats"], ["export", "--format", "dpo", "--out", str(data_dir / "x.jsonl")],
                        ["import", "--file", str(MT_BENCH)]):
            done = subprocess.run([sys.executable, "-m", "labeling", *command, "--data-dir", str(data_dir)],
                                  cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 2, done.stderr
            assert "Stop the app" in done.stderr and done.stderr.count("\n") == 1


def test_exported_pairs_train_one_dpo_step(labeled_dir, tmp_path, tiny_model_dir):
    """The contract with training: the export loads with `datasets` and trains with trl's DPOTrainer."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    datasets = {}
    for suffix, loader in ((".jsonl", "json"), (".parquet", "parquet")):
        out = tmp_path / f"pairs{suffix}"
        assert main(["export", "--data-dir", str(labeled_dir), "--format", "dpo", "--out", str(out)]) == 0
        datasets[suffix] = load_dataset(loader, data_files=str(out), split="train")
    assert datasets[".jsonl"].to_list() == datasets[".parquet"].to_list()

    config = DPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2,
                       report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, max_length=64,
                       logging_steps=1, save_strategy="no")
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=config,
        train_dataset=datasets[".parquet"],
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    result = trainer.train()
    assert result.global_step == 1
