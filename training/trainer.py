"""From a resolved base model to a trl trainer ready to run: the weights (4-bit NF4 only
where bitsandbytes really runs, never a silent fallback), LoRA (fresh, or an earlier
round's adapter) and trl's DPOTrainer or SFTTrainer, with transformers keeping the best
held-out step and stopping early."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from models.loading import ModelLoadError, load_base, validate_adapter_dir
from training.callbacks import Progress
from training.config import RoundConfig
from training.data import BadInput, one_line

NO_4BIT = "train without it: --no-4bit, or load_in_4bit: false in the recipe"


def compute_dtype(name: str) -> str:
    import torch

    if name != "auto":
        return name
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def load_model(config: RoundConfig, resolved: str, dtype: str):
    """(model, tokenizer, quantization that ran). 4-bit that cannot run raises BadInput saying how to go on.

    A bad base raises ModelLoadError whatever the quantization.
    """
    if not config.load_in_4bit:
        return (*load_base(resolved, dtype=dtype, device="auto"), "none")
    model, tokenizer = load_base_4bit(resolved, dtype)
    return model, tokenizer, f"nf4 (bitsandbytes, double quant, compute {dtype})"


def load_base_4bit(resolved: str, dtype: str):
    try:
        # on a GPU the 4-bit weights must be placed at load time (bitsandbytes quantizes on the device)
        model, tokenizer = load_base(resolved, dtype=dtype, load_in_4bit=True, for_training=True, device="auto")
        probe_4bit(model, tokenizer)
    except ModelLoadError:
        raise
    except Exception as exc:  # bitsandbytes missing, no kernel for this CPU/GPU, a shape it refuses...
        raise BadInput(f"4-bit (bitsandbytes) cannot run here: {one_line(exc)[:300]}; {NO_4BIT}") from exc
    return model, tokenizer


def probe_4bit(model, tokenizer) -> None:
    """Run the two 4-bit paths a round takes before it starts: bitsandbytes may load yet lack a kernel.

    An inference-mode forward (held-out evals) and a train-mode forward with a backward
    (training steps; autograd.grad touches no parameter's .grad).
    """
    import torch

    ids = torch.tensor([[tokenizer.eos_token_id] * 4], device=model.device)
    model.eval()
    with torch.inference_mode():
        model(input_ids=ids)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    model.train()
    try:
        logits = model(inputs_embeds=embeds).logits
        torch.autograd.grad(logits.float().sum(), embeds)
    finally:
        model.eval()


def find_adapter(spec: str) -> Path:
    """Accept a checkpoint dir or its adapter/ dir."""
    path = Path(spec).expanduser()
    if (path / "adapter" / "adapter_config.json").is_file():
        path = path / "adapter"
    validate_adapter_dir(path)
    return path


def attach_lora(config: RoundConfig, model, init: Path | None):
    """(model, peft_config for the trainer): a fresh LoRA from the config, or `init` kept trainable."""
    if init is not None:
        from peft import PeftModel

        try:  # trainable, so the earlier round's adapter keeps learning; for DPO it is also the reference
            return PeftModel.from_pretrained(model, str(init), is_trainable=True), None
        except Exception as exc:
            raise BadInput(f"cannot continue from adapter {init}: {one_line(exc)}") from exc
    from peft import LoraConfig

    modules = list(config.target_modules)
    return model, LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, bias="none",
        target_modules="all-linear" if modules == ["all-linear"] else modules, task_type="CAUSAL_LM",
    )


CHECKPOINTING_ABOVE = 1_000_000_000  # parameters; below it a model's activations fit, and speed wins


def use_checkpointing(config: RoundConfig, model) -> bool:
    """auto: on for QLoRA (4-bit is asked for to save memory, and recomputing activations halves a DPO
    step's peak on the embedded model: 1.89 -> 1.21 GB RSS) and above 1B parameters; off otherwise."""
    if config.gradient_checkpointing != "auto":
        return config.gradient_checkpointing == "on"
    return config.load_in_4bit or sum(p.numel() for p in model.parameters()) > CHECKPOINTING_ABOVE


# trl scores log-probs through the LM head in tiles of (tokens, this many vocabulary columns), never
# materialising all the logits; its default of 32768 columns makes each fp32 temporary of a 4-pair batch
# ~95 MB, and a few live at once. 8192 cut the default DPO round's peak RSS by ~0.4 GB at no measured cost.
LOGPROB_VOCAB_TILE = 8192


def narrow_logprob_tiles() -> None:
    import trl.trainer.utils as trl_utils

    if hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"):  # private in trl 1.x: skip quietly if it moves
        trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = LOGPROB_VOCAB_TILE


def build_trainer(config: RoundConfig, model, tokenizer, train, holdout, out_dir: Path, max_steps: int,
                  dtype: str, progress: Progress, peft_config, steps_dir: Path | None = None):
    """trl's trainer for the method. Every eval_every steps (and at the last) it scores the held-out slice
    and saves the adapter to out_dir; at the end the best one is loaded back, and EarlyStoppingCallback
    ends the round after early_stopping_patience evals without a better eval_loss."""
    import torch
    from transformers import EarlyStoppingCallback, PrinterCallback

    common = dict(
        output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate, max_length=config.max_length, seed=config.seed, logging_steps=1,
        eval_strategy="steps", eval_steps=config.eval_every, save_strategy="steps", save_steps=config.eval_every,
        save_only_model=True, save_total_limit=1,  # the best and the latest: out_dir is deleted with the round
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
        report_to="none", disable_tqdm=True, activation_checkpointing=use_checkpointing(config, model),
        bf16=dtype == "bf16", fp16=False, dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
    )
    if config.method == "dpo":
        from trl import DPOConfig as Args, DPOTrainer as Trainer

        args = Args(**common, beta=config.beta, loss_type=[config.loss_type])
    else:
        from trl import SFTConfig as Args, SFTTrainer as Trainer

        # cpt: raw text, loss on every token, rows packed into max_length blocks (no padding wasted)
        # bfd_split: a chunk longer than max_length is split across blocks; trl's default ("bfd") cuts it off,
        # which threw away ~45% of a corpus of 2000-character chunks at max_length 256
        args = Args(**common, loss_type=config.loss_type, packing=config.method == "cpt", packing_strategy="bfd_split",
                    dataset_text_field="text")
    narrow_logprob_tiles()
    callbacks = [progress]
    if config.save_every and steps_dir is not None:
        callbacks.append(SaveEvery(config.save_every, steps_dir, tokenizer))
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=holdout,
                      processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # Progress prints readable lines instead
    if dtype == "fp32":
        # trl casts QLoRA adapters to bf16 (right on GPUs); on a CPU without native bf16 that doubles the
        # CPU time of a step (measured on the embedded model), so back to fp32 before the optimizer exists
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype == torch.bfloat16:
                param.data = param.data.float()
    return trainer


class SaveEvery(TrainerCallback):
    """Keep the weights of every Nth step (`steps_dir/step-N/`), whatever held-out loss says: the window of
    useful steps is judged afterwards on generated answers (bench/bench_window.py), not on the loss alone."""

    def __init__(self, every: int, steps_dir: Path, tokenizer):
        self.every, self.steps_dir, self.tokenizer = every, Path(steps_dir), tokenizer

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 and model is not None and state.is_world_process_zero:  # rank 0 only
            out = self.steps_dir / f"step-{state.global_step}"
            if getattr(model, "peft_config", None):
                model.save_pretrained(str(out), selected_adapters=["default"])
            else:
                model.save_pretrained(str(out))
                self.tokenizer.save_pretrained(str(out))


def heldout_results(state) -> tuple[dict, list[dict]]:
    """(the best held-out eval, every held-out eval) from a finished trainer's state."""
    evals = [{k: v for k, v in h.items() if isinstance(v, (int, float))}
             for h in state.log_history if "eval_loss" in h]
    best = next((e for e in evals if e["step"] == state.best_global_step), {})
    return best, evals
