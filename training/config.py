"""One training round's settings: a frozen dataclass with commented defaults, plus YAML recipes.

The defaults are the DPO recipe sized for the embedded 135M model on 2 CPU
cores: a round over ~32 pairs takes a few minutes. Recipes in
training/recipes/*.yaml only list what differs from these defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
METHODS = ("dpo", "sft")
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
    method: str = "dpo"  # "dpo" (preference pairs) or "sft" (chosen answers only)
    base_model: str = "embedded"  # embedded default, HF hub id, local HF dir or .gguf file
    init_adapter: str | None = None  # continue from this checkpoint's adapter instead of a fresh LoRA

    # ---- LoRA (ignored when init_adapter is set: the adapter keeps its own shape)
    lora_r: int = 16
    lora_alpha: int = 32  # scale = alpha / r
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)  # QLoRA adapts every linear layer but the head

    # ---- optimisation
    learning_rate: float = 1e-4  # LoRA tolerates ~100x trl's full fine-tuning default of 1e-6
    num_epochs: float = 2.0  # passes over the training rows ...
    max_steps: int = 60  # ... capped at this many optimizer steps (0 = no cap), so big snapshots stay bounded
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 128  # prompt + answer tokens, truncated at the end; step time and memory grow with it
    seed: int = 42

    # ---- DPO
    beta: float = 0.1  # higher = stay closer to the reference (the base, or init_adapter when continuing)
    loss_type: str = "sigmoid"  # trl loss name: a DPO loss for dpo, "nll" or "dft" for sft

    # ---- weights
    load_in_4bit: bool = True  # NF4 via bitsandbytes; falls back to plain LoRA if bitsandbytes cannot run
    dtype: str = "auto"  # compute dtype; auto = bf16 on a bf16 GPU, else fp32 (bf16 is emulated, slow, on most CPUs)

    # ---- held-out slice, best step and early stopping
    min_pairs: int = 4  # refuse snapshots with fewer rows than this
    holdout_fraction: float = 0.1  # share of rows held out for eval_loss (at least 1 row)
    eval_every: int = 5  # evaluate the held-out slice every N steps (and at the last step)
    early_stopping_patience: int = 2  # stop after this many evals without a better eval_loss (0 = never)

    def with_overrides(self, **overrides) -> "RoundConfig":
        """A copy with the given fields replaced; None values are skipped (unset CLI flags)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "target_modules" in changes:
            changes["target_modules"] = _as_modules(changes["target_modules"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    def validate(self) -> "RoundConfig":
        """Raise ValueError naming the bad field and what is allowed; returns self for chaining."""
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        losses = DPO_LOSSES if self.method == "dpo" else SFT_LOSSES
        if self.method in METHODS and self.loss_type not in losses:
            problems.append(f"loss_type for {self.method} must be one of {', '.join(losses)}, got {self.loss_type!r}")
        if not str(self.base_model).strip():
            problems.append("base_model must not be empty")
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "eval_every", "min_pairs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.max_length, int) or self.max_length < 16:
            problems.append(f"max_length must be an integer >= 16, got {self.max_length!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            problems.append(f"max_steps must be an integer >= 0 (0 = no cap), got {self.max_steps!r}")
        if not self.num_epochs > 0:
            problems.append(f"num_epochs must be > 0, got {self.num_epochs!r}")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate must be in (0, 1), got {self.learning_rate!r}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not self.beta > 0:
            problems.append(f"beta must be > 0, got {self.beta!r}")
        if not 0 < self.holdout_fraction < 1:
            problems.append(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction!r}")
        if not isinstance(self.early_stopping_patience, int) or self.early_stopping_patience < 0:
            problems.append(f"early_stopping_patience must be an integer >= 0, got {self.early_stopping_patience!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            problems.append("target_modules must be a non-empty list of module names (or 'all-linear')")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        return self


def _as_modules(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(m.strip() for m in value.split(",") if m.strip())
    return tuple(value)


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


def default_recipe(method: str) -> str:
    return {"dpo": "dpo_qlora", "sft": "sft_qlora"}.get(method, "dpo_qlora")

