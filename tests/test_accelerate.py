"""A round launched on several processes (`accelerate launch`, docs/accelerate/ddp.yaml): every rank
trains, rank 0 alone writes progress, the weights, round.json and the rename.

The launch is the documented one; ACCELERATE_USE_CPU makes its two processes CPU ranks that talk over
gloo instead of two GPUs over NCCL, so the same DDP code path runs on a machine without GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_publish_one_checkpoint_that_rank_0_alone_wrote(tiny_model_dir, tmp_path):
    data = tmp_path / "dpo.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"question {i}: tell me about the sea"}],
             "chosen": [{"role": "assistant", "content": "The sea is wide and blue."}],
             "rejected": [{"role": "assistant", "content": "Buy now and save 50 percent today!"}]} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, logs, scratch = tmp_path / "checkpoints", tmp_path / "runs" / "r-ddp", tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "docs/accelerate/ddp.yaml"),
         "--num_processes", "2", "--main_process_port", str(free_port()),
         "-m", "training", "run", "--method", "dpo", "--data", str(data), "--out", str(out), "--log-dir", str(logs),
         "--round-id", "r-ddp", "--base-model", str(tiny_model_dir), "--steps", "2", "--no-4bit"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in output  # the two processes really trained as one
    assert done.stdout.count(str(out / "r-ddp")) == 2  # both ranks ran the round to its end

    assert sorted(p.name for p in out.iterdir()) == ["r-ddp"]  # no temp dir left by either rank
    assert (out / "r-ddp" / "round.json").is_file() and (out / "r-ddp" / "adapter" / "adapter_config.json").is_file()
    events = [json.loads(line)["event"] for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("end") == 1 and events.count("log") == 2
    log = (logs / "train.log").read_text()
    assert log.count("step 1/2 ") == 1 and log.count("round r-ddp: dpo") == 1
    assert json.loads((logs / "status.json").read_text())["state"] == "done"
    assert not list(scratch.glob("round-rank-*"))  # rank 1's own datasets cache is gone
