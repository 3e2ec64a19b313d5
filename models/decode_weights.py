"""The decode loop's own copies of the weights: int8 for narrow steps, oneDNN-packed for the rest.

A CPU decode step is mostly matrix multiplies against the weights, and the layout the weights sit in
decides how fast those run. Each base linear layer keeps its own weight (training, `generate`, peft
and merges read it) and gains copies that only the decode loop's thread reads, picked per call by how
many token rows the call has:

- **int8, at most NARROW_ROWS rows** (a chat, an Arena pair). Decoding one or two rows is bound by
  reading the weights: a step of the embedded model reads 257 MB in bf16, where llama.cpp reads its
  94 MB Q4_1 file. torch's weight-only int8 kernel (`aten._weight_int8pack_mm`: bf16 activations, int8
  weights, one scale per output channel) reads half the bytes of bf16 and ran a 576x1536 layer 2.8x
  faster than the bf16 matmul at one row, 2.2x at two, 1.5x at four, and slower from about eight rows
  on (2 cores). bf16 models only (the kernel has no fast path for fp32 activations); `--no-int8-decode`
  turns it off.
- **oneDNN-packed, every other call** (the shared batch of a team, prefill). `F.linear` hands oneDNN a
  plain row-major weight, which it reorders into its blocked layout on every call. The packed copy is
  reordered once (`mkldnn._reorder_linear_weight`, what inductor's freezing does) and multiplied by
  `mkldnn._linear_pointwise`: the same bf16 products, bit for bit in bf16, read faster. Measured on 2
  cores for a 1536x576 layer at 16 rows: 66.9 -> 48.3 us in bf16, 303 -> 102 us in fp32; a whole
  16-row step of the embedded model: 38.7 -> 28.4 ms (bench/bench_serving.py has the app's figure).
  It costs a second copy of the weights in memory; `--no-packed-decode` turns it off. Layers that read
  the same input (a layer's q, k and v projections; its gate and up projections) share one packed copy,
  their weights stacked, and one product whose slices they take: at 16 rows 62.8 -> 39.4 us for q, k
  and v, 92.9 -> 80.9 us for gate and up, the same bits (at int8's widths stacking gained nothing).

A copy that would leave less than MEMORY_HEADROOM of memory free is not made (`choose` says so on the
start line; the evals' process says so in its log).

Only the thread that prepared a model takes these paths for it (the decode loop's; an eval's, which packs
and does not quantize): `ChatModel.generate` elsewhere and training keep the layer's own weight, and so
does any call with gradients on. The copies
are made on that thread too: reordering and quantizing are parallel torch work, and done on another
thread they would leave an OpenMP team there that slows every step of the loop (models/own_thread.py
says why). A weight changed in place (an adapter merged into it) is copied again on its next call.

What int8 changes: a narrow step's logits carry int8 rounding (per-channel symmetric), so an answer
decoded in a narrow batch can part from the bf16 answer after a while. Teacher-forced over 130 tokens
of the embedded model, int8 steps picked fp32's next token at 93.1% of positions, bf16 steps at
95.4% (tests/test_decode_weights.py holds int8 within 5 points of bf16). LoRA layers keep their own
weights on top (peft calls the base layer, which is this one).
"""

from __future__ import annotations

import threading
from pathlib import Path

NARROW_ROWS = 4  # at most this many token rows per call take the int8 weights
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # read one input (Llama, Mistral, Qwen)
MEMORY_HEADROOM = 2**30  # what the copies must leave free: KV caches, a batch's activations
stats = {"int8_calls": 0, "packed_calls": 0}  # for tests and the bench: linear calls that took each copy


class _Int8Copy:
    """One layer's int8 weight and per-output-channel scales, and the weight version they were made from."""

    __slots__ = ("weight", "scales", "version")

    def __init__(self, weight):
        import torch

        with torch.no_grad():
            w = weight.detach().float()
            scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
            self.weight = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
            self.scales = scales.to(weight.dtype)
        self.version = weight._version

    def nbytes(self) -> int:
        return self.weight.numel() + self.scales.numel() * self.scales.element_size()


class _PackedCopy:
    """Layers that read the same input (one layer, or siblings such as q, k and v): their weights stacked and
    reordered once into oneDNN's blocked layout, one product for all, and the weight versions it was made
    from. The model calls the first sibling first (q before k and v, gate before up): that call always
    computes every sibling's output and leaves the others theirs, keyed on that very input tensor, so a
    sibling called with anything else computes afresh. (Not on the tensor's version too: the inference
    tensors of the decode loop have none; nothing between the siblings' calls writes into their input.)"""

    __slots__ = ("layers", "sizes", "weight", "versions", "waiting")

    def __init__(self, layers):
        self.layers, self.sizes = layers, [layer.out_features for layer in layers]
        self.weight = self.versions = self.waiting = None
        self.packed()

    def packed(self):
        import torch

        versions = tuple(layer.weight._version for layer in self.layers)
        if self.weight is None or versions != self.versions:  # new, or a weight changed in place since
            stacked = torch.cat([layer.weight.detach() for layer in self.layers])
            # 16: the loop's widest batch
            self.weight, self.versions = torch.ops.mkldnn._reorder_linear_weight(stacked, 16), versions
        return self.weight

    def output(self, layer, x):
        import torch

        if len(self.layers) == 1:  # a layer of its own, which may have a bias (siblings have none)
            return torch.ops.mkldnn._linear_pointwise(x, self.packed(), layer.bias, "none", [], "")
        waiting = self.waiting
        if layer is not self.layers[0] and waiting is not None and waiting[0] is x and layer in waiting[1]:
            out = waiting[1].pop(layer)
            if not waiting[1]:
                self.waiting = None
            return out
        parts = torch.ops.mkldnn._linear_pointwise(x, self.packed(), None, "none", [], "").split(self.sizes, dim=-1)
        self.waiting = (x, {other: part for other, part in zip(self.layers, parts) if other is not layer})
        return parts[self.layers.index(layer)]

    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


def _packed_groups(model) -> list[list]:
    """The base linear layers of `model` that read one input (see SIBLINGS), by module: same input width,
    dtype and no bias (so the stacked product needs none)."""
    import torch

    groups = []
    for module in model.modules():
        for names in SIBLINGS:
            layers = [getattr(getattr(module, name, None), "base_layer", getattr(module, name, None)) for name in names]
            if (all(type(layer) is torch.nn.Linear and layer.bias is None for layer in layers)
                    and len({(layer.in_features, layer.weight.dtype) for layer in layers}) == 1):
                groups.append(layers)
    return groups


def int8_unsupported(model) -> str | None:
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


def cpu_bf16_fast() -> bool:
    """Whether oneDNN computes bf16 on this CPU (AVX-512); elsewhere torch emulates it slowly."""
    import torch

    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def packing_unsupported(model) -> str | None:
    """Why `model`'s weights cannot be packed for oneDNN, or None when they can."""
    import torch

    weight = next(model.parameters())
    if weight.device.type != "cpu":
        return f"the model is on {weight.device.type}; packed weights are for CPU serving"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return f"torch {torch.__version__} was built without oneDNN"
    if weight.dtype == torch.bfloat16 and not cpu_bf16_fast():
        return "this CPU has no oneDNN bf16 support (it needs AVX-512)"
    if weight.dtype not in (torch.bfloat16, torch.float32):
        return f"the model is {str(weight.dtype).removeprefix('torch.')}; packing is for bf16 and fp32"
    return None


def _switching_forward(layer, own_forward):
    import torch

    def forward(x):
        # per model and per thread: only the thread that prepared this model reads its copies
        int8, packed = getattr(layer._decode_mode, "int8", False), getattr(layer._decode_mode, "packed", False)
        if not (int8 or packed) or torch.is_grad_enabled() or x.dtype != layer.weight.dtype or not x.dim():
            return own_forward(x)
        rows = x.numel() // x.shape[-1]
        if int8 and 0 < rows <= NARROW_ROWS:
            copy = layer._int8_copy
            if copy is None or copy.version != layer.weight._version:  # new, or changed in place since
                copy = layer._int8_copy = _Int8Copy(layer.weight)
            stats["int8_calls"] += 1
            out = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, x.shape[-1]), copy.weight, copy.scales)
            if layer.bias is not None:
                out = out + layer.bias
            return out.reshape(*x.shape[:-1], out.shape[-1])
        if not packed or not rows:
            return own_forward(x)
        stats["packed_calls"] += 1
        return layer._packed_copy.output(layer, x)

    return forward


def copy_bytes(model, kind: str) -> int:
    """What the `kind` ("int8" or "packed") copies of `model`'s linear weights take."""
    import torch

    weights = [m.weight for m in model.modules() if type(m) is torch.nn.Linear]
    return sum(w.numel() * (1 if kind == "int8" else w.element_size()) for w in weights)


def free_memory(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes of memory this process can still take: what the OS reports available, or less inside a
    container whose memory limit is lower (a Hugging Face Space runs in one, and psutil reports the
    host's memory). The container's use counts without its inactive file cache, which the kernel
    reclaims before it kills (as `docker stats` counts it)."""
    import psutil

    available = psutil.virtual_memory().available
    for limit_file, usage_file, cache_key in (("memory.max", "memory.current", "inactive_file"),  # cgroup v2
                                              ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                                               "total_inactive_file")):  # cgroup v1
        try:
            limit = (cgroup / limit_file).read_text().strip()
            usage = int((cgroup / usage_file).read_text())
            stat = (cgroup / limit_file).with_name("memory.stat").read_text().split("\n")
        except (OSError, ValueError):
            continue
        cache = next((int(line.split()[1]) for line in stat if line.startswith(cache_key + " ")), 0)
        if limit.isdigit():  # "max" (v2) or a near-2**63 number (v1): no limit of its own
            available = min(available, int(limit) - (usage - cache))
        break
    return available


def memory_short(size: int, available: int, flag: str | None = None) -> str | None:
    """Why copies of `size` bytes are not made with `available` bytes free, or None when they fit; `flag`:
    the option that turns them off up front, where there is one."""
    if size <= available - MEMORY_HEADROOM:
        return None
    return (f"they would take {size / 2**30:.1f} GB of the {available / 2**30:.1f} GB free, leaving less than "
            f"{MEMORY_HEADROOM / 2**30:.0f} GB" + (f"; {flag} skips them without this line" if flag else ""))


def choose(chat, int8: bool, packed: bool, available: int | None = None) -> str:
    """Set `chat.int8_decode` / `chat.packed_decode` (read when its decode loop starts) for the copies asked
    for that `chat.model` can take and memory can hold; one line saying what was decided, what it costs, or
    why not. `available`: bytes of memory free (default: what the OS reports now, the model already loaded).

    The copies cost memory in proportion to the model (+50% and +100% of a bf16 model's linear weights):
    nothing for the embedded model, but a 7B model served on a CPU would ask for 21 GB more and the
    OOM killer would end the app mid-start. So a copy that would leave less than MEMORY_HEADROOM free
    is not made, and the line says so; int8 is decided first (the smaller one, and what a lone user's
    steps read)."""
    available = free_memory() if available is None else available
    parts = []
    for name, wanted, unsupported, flag, what in (
            ("int8", int8, int8_unsupported, "--no-int8-decode", f"int8 copies for steps of at most {NARROW_ROWS} rows"),
            ("packed", packed, packing_unsupported, "--no-packed-decode", None)):
        size = copy_bytes(chat.model, name)
        reason = (unsupported(chat.model) or memory_short(size, available, flag)) if wanted else flag
        setattr(chat, f"{name}_decode", reason is None)
        # int8 was decided first: packed copies serve the wider steps beside it, or every step without it
        what = what or ("oneDNN-packed copies for wider steps" if chat.int8_decode else
                        "oneDNN-packed copies for every step")
        if reason is None:
            available -= size
            parts.append(f"{what} (+{size / 2**20:.0f} MB)")
        else:
            parts.append(f"no {name} copies ({reason})")
    return "decode: " + "; ".join(parts)


def prepare(model, int8: bool, packed: bool) -> int:
    """On the thread that will decode (the loop's, an eval's): give every base linear layer of `model` (the
    lm_head included) the copies asked for and the per-call switch, on for this thread and this model only.
    Returns the bytes the copies take. Raises ValueError (with the `*_unsupported` reason) for a model that
    cannot take one."""
    reasons = [reason for wanted, check in ((int8, int8_unsupported), (packed, packing_unsupported))
               if wanted and (reason := check(model))]
    if reasons:
        raise ValueError("; ".join(reasons))
    import torch

    mode = threading.local()  # what this thread reads for this model; other threads see no attributes
    mode.int8, mode.packed = int8, packed
    added = 0
    shared = {}  # siblings' one copy, by layer
    for layers in _packed_groups(model) if packed else []:
        copy = _PackedCopy(layers)
        added += copy.nbytes()
        shared.update((id(layer), copy) for layer in layers)
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or "lora_" in name:
            continue  # an adapter's own small layers stay as they are
        if not hasattr(module, "_decode_mode"):
            module.forward = _switching_forward(module, module.forward)
        module._decode_mode = mode  # a later prepare (a new loop thread) takes over from the earlier one
        module._int8_copy = _Int8Copy(module.weight) if int8 else None
        module._packed_copy = shared.get(id(module)) or (_PackedCopy([module]) if packed else None)
        added += module._int8_copy.nbytes() if int8 else 0
        added += module._packed_copy.nbytes() if packed and id(module) not in shared else 0
    return added
