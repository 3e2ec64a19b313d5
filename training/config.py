"""One training round's settings: a frozen dataclass with commented defaults, plus YAML recipes.

This is the one spelling of the config. Each field carries its help text and, for numbers,
its bounds in `field(metadata=...)`: `validate()` checks them, `python -m training run`
builds one `--field-name` flag per field from them, and the Train tab builds its inputs
from `knob_fields()`. The defaults are the DPO recipe sized for the embedded 135M model on
2 CPU cores (a round over ~32 pairs takes a few minutes); recipes in training/recipes/*.yaml
list only what differs from them.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path

from formats import write_atomic

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
METHODS = ("dpo", "sft", "cpt")
# trl's DPOConfig.loss_type values that take plain (prompt, chosen, rejected) pairs
DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
SFT_LOSSES = ("nll", "dft")
DTYPES = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class RoundConfig:
    # ---- what to train
    method: str = field(default="dpo", metadata={
        "help": "dpo trains on preference pairs, sft on the chosen answers only, cpt (continued pre-training) "
                "on raw domain text", "choices": METHODS})
    base_model: str = field(default="embedded", metadata={
        "help": "'embedded' (the bundled SmolLM2), a hub id, a local HF model dir or a .gguf file"})
    init_adapter: str | None = field(default=None, metadata={
        "help": "continue training this checkpoint's adapter (checkpoint or adapter dir) instead of a fresh LoRA"})

    # a full copy of the weights per checkpoint: the reference point LoRA and QLoRA are measured against
    full: bool = field(default=False, metadata={
        "help": "full fine-tuning: train every weight (no LoRA, no 4-bit) and write a whole model dir; "
                "serving it costs a second copy of the weights in memory"})

    # ---- LoRA (ignored when init_adapter is set: the adapter keeps its own shape)
    lora_r: int = field(default=16, metadata={
        "help": "LoRA rank", "label": "LoRA rank", "min": 1, "max": 256, "knob": True})
    lora_alpha: int = field(default=32, metadata={
        "help": "LoRA alpha; the update is scaled by alpha / r", "label": "LoRA alpha", "min": 1, "max": 1024,
        "knob": True})
    lora_dropout: float = field(default=0.05, metadata={
        "help": "dropout on the LoRA input", "label": "LoRA dropout", "min": 0.0, "max": 0.9, "knob": True})
    # QLoRA adapts every linear layer but the head
    target_modules: tuple[str, ...] = field(default=("all-linear",), metadata={
        "help": "layers to adapt: comma separated module names, or all-linear"})

    # ---- optimisation
    # LoRA tolerates ~100x trl's full fine-tuning default of 1e-6
    learning_rate: float = field(default=1e-4, metadata={
        "help": "peak learning rate", "label": "Learning rate", "min": 1e-7, "max": 0.1, "knob": True})
    num_epochs: float = field(default=2.0, metadata={
        "help": "passes over the training rows, capped by max_steps", "label": "Epochs", "min": 0.01,
        "max": 1000.0, "knob": True})
    # the cap keeps a big snapshot's round bounded
    max_steps: int = field(default=60, metadata={
        "help": "cap on optimizer steps (0 = the epochs decide)", "label": "Max steps (0 = use epochs)",
        "min": 0, "max": 100_000, "knob": True})
    batch_size: int = field(default=4, metadata={
        "help": "rows per step (per device)", "label": "Batch size", "min": 1, "max": 512, "knob": True})
    grad_accum: int = field(default=1, metadata={
        "help": "gradient accumulation: batches per optimizer step", "min": 1, "max": 512})
    # step time and memory grow with it
    max_length: int = field(default=128, metadata={
        "help": "prompt + answer tokens per row, truncated at the end", "label": "Max length (tokens)",
        "min": 16, "max": 32768, "knob": True})
    seed: int = field(default=42, metadata={"help": "seed of the held-out split, LoRA init and data order",
                                            "min": 0, "max": 2**32 - 1})

    # ---- DPO
    beta: float = field(default=0.1, metadata={
        "help": "DPO beta: higher stays closer to the reference (the base, or init_adapter when continuing)",
        "label": "DPO beta", "min": 0.001, "max": 10.0, "knob": True})
    loss_type: str = field(default="sigmoid", metadata={
        "help": f"trl loss: for dpo one of {', '.join(DPO_LOSSES)}; for sft one of {', '.join(SFT_LOSSES)}",
        "label": "Loss type", "knob": True})

    # ---- weights
    load_in_4bit: bool = field(default=True, metadata={
        "help": "NF4 4-bit base weights via bitsandbytes (QLoRA); a round that asks for it and cannot run it "
                "stops before training", "label": "Load the base in 4-bit (QLoRA)", "knob": True})
    # recomputes activations in the backward pass: ~30% slower steps, far less memory on big models
    gradient_checkpointing: str = field(default="auto", metadata={
        "help": "recompute activations instead of keeping them: auto = on for 4-bit (QLoRA) rounds and "
                "above 1B parameters",
        "choices": ("auto", "on", "off")})
    # bf16 is emulated, and slow, on most CPUs
    dtype: str = field(default="auto", metadata={
        "help": "compute dtype; auto = bf16 on a bf16 GPU, else fp32", "choices": DTYPES})

    # ---- held-out slice, best step and early stopping
    min_pairs: int = field(default=4, metadata={
        "help": "refuse snapshots with fewer rows than this", "min": 1, "max": 1_000_000})
    holdout_fraction: float = field(default=0.1, metadata={
        "help": "share of rows held out for eval_loss (at least 1 row)", "min": 0.01, "max": 0.9})
    eval_every: int = field(default=5, metadata={
        "help": "score the held-out slice every N steps (and at the last step); the best one is kept",
        "min": 1, "max": 100_000})
    # the over-training window (bench/bench_window.py) needs the weights of every few steps, not only the best
    save_every: int = field(default=0, metadata={
        "help": "also keep the trained weights every N steps under <checkpoint>/steps/step-N/ (0 = only the best)",
        "min": 0, "max": 100_000})
    early_stopping_patience: int = field(default=2, metadata={
        "help": "stop after this many held-out evals without a better eval_loss (0 = never)",
        "min": 0, "max": 1000})

    def with_overrides(self, **overrides) -> "RoundConfig":
        """A copy with the given fields replaced; None values are skipped (unset CLI flags)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "target_modules" in changes:
            changes["target_modules"] = _as_modules(changes["target_modules"])
        for name, value in changes.items():
            if field_type(name) is float and type(value) is int:
                changes[name] = float(value)  # YAML and people write `num_epochs: 2`
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    def validate(self) -> "RoundConfig":
        """Raise ValueError naming each bad field and what is allowed; returns self for chaining."""
        problems = [p for f in dataclasses.fields(self) if (p := _check(f, getattr(self, f.name)))]
        losses = DPO_LOSSES if self.method == "dpo" else SFT_LOSSES
        if self.method in METHODS and self.loss_type not in losses:
            problems.append(f"loss_type for {self.method} must be one of {', '.join(losses)}, got {self.loss_type!r}")
        if not str(self.base_model).strip():
            problems.append("base_model must not be empty")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            problems.append("target_modules must be a non-empty list of module names (or 'all-linear')")
        if self.full and self.load_in_4bit:
            problems.append("full fine-tuning trains unquantized weights: add --no-4bit (load_in_4bit: false)")
        if self.full and self.init_adapter:
            problems.append("full fine-tuning starts from the base weights: drop init_adapter")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        return self


@functools.cache
def _type_hints() -> dict:
    return typing.get_type_hints(RoundConfig)  # resolves the string annotations of `from __future__`


def field_type(name: str) -> type:
    """The plain type of a field: int, float, bool or str (tuples and optionals give their item type)."""
    hint = _type_hints()[name]
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return args[0] if args else hint


def _check(f: dataclasses.Field, value) -> str | None:
    """What is wrong with one field's value by its metadata (choices, type and bounds), or None."""
    meta, kind = f.metadata, field_type(f.name)
    if "choices" in meta and value not in meta["choices"]:
        return f"{f.name} must be one of {', '.join(meta['choices'])}, got {value!r}"
    if kind is bool and not isinstance(value, bool):
        return f"{f.name} must be true or false, got {value!r}"
    if kind not in (int, float):
        return None
    is_number = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    low, high = meta.get("min"), meta.get("max")
    if is_number and not isinstance(value, bool) and (low is None or value >= low) and (high is None or value <= high):
        return None
    what = "an integer" if kind is int else "a number"
    return f"{f.name} must be {what} from {low} to {high}, got {value!r}"


def _as_modules(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(m.strip() for m in value.split(",") if m.strip())
    return tuple(value)


def knob_fields() -> list[dataclasses.Field]:
    """The fields an admin edits in the Train tab, in declaration order.

    Each has metadata "help" and "label"; numbers also "min" and "max" (inclusive).
    """
    return [f for f in dataclasses.fields(RoundConfig) if f.metadata.get("knob")]


# ---------------------------------------------------------------- recipes

def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    named = RECIPES_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ValueError(f"unknown recipe {name_or_path!r}: expected a .yaml file or one of {known}")


def load_recipe(name_or_path: str) -> RoundConfig:
    """A RoundConfig from training/recipes/<name>.yaml or a YAML file path, validated."""
    import yaml

    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"recipe {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a mapping of config fields")
    return RoundConfig().with_overrides(**data).validate()


def write_recipe(config: RoundConfig, path: Path) -> Path:
    """Write the full config as a YAML recipe (atomically), loadable by load_recipe / --recipe."""
    import yaml

    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"{path}: a recipe file must end in .yaml")
    return write_atomic(path, yaml.safe_dump(config.validate().to_dict(), sort_keys=False).encode())


def default_recipe(method: str, full: bool = False) -> str:
    """The recipe a method starts from: `<method>_full` for full fine-tuning (its own learning rate, no 4-bit)."""
    method = method if method in METHODS else "dpo"
    return f"{method}_full" if full else f"{method}_qlora"
