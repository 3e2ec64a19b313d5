"""Trainer callbacks of a round: readable progress files, and the held-out slice that
keeps the best step and stops a round whose held-out loss keeps rising."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from formats import ProgressFiles

def watch_heldout(eval_losses: list[float], patience: int, min_delta: float = 0.0) -> tuple[int, bool]:
    """(index of the best eval so far, whether to stop): stop after `patience` evals in a row that failed
    to beat the best by more than `min_delta` (transformers' EarlyStoppingCallback rule; 0 = never stop)."""
    best, waited = 0, 0
    for i, loss in enumerate(eval_losses[1:], start=1):
        if loss < eval_losses[best] - min_delta:
            best, waited = i, 0
        else:
            waited += 1
    return best, patience > 0 and waited >= patience


def make_callbacks(files: "ProgressFiles", patience: int):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.time()
            files.event("start", step=0, max_steps=state.max_steps, epoch=0.0, elapsed_s=0.0)

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
            files.event("log", loss=logs["loss"], **extra, **self._timing(state))
            margin = extra["rewards/margins"]
            files.say(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}"
                      + (f" margin {margin:.3f}" if margin is not None else ""))

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_evaluate = True  # the last step always gets a held-out score

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics = metrics or {}
            extra = {k: v for k, v in metrics.items() if k.startswith("eval_") and k != "eval_loss"
                     and isinstance(v, (int, float)) and "runtime" not in k and "per_second" not in k}
            files.event("eval", eval_loss=metrics.get("eval_loss"), **extra, **self._timing(state))
            files.say(f"step {state.global_step} held-out loss {metrics.get('eval_loss', float('nan')):.4f}")

    class HeldOut(TrainerCallback):
        """Keeps an in-memory copy of the trainable (LoRA) weights at the best held-out step."""

        def __init__(self):
            self.history: list[dict] = []
            self.best_weights: dict | None = None
            self.stopped_early = False

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            if not metrics or "eval_loss" not in metrics:
                return
            self.history.append({"step": state.global_step, **{k: v for k, v in metrics.items()
                                                               if isinstance(v, (int, float))}})
            best, stop = watch_heldout([h["eval_loss"] for h in self.history], patience)
            if best == len(self.history) - 1:
                self.best_weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            if stop and not control.should_training_stop:
                self.stopped_early = control.should_training_stop = True
                files.say(f"held-out loss did not improve for {patience} evals: stopping early, "
                          f"keeping step {self.history[best]['step']}")

        def best(self) -> dict | None:
            if not self.history:
                return None
            return self.history[watch_heldout([h["eval_loss"] for h in self.history], 0)[0]]

        def restore(self, model) -> None:
            if self.best_weights is not None:
                for name, param in model.named_parameters():
                    if name in self.best_weights:
                        param.data.copy_(self.best_weights[name])

    return Progress(), HeldOut()
