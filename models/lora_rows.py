"""Per-row LoRA adapters without peft's mixed-batch split.

peft serves a batch whose rows use different adapters (`adapter_names=[...]`) by indexing the
rows of each adapter out of every LoRA layer's input and back, which on CPU costs more than the
LoRA product itself (bench/bench_side_by_side.py: a base row + an adapter row took 2.1x one
plain row). Here every adapter in the batch is applied to all rows in one product, and its
`scaling` becomes a per-row column, 0 for rows that do not use it: the delta is added only
where it is needed, with no indexing. A batch of base rows only switches the LoRA layers off.

This sets three attributes of peft's LoraLayer directly (`scaling`, `_active_adapter`,
`_disable_adapters`). They stay set while the batch's rows keep their adapters (setting them on
every step cost 0.7-1.2 ms of a 17 ms step), and `restore()` puts peft's values back before
anything else uses the model: a changed batch, ChatModel.generate, loading an adapter.
tests/test_scheduler.py checks the answers against serving each adapter alone.
"""

from __future__ import annotations

from typing import Sequence


class RowAdapters:
    """Applies per-row adapters to one model's LoRA layers until the rows change or `restore()`."""

    def __init__(self, model):
        """Build one per set of loaded adapters: the LoRA layers are listed once, here."""
        from peft.tuners.lora import LoraLayer

        self.model = model
        self._layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        self._applied: tuple | None = None  # the rows' adapters the layers are set for now
        self._saved: list | None = None  # peft's own values, while ours are set

    def layers(self) -> list:
        return self._layers

    def apply(self, adapters: Sequence[str | None], dtype, device) -> None:
        """Set the layers for a batch whose row i uses `adapters[i]` (None: the base)."""
        import torch

        key = (tuple(adapters), dtype, device)
        if key == self._applied:
            return
        self.restore()
        layers = self.layers()
        used = sorted({a for a in adapters if a})
        self._saved = [(layer, dict(layer.scaling), layer._active_adapter, layer._disable_adapters) for layer in layers]
        if not used:
            for layer in layers:
                layer._disable_adapters = True
        else:
            masks = {name: torch.tensor([1.0 if a == name else 0.0 for a in adapters], dtype=dtype, device=device)
                     .view(-1, 1, 1) for name in used}
            per_scale: dict = {}
            for layer in layers:
                layer._disable_adapters = False
                layer._active_adapter = [name for name in used if name in layer.lora_A]
                for name in layer._active_adapter:
                    scale = layer.scaling[name]
                    key_ = (name, scale)
                    if key_ not in per_scale:
                        per_scale[key_] = masks[name] * scale
                    layer.scaling[name] = per_scale[key_]
        self._applied = key

    def restore(self) -> None:
        """Put peft's own values back (a no-op when they are there)."""
        if self._saved is None:
            return
        for layer, scaling, active, disabled in self._saved:
            layer.scaling.clear()
            layer.scaling.update(scaling)
            layer._active_adapter, layer._disable_adapters = active, disabled
        self._saved = self._applied = None
