"""One training round: a snapshot file in, `checkpoints/<round-id>/{adapter/, round.json}` out.

Read top to bottom: check the data, load the base (4-bit NF4 when it can),
attach LoRA (fresh, or the adapter of an earlier round), train with trl's
DPOTrainer or SFTTrainer while a held-out slice picks the best step and stops
the round when its loss keeps rising, then rename the finished dir into place.
Progress goes to `<log_dir>/metrics.jsonl`, `train.log` and `status.json`.
Nothing appears under the final name unless the round finished: it is built in
`.<round-id>.tmp/` and moved with one os.replace, so a crash or cancel leaves
only a dot dir that the registry ignores and the next round sweeps away.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import threading
import time
import traceback
from datetime import datetime
from importlib import metadata
from pathlib import Path

from formats import ProgressFiles, now_iso
from training.callbacks import make_callbacks
from training.config import RoundConfig
from models.loading import ModelLoadError, adapter_fingerprint, load_base, resolve_base_model, validate_adapter_dir
from training.registry import remove_stale_temp_dirs, temp_dir_for

ROUND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
COLUMNS = {"dpo": ("prompt", "chosen", "rejected"), "sft": ("messages",)}


class BadInput(ValueError):
    """Unusable data, config, base model or adapter: the CLI exits 2 with this one-line message."""


class Cancelled(BaseException):
    """Raised from the SIGTERM/SIGINT handler; BaseException so no library `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"cancelled by {signal.Signals(signum).name}")
        self.signum = signum


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip(": ")


# ---------------------------------------------------------------- data

def _is_messages(value) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def load_snapshot(path: Path, method: str, min_rows: int, cache_dir: Path):
    """The snapshot as a `datasets.Dataset` in trl's conversational format, or BadInput saying why not."""
    import datasets

    path = Path(path)
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix.lower())
    if not path.is_file():
        raise BadInput(f"snapshot file not found: {path}")
    if kind is None:
        raise BadInput(f"snapshot must be a .jsonl or .parquet file, got {path.name}")
    try:
        data = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=str(cache_dir))
    except Exception as exc:  # datasets raises many types for malformed files
        raise BadInput(f"cannot read {path.name}: {one_line(exc)}") from exc
    needed = COLUMNS[method]
    missing = [c for c in needed if c not in data.column_names]
    if missing:
        raise BadInput(f"{path.name} lacks column(s) {', '.join(missing)} needed for {method} "
                       f"(has: {', '.join(data.column_names) or 'none'})")
    if len(data) < min_rows:
        raise BadInput(f"{path.name} has {len(data)} rows; a {method} round needs at least {min_rows}")
    for i, row in enumerate(data.select_columns(list(needed))):
        bad = [c for c in needed if not _is_messages(row[c])]
        if bad:
            raise BadInput(f"{path.name} row {i + 1}: {bad[0]!r} must be a non-empty list of "
                           "{role, content} messages (trl conversational format)")
        if method == "sft" and (len(row["messages"]) < 2 or row["messages"][-1]["role"] != "assistant"):
            raise BadInput(f"{path.name} row {i + 1}: messages must end with an assistant answer to a prompt")
    data = data.select_columns(list(needed))
    if method == "sft":
        # prompt/completion rows make trl compute the loss on the answer only, not on the user's text
        data = data.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                        remove_columns=["messages"])
    return data


def split_holdout(data, fraction: float, seed: int):
    n_holdout = min(len(data) - 1, max(1, round(len(data) * fraction)))
    parts = data.train_test_split(test_size=n_holdout, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- model

def compute_dtype(name: str) -> str:
    import torch

    if name != "auto":
        return name
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def load_model(config: RoundConfig, resolved: str, dtype: str):
    """(model, tokenizer, quantization); 4-bit falls back to plain weights when bitsandbytes cannot run."""
    import torch

    if not config.load_in_4bit:
        return (*load_base(resolved, dtype=dtype), "none")
    try:
        model, tokenizer = load_base(resolved, dtype=dtype, load_in_4bit=True)
        with torch.no_grad():  # bitsandbytes may load yet lack a kernel: find out now, not mid-round
            model(input_ids=torch.tensor([[tokenizer.eos_token_id]], device=model.device))
        return model, tokenizer, f"nf4 (bitsandbytes, double quant, compute {dtype})"
    except Exception as exc:
        model, tokenizer = load_base(resolved, dtype=dtype)  # a bad base raises ModelLoadError here
        return model, tokenizer, f"none (fallback: {one_line(exc)[:200]})"


def find_adapter(spec: str) -> Path:
    """Accept a checkpoint dir or its adapter/ dir."""
    path = Path(spec).expanduser()
    if (path / "adapter" / "adapter_config.json").is_file():
        path = path / "adapter"
    validate_adapter_dir(path)
    return path


def build_trainer(config: RoundConfig, model, tokenizer, train, holdout, out_dir: Path, max_steps: int,
                  dtype: str, callbacks: list, peft_config):
    import torch
    from transformers import PrinterCallback

    common = dict(
        output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate, max_length=config.max_length, seed=config.seed,
        logging_steps=1, eval_strategy="steps", eval_steps=config.eval_every, save_strategy="no",
        report_to="none", disable_tqdm=True, activation_checkpointing=False,  # small models: speed over memory
        bf16=dtype == "bf16", fp16=False, dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
    )
    if config.method == "dpo":
        from trl import DPOConfig as Args, DPOTrainer as Trainer

        args = Args(**common, beta=config.beta, loss_type=[config.loss_type])
    else:
        from trl import SFTConfig as Args, SFTTrainer as Trainer

        args = Args(**common, loss_type=config.loss_type, packing=False)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=holdout,
                      processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # our Progress callback prints readable lines instead
    if dtype == "fp32":
        # trl casts QLoRA adapters to bf16 (right on GPUs); on a CPU without native bf16 that doubles the
        # CPU time of a step (measured on the embedded model), so back to fp32 before the optimizer exists
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype == torch.bfloat16:
                param.data = param.data.float()
    return trainer


# ---------------------------------------------------------------- the round

def default_round_id(method: str) -> str:
    return f"r-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{method}"


def plan_steps(n_train: int, config: RoundConfig) -> int:
    """Optimizer steps for num_epochs over n_train rows, capped at max_steps (0 = no cap)."""
    batches = -(-n_train // config.batch_size)
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


def peak_memory() -> dict:
    import torch

    peak = {"rss_max_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _raise_cancelled(signum, frame):
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
    files = ProgressFiles(Path(log_dir) if log_dir else checkpoints_dir / ".runs" / round_id, round_id)
    files.status("running")
    previous = _set_handlers(_raise_cancelled)
    try:
        return _train(config, Path(data_path), final, tmp, files, cache_dir, recipe)
    except BaseException as exc:
        _set_handlers(signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
        if final.is_dir() and not tmp.exists():  # interrupted right after the rename: complete
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


def _train(config, data_path, final, tmp, files, cache_dir, recipe) -> Path:
    started_at, t0 = now_iso(), time.time()
    try:
        config.validate()
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    remove_stale_temp_dirs(final.parent)
    try:
        tmp.mkdir(parents=True)
    except FileExistsError:
        raise BadInput(f"round {files.run_id} is already running (its temp dir {tmp} exists)") from None
    (tmp / ".pid").write_text(str(os.getpid()))  # lets a later round tell a crashed temp dir from a live one

    files.say(f"round {files.run_id}: {config.method} on {data_path}")
    data = load_snapshot(data_path, config.method, config.min_pairs, tmp / "datasets-cache")
    train, holdout = split_holdout(data, config.holdout_fraction, config.seed)
    try:
        resolved = resolve_base_model(config.base_model, cache_dir)
        init = find_adapter(config.init_adapter) if config.init_adapter else None
        dtype = compute_dtype(config.dtype)
        files.say(f"loading base {resolved} ({'4-bit' if config.load_in_4bit else dtype})")
        model, tokenizer, quantization = load_model(config, resolved, dtype)
    except ModelLoadError as exc:
        raise BadInput(str(exc)) from exc
    peft_config = None
    if init is not None:
        from peft import PeftModel

        try:  # trainable, so the earlier round's adapter keeps learning; for DPO it is also the reference
            model = PeftModel.from_pretrained(model, str(init), is_trainable=True)
        except Exception as exc:
            raise BadInput(f"cannot continue from adapter {init}: {one_line(exc)}") from exc
    else:
        from peft import LoraConfig

        modules = list(config.target_modules)
        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, bias="none",
            target_modules="all-linear" if modules == ["all-linear"] else modules, task_type="CAUSAL_LM",
        )
    progress, heldout = make_callbacks(files, config.early_stopping_patience)
    trainer = build_trainer(config, model, tokenizer, train, holdout, tmp / "trainer",
                            plan_steps(len(train), config), dtype, [progress, heldout], peft_config)
    # trl drops DPO rows whose prompt alone fills max_length; say so instead of training on nothing
    n_train, n_holdout = len(trainer.train_dataset), len(trainer.eval_dataset)
    if not n_train or not n_holdout:
        raise BadInput(f"every {'training' if not n_train else 'held-out'} row has a prompt longer than "
                       f"max_length={config.max_length} tokens: raise --max-length")
    dropped = len(train) + len(holdout) - n_train - n_holdout
    max_steps = trainer.args.max_steps = plan_steps(n_train, config)
    files.say(f"{n_train} training rows, {n_holdout} held out"
              + (f" ({dropped} dropped: prompt longer than max_length)" if dropped else "")
              + f", {max_steps} steps, quantization {quantization}")
    trainer.train()
    heldout.restore(trainer.model)
    trainer.model.save_pretrained(str(tmp / "adapter"), selected_adapters=["default"])

    lora = trainer.model.peft_config["default"]
    train_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    best = heldout.best() or {}
    info = {
        "round_id": files.run_id,
        "method": config.method,
        "base_model": config.base_model,
        "base_model_resolved": resolved,
        "snapshot": {"path": str(data_path.resolve()), "sha256": file_sha256(data_path), "rows": len(data)},
        "init_adapter": None if init is None else {
            "path": str(init.resolve()), "round_id": init.parent.name if init.name == "adapter" else None,
            "fingerprint": adapter_fingerprint(init)},
        "reference": None if config.method != "dpo" else ("init_adapter" if init is not None else "base"),
        "recipe": recipe,
        "config": config.to_dict(),
        "lora": {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,  # what was trained
                 "target_modules": sorted({m.rsplit(".", 1)[-1] for m in lora.target_modules})
                 if not isinstance(lora.target_modules, str) else lora.target_modules},
        "quantization": quantization,
        "dtype": dtype,
        "versions": versions(),
        "metrics": {
            "steps": trainer.state.global_step, "max_steps": max_steps, "stopped_early": heldout.stopped_early,
            "final_train_loss": train_losses[-1] if train_losses else None,
            "best_train_loss": min(train_losses) if train_losses else None,
            "best_step": best.get("step"), "best_eval_loss": best.get("eval_loss"),
            "heldout_reward_accuracy": best.get("eval_rewards/accuracies"),
            "heldout_reward_margin": best.get("eval_rewards/margins"),
            "heldout_token_accuracy": best.get("eval_mean_token_accuracy"),
            "n_train": n_train, "n_holdout": n_holdout, "n_dropped_too_long": dropped,
            "duration_s": round(time.time() - t0, 1), "peak_memory": peak_memory(),
            "evals": heldout.history,
        },
        "adapter_fingerprint": adapter_fingerprint(tmp / "adapter"),
        "started_at": started_at,
        "finished_at": now_iso(),
    }
    (tmp / "round.json").write_text(json.dumps(info, indent=2))
    for leftover in tmp.iterdir():  # the checkpoint is the adapter and its description, nothing else
        if leftover.name not in ("adapter", "round.json"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()

    blocked = threading.current_thread() is threading.main_thread()
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        os.replace(tmp, final)
        _set_handlers(signal.SIG_IGN)  # a SIGTERM pending from here on is dropped: the round is done
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    m = info["metrics"]
    files.event("end", step=m["steps"], max_steps=max_steps, loss=m["final_train_loss"],
                eval_loss=m["best_eval_loss"], best_step=m["best_step"], elapsed_s=m["duration_s"], eta_s=0.0,
                checkpoint=str(final), **{"eval_rewards/margins": m["heldout_reward_margin"],
                                          "eval_rewards/accuracies": m["heldout_reward_accuracy"]})
    files.status("done", checkpoint=str(final))
    files.say(f"done in {m['duration_s']} s, best step {m['best_step']} (held-out loss {m['best_eval_loss']}), "
              f"peak RSS {m['peak_memory']['rss_max_mb']} MB")
    return final
