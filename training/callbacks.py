"""The round's Trainer callback that writes readable progress: `start`, `log` and `eval` events
(metrics.jsonl, read by the Train tab) and one line per step in train.log.

Keeping the best held-out step and stopping early are transformers' own
(`load_best_model_at_end`, `EarlyStoppingCallback`; see training/trainer.py).

Under `accelerate launch` (or torchrun) every GPU runs the whole round; only the main process
writes progress, so a rank other than 0 gets `Unwritten` files instead (see training/run.py).
"""

from __future__ import annotations

import os
import time

from transformers import TrainerCallback

from formats import ProgressFiles


class Progress(TrainerCallback):
    def __init__(self, files: ProgressFiles):
        self.files = files
        self.t0 = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.time()
        self.files.event("start", step=0, max_steps=state.max_steps, epoch=0.0, elapsed_s=0.0)

    def _timing(self, state) -> dict:
        elapsed = time.time() - self.t0
        left = state.max_steps - state.global_step
        eta = elapsed / state.global_step * left if state.global_step else None
        return dict(step=state.global_step, max_steps=state.max_steps, epoch=round(state.epoch or 0.0, 3),
                    elapsed_s=round(elapsed, 1), eta_s=None if eta is None else round(eta, 1))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return  # eval logs are reported by on_evaluate; skip the final runtime summary
        extra = {k: logs.get(k) for k in ("rewards/margins", "rewards/accuracies", "learning_rate")}
        self.files.event("log", loss=logs["loss"], **extra, **self._timing(state))
        margin = extra["rewards/margins"]
        self.files.say(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}"
                       + (f" margin {margin:.3f}" if margin is not None else ""))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # transformers evaluates at every eval_steps and, with eval_strategy "steps", at the last step too
        metrics = metrics or {}
        extra = {k: v for k, v in metrics.items() if k.startswith("eval_") and k != "eval_loss"
                 and isinstance(v, (int, float)) and "runtime" not in k and "per_second" not in k}
        self.files.event("eval", eval_loss=metrics.get("eval_loss"), **extra, **self._timing(state))
        self.files.say(f"step {state.global_step} held-out loss {metrics.get('eval_loss', float('nan')):.4f}")


def is_main_process() -> bool:
    """Global rank 0, or no launcher at all. Read from the environment that accelerate launch and torchrun
    set before the process starts, so it is known before anything is loaded or written (accelerate's
    PartialState would initialise the process group just to say so)."""
    return int(os.environ.get("RANK", "0")) == 0


class Unwritten:
    """ProgressFiles' writing side for the other ranks: they train, and rank 0 alone reports."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def event(self, event: str, **fields) -> None:
        pass

    def say(self, message: str) -> None:
        pass

    def status(self, state: str, **fields) -> None:
        pass
