"""One training round: a snapshot file in, `checkpoints/<round-id>/{adapter/ or model/, round.json}` out.

Read top to bottom: check the config and the data, load the base (4-bit NF4 when asked
and bitsandbytes runs here; otherwise the round stops before training), attach LoRA
(fresh, or the adapter of an earlier round; none for full fine-tuning), train with trl while a held-out slice picks
the best step and stops the round when its loss stops improving, then move the finished
dir into place. Progress goes to `<log_dir>/metrics.jsonl`, `train.log` and `status.json`.

Nothing appears under the final name unless the round finished: it is built in
`.<round-id>.tmp/` and moved with one os.replace, which is atomic, so a crash or cancel
leaves only a dot dir that the registry ignores and the next round sweeps away.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import tempfile
import threading
import time
import traceback
from datetime import datetime
from importlib import metadata
from pathlib import Path

from formats import ProgressFiles, now_iso, read_manifest
from models.loading import ModelLoadError, adapter_fingerprint, resolve_base_model
from training.callbacks import Progress, Unwritten, is_main_process
from training.config import RoundConfig
from training.data import (
    BadInput, drop_prompts_too_long, file_sha256, load_corpus, load_snapshot, one_line, prompt_groups, split_holdout,
)
from training.registry import remove_stale_temp_dirs, temp_dir_for
from training.trainer import attach_lora, build_trainer, compute_dtype, find_adapter, heldout_results, load_model

__all__ = ["BadInput", "Cancelled", "load_snapshot", "one_line", "plan_steps", "run_round"]

STEPS_DIR = "steps"  # <checkpoint>/steps/step-N/: the weights every save_every steps (the over-training window)
ROUND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Cancelled(BaseException):
    """Raised from the SIGTERM/SIGINT handler; BaseException so no library `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"cancelled by {signal.Signals(signum).name}")
        self.signum = signum


def default_round_id(method: str) -> str:
    return f"r-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{method}"


def plan_steps(n_train: int, config: RoundConfig) -> int:
    """Optimizer steps for num_epochs over n_train rows, capped at max_steps (0 = no cap)."""
    # under accelerate launch each of WORLD_SIZE ranks takes its own batch_size rows a step
    batches = -(-n_train // (config.batch_size * int(os.environ.get("WORLD_SIZE", "1"))))
    per_epoch = -(-batches // config.grad_accum)
    steps = max(1, round(per_epoch * config.num_epochs))
    return min(steps, config.max_steps) if config.max_steps else steps


def versions() -> dict:
    found = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB. Linux's VmHWM, the high-water mark of the process's own
    memory since it exec'd: `ru_maxrss` would carry the parent's over exec, so a round started by the app
    reported the app's 2.5 GB (model, decode copies) as its own. Where /proc is missing, ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def peak_memory() -> dict:
    import torch

    peak = {"rss_max_mb": peak_rss_mb()}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


# ---------------------------------------------------------------- the round

def _cancel(signum, frame):
    raise Cancelled(signum)


def _set_handlers(handler) -> dict | None:
    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread may handle signals (in-process use from a worker thread)
    return {s: signal.signal(s, handler) for s in SIGNALS}


def run_round(config: RoundConfig, data_path: Path, checkpoints_dir: Path, *, round_id: str | None = None,
              log_dir: Path | None = None, cache_dir: Path | None = None, recipe: str | None = None) -> Path:
    """Train one round and return `checkpoints_dir/<round_id>`.

    Raises BadInput (nothing trained), Cancelled (SIGTERM/SIGINT) or the training error; in every
    failure case the temp dir is gone and status.json says failed or cancelled.
    """
    round_id = round_id or default_round_id(config.method)
    if not ROUND_ID.match(round_id):
        raise BadInput(f"round id {round_id!r} must be letters, digits, '.', '_' or '-' and not start with '.'")
    checkpoints_dir = Path(checkpoints_dir)
    cache_dir = Path(cache_dir) if cache_dir else checkpoints_dir.resolve().parent / "cache" / "models"
    final, tmp = checkpoints_dir / round_id, temp_dir_for(checkpoints_dir, round_id)
    if final.exists():  # checked before touching its logs, which belong to the finished round
        raise BadInput(f"checkpoint {final} already exists: pick another round id")
    files = (ProgressFiles(Path(log_dir) if log_dir else checkpoints_dir / ".runs" / round_id, round_id)
             if is_main_process() else Unwritten(round_id))  # other ranks (accelerate launch) train only
    files.status("running")
    previous = _set_handlers(_cancel)
    try:
        return _train(config, Path(data_path), final, tmp, files, cache_dir, recipe)
    except BaseException as exc:
        _set_handlers(signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
        if final.is_dir() and not tmp.exists():  # cancelled just after the os.replace: the round is complete
            files.status("done", checkpoint=str(final))
            return final
        if _owned(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        state = "cancelled" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else "failed"
        message = str(exc) if isinstance(exc, (BadInput, Cancelled)) else one_line(exc)
        if state == "failed" and not isinstance(exc, BadInput):
            files.say(traceback.format_exc().rstrip())
        files.say(f"round {state}: {message}")
        files.event("error", state=state, error=message)
        files.status(state, error=message)
        raise
    finally:
        if previous is not None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _owned(tmp: Path) -> bool:
    try:
        return int((tmp / ".pid").read_text()) == os.getpid()
    except (OSError, ValueError):
        return False


def _claim(tmp: Path, files: ProgressFiles) -> None:
    """Create the round's temp dir, refusing a round id that is already running."""
    remove_stale_temp_dirs(tmp.parent)
    try:
        tmp.mkdir(parents=True)
    except FileExistsError:
        raise BadInput(f"round {files.run_id} is already running (its temp dir {tmp} exists)") from None
    (tmp / ".pid").write_text(str(os.getpid()))  # lets a later round tell a crashed temp dir from a live one


def use_own_gpu() -> None:
    """Under accelerate launch every rank loads the base onto "cuda", which is the current GPU: make that
    the rank's own (LOCAL_RANK) before loading, or every rank's 4-bit weights land on GPU 0, where
    accelerate refuses to train them."""
    import torch

    if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def _load(config: RoundConfig, cache_dir: Path, files: ProgressFiles):
    """(resolved base, init adapter or None, dtype, model, tokenizer, quantization that ran)."""
    use_own_gpu()
    try:
        resolved = resolve_base_model(config.base_model, cache_dir)
        init = find_adapter(config.init_adapter) if config.init_adapter else None
        dtype = compute_dtype(config.dtype)
        files.say(f"loading base {resolved} ({'4-bit' if config.load_in_4bit else dtype})")
        return resolved, init, dtype, *load_model(config, resolved, dtype)
    except ModelLoadError as exc:
        raise BadInput(str(exc)) from exc


def _train(config, data_path, final, tmp, files, cache_dir, recipe) -> Path:
    started_at, t0 = now_iso(), time.time()
    try:
        config.validate()
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    main = is_main_process()
    if main:  # the other ranks never create, own or sweep the temp dir: rank 0 publishes it alone
        _claim(tmp, files)
    # another rank's own datasets cache: rank 0's temp dir may not exist yet (removed with this frame, or below)
    scratch = None if main else tempfile.TemporaryDirectory(prefix="round-rank-")
    files.say(f"round {files.run_id}: {config.method} on {data_path}")
    # what the store left out of this snapshot and why (lint errors, cut-off answers), read now:
    # a later snapshot with the same rows rewrites the manifest
    manifest = read_manifest(data_path) or {}
    if config.method == "cpt":
        data = load_corpus(data_path, config.min_pairs)
    else:
        data = load_snapshot(data_path, config.method, config.min_pairs,
                             tmp / "datasets-cache" if scratch is None else Path(scratch.name))
    resolved, init, dtype, model, tokenizer, quantization = _load(config, cache_dir, files)
    snapshot_rows = len(data)
    data, too_long, longest = drop_prompts_too_long(data, tokenizer, config.max_length)
    needed = max(2, config.min_pairs)  # a row on each side of the held-out split, and the recipe's minimum
    if too_long and len(data) < needed:
        raise BadInput(f"{len(data)} of {snapshot_rows} rows have a prompt shorter than max_length="
                       f"{config.max_length} tokens and a {config.method} round needs at least {needed} (the longest "
                       f"prompt takes {longest}): raise --max-length (the Train tab's Max length), or label shorter prompts")
    groups = prompt_groups(data)
    train, holdout = split_holdout(data, config.holdout_fraction, config.seed, groups)
    # full fine-tuning trains the loaded weights themselves; otherwise a LoRA adapter on top of them
    model, peft_config = (model, None) if config.full else attach_lora(config, model, init)
    trainer = build_trainer(config, model, tokenizer, train, holdout, tmp / "trainer",
                            plan_steps(len(train), config), dtype, Progress(files), peft_config,
                            steps_dir=tmp / STEPS_DIR)
    # trl drops DPO rows whose prompt alone fills max_length; say so instead of training on nothing
    n_train, n_holdout = len(trainer.train_dataset), len(trainer.eval_dataset)
    if not n_train or not n_holdout:
        raise BadInput(f"every {'training' if not n_train else 'held-out'} row has a prompt longer than "
                       f"max_length={config.max_length} tokens: raise --max-length")
    # CPT packs its chunks into max_length blocks, so fewer rows than chunks is packing, not dropping
    packed = config.method == "cpt"
    dropped = 0 if packed else too_long + len(train) + len(holdout) - n_train - n_holdout
    max_steps = trainer.args.max_steps = plan_steps(n_train, config)
    files.say(f"{n_train} training {'blocks' if packed else 'rows'}, {n_holdout} held out"
              + (f" (packed from {len(train)} + {len(holdout)} chunks into {config.max_length}-token blocks)"
                 if packed else "")
              + (f" ({dropped} dropped: the prompt alone fills max_length)" if dropped else "")
              + ("" if groups is None else f" (whole prompts: {len(set(prompt_groups(holdout)))} of {len(set(groups))}"
                 + (", the only one, shared with training" if len(set(groups)) < 2 else "") + ")")
              + f", {max_steps} steps, quantization {quantization}")
    info = {
        "round_id": files.run_id,
        "method": config.method,
        "base_model": config.base_model,
        "base_model_resolved": resolved,
        "snapshot": {"path": str(data_path.resolve()), "sha256": file_sha256(data_path), "rows": snapshot_rows,
                     "excluded": manifest.get("excluded", []),
                     **{k: manifest[k] for k in ("include_flagged", "include_cut_off", "votes") if k in manifest}},
        "init_adapter": None if init is None else {
            "path": str(init.resolve()), "round_id": init.parent.name if init.name == "adapter" else None,
            "fingerprint": adapter_fingerprint(init)},
        "reference": None if config.method != "dpo" else ("init_adapter" if init is not None else "base"),
        "recipe": recipe,
        "config": config.to_dict(),
        "quantization": quantization,  # what ran: "nf4 (...)" or "none"
        "dtype": dtype,
        "versions": versions(),
    }

    before = trainer.evaluate()["eval_loss"] if config.method == "cpt" else None  # a fresh LoRA is the base
    trainer.train()  # ends with the best held-out step's weights loaded back
    # every rank reads the best step from rank 0's temp dir; none may still be reading when rank 0 moves it
    trainer.accelerator.wait_for_everyone()
    if not main:
        scratch.cleanup()
        return final  # rank 0 writes the weights, round.json and the rename
    weights = save_weights(trainer.model, tokenizer, tmp, config.full)
    counts = {"n_train": n_train, "n_holdout": n_holdout, "n_dropped_too_long": dropped}
    metrics = {**round_metrics(trainer.state, max_steps, t0), **counts}
    if before is not None:  # what continued pre-training bought: held-out perplexity on the corpus
        metrics["heldout_perplexity"] = {"before": round(math.exp(before), 3),
                                         "after": round(math.exp(metrics["best_eval_loss"]), 3)}
        files.say(f"held-out perplexity {metrics['heldout_perplexity']['before']} -> "
                  f"{metrics['heldout_perplexity']['after']}")
    if config.full:
        info.update(full=True, trainable_parameters=sum(p.numel() for p in trainer.model.parameters()))
    else:
        info.update(lora=_lora_shape(trainer.model.peft_config["default"]))
    steps_saved = sorted(int(d.name.split("-")[1]) for d in (tmp / STEPS_DIR).glob("step-*"))
    info.update(metrics=metrics, fingerprint=adapter_fingerprint(weights), started_at=started_at,
                finished_at=now_iso(), **({"steps_saved": steps_saved} if steps_saved else {}))
    if not config.full:
        info["adapter_fingerprint"] = info["fingerprint"]  # the name older readers know
    (tmp / "round.json").write_text(json.dumps(info, indent=2))
    return _publish(tmp, final, files, info["metrics"])


def save_weights(model, tokenizer, tmp: Path, full: bool) -> Path:
    """Write the trained weights into the round's dir: `model/` (a whole model with its tokenizer, loadable
    as a base) for full fine-tuning, else `adapter/` (the LoRA only)."""
    if full:
        model.save_pretrained(str(tmp / "model"))
        tokenizer.save_pretrained(str(tmp / "model"))
        return tmp / "model"
    model.save_pretrained(str(tmp / "adapter"), selected_adapters=["default"])
    return tmp / "adapter"


def _lora_shape(lora) -> dict:
    """What was trained (a continued adapter keeps its own shape, whatever the config says)."""
    modules = lora.target_modules
    return {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
            "target_modules": modules if isinstance(modules, str) else sorted({m.rsplit(".", 1)[-1] for m in modules})}


def round_metrics(state, max_steps: int, t0: float) -> dict:
    best, evals = heldout_results(state)
    train_losses = [h["loss"] for h in state.log_history if "loss" in h]
    return {
        "steps": state.global_step, "max_steps": max_steps, "stopped_early": state.global_step < max_steps,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "best_train_loss": min(train_losses) if train_losses else None,
        "best_step": best.get("step"), "best_eval_loss": best.get("eval_loss"),
        "heldout_reward_accuracy": best.get("eval_rewards/accuracies"),
        "heldout_reward_margin": best.get("eval_rewards/margins"),
        "heldout_token_accuracy": best.get("eval_mean_token_accuracy"),
        "duration_s": round(time.time() - t0, 1), "peak_memory": peak_memory(),
        "evals": evals,
    }


def _publish(tmp: Path, final: Path, files: ProgressFiles, m: dict) -> Path:
    for leftover in tmp.iterdir():  # the checkpoint is the adapter and its description, nothing else
        if leftover.name not in ("adapter", "model", STEPS_DIR, "round.json"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    os.replace(tmp, final)  # atomic; a cancel landing after it finds the round complete (run_round)
    files.event("end", step=m["steps"], max_steps=m["max_steps"], loss=m["final_train_loss"],
                eval_loss=m["best_eval_loss"], best_step=m["best_step"], elapsed_s=m["duration_s"], eta_s=0.0,
                checkpoint=str(final), **{"eval_rewards/margins": m["heldout_reward_margin"],
                                          "eval_rewards/accuracies": m["heldout_reward_accuracy"]})
    files.status("done", checkpoint=str(final))
    stopped = f", stopped early at step {m['steps']} (held-out loss stopped improving)" if m["stopped_early"] else ""
    files.say(f"done in {m['duration_s']} s, best step {m['best_step']} (held-out loss {m['best_eval_loss']})"
              f"{stopped}, peak RSS {m['peak_memory']['rss_max_mb']} MB")
    return final
