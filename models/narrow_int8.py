"""Int8 weights for the decode loop's narrow steps: a quarter of the bytes to read when few rows decode.

Decoding one or two rows on a CPU is bound by reading the weights: a step of the embedded model
reads 257 MB in bf16, where llama.cpp reads its 94 MB Q4_1 file. torch's weight-only int8 kernel
(`aten._weight_int8pack_mm`: bf16 activations, int8 weights, one scale per output channel) reads
half the bytes of bf16 and ran a 576x1536 layer 2.8x faster than the bf16 matmul at one row, 2.2x
at two, 1.5x at four, and slower from about eight rows on (2 cores). So each base linear layer
keeps its bf16 weight, gains an int8 copy, and picks per call by how many token rows it gets: at
most NARROW_ROWS take int8; prefill and wide batches keep bf16. bench/bench_one_stream.py
measures the whole step.

Only the decode loop's own thread takes the int8 path (`prepare` marks it): `ChatModel.generate`
(evals, data prep) and training stay bf16. The copies are made on that thread too: quantizing is
parallel torch work, and done on another thread it would leave an OpenMP team there that slows
every step of the loop (models/own_thread.py says why).

What it changes: a narrow step's logits carry int8 rounding (per-channel symmetric), so an answer
decoded in a narrow batch can part from the bf16 answer after a while. Teacher-forced over 130 tokens
of the embedded model, int8 steps picked fp32's next token at 93.1% of positions, bf16 steps at
95.4% (tests/test_narrow_int8.py holds int8 within 5 points of bf16). LoRA layers keep their own weights on top
(peft calls the base layer, which is this one). A weight changed in place (an adapter merged into
it) is quantized again on its next narrow call. bf16 models on the CPU only: the kernel has no
fast path for fp32 activations, and a GPU is not bound the same way.
"""

from __future__ import annotations

import threading

NARROW_ROWS = 4  # at most this many token rows per call take the int8 weights
_here = threading.local()  # .on: this thread decodes narrow steps in int8
stats = {"int8_calls": 0}  # for tests and the bench: linear calls that took the int8 weights


class _Int8Copy:
    """One layer's int8 weight and per-output-channel scales, and the bf16 weight version they were made from."""

    __slots__ = ("weight", "scales", "version")

    def __init__(self, weight):
        import torch

        with torch.no_grad():
            w = weight.detach().float()
            scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
            self.weight = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
            self.scales = scales.to(weight.dtype)
        self.version = weight._version


def unsupported(model) -> str | None:
    """Why `model` cannot take the int8 path, or None when it can."""
    import torch

    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return f"torch {torch.__version__} has no weight-only int8 kernel"
    weight = next(model.parameters())
    if weight.device.type != "cpu":
        return f"the model is on {weight.device.type}; int8 decode is for CPU serving"
    if weight.dtype != torch.bfloat16:
        return f"the model is {str(weight.dtype).removeprefix('torch.')}; int8 decode needs bf16"
    return None


def _switching_forward(layer, wide_forward):
    import torch

    def forward(x):
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        if not getattr(_here, "on", False) or not 0 < rows <= NARROW_ROWS or x.dtype != torch.bfloat16 \
                or torch.is_grad_enabled():
            return wide_forward(x)
        copy = layer._int8_copy
        if copy is None or copy.version != layer.weight._version:  # new, or changed in place since
            copy = layer._int8_copy = _Int8Copy(layer.weight)
        stats["int8_calls"] += 1
        out = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, x.shape[-1]), copy.weight, copy.scales)
        if layer.bias is not None:
            out = out + layer.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])

    return forward


def prepare(model) -> int:
    """On the decode loop's thread: give every base linear layer of `model` (the lm_head included) its
    int8 copy and the row-count switch, and turn the int8 path on for this thread. Returns the bytes
    the copies take. Raises ValueError (with `unsupported`'s reason) for a model it cannot serve."""
    reason = unsupported(model)
    if reason:
        raise ValueError(reason)
    import torch

    added = 0
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or "lora_" in name:
            continue  # an adapter's own small layers stay as they are
        if not hasattr(module, "_int8_copy"):
            module.forward = _switching_forward(module, module.forward)
        module._int8_copy = _Int8Copy(module.weight)
        added += module._int8_copy.weight.numel() + module._int8_copy.scales.numel() * 2
    _here.on = True
    return added
