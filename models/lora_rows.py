"""Per-row LoRA adapters without peft's mixed-batch split.

peft serves a batch whose rows use different adapters (`adapter_names=[...]`) by indexing the
rows of each adapter out of every LoRA layer's input and back, which on CPU costs more than the
LoRA product itself (bench/bench_side_by_side.py: a base row + an adapter row took 2.1x one
plain row). Here every adapter in the batch is applied to all rows in one product, and its
`scaling` becomes a per-row column, 0 for rows that do not use it: the delta is added only
where it is needed, with no indexing. A batch of base rows only switches the LoRA layers off.

This sets three attributes of peft's LoraLayer directly (`scaling`, `_active_adapter`,
`_disable_adapters`) for the duration of one forward pass and puts them back afterwards, so
peft's own paths (ChatModel.generate with adapter_names, adapter loading) see them unchanged.
tests/test_scheduler.py checks the answers against serving each adapter alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence


class RowAdapters:
    """Applies per-row adapters to one model's LoRA layers for the length of a `with` block."""

    def __init__(self, model):
        """Build one per set of loaded adapters: the LoRA layers are listed once, here."""
        from peft.tuners.lora import LoraLayer

        self.model = model
        self._layers = [m for m in model.modules() if isinstance(m, LoraLayer)]

    def layers(self) -> list:
        return self._layers

    @contextmanager
    def rows(self, adapters: Sequence[str | None], dtype, device):
        import torch

        layers = self.layers()
        used = sorted({a for a in adapters if a})
        saved = [(layer, dict(layer.scaling), layer._active_adapter, layer._disable_adapters) for layer in layers]
        try:
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
                        key = (name, scale)
                        if key not in per_scale:
                            per_scale[key] = masks[name] * scale
                        layer.scaling[name] = per_scale[key]
            yield
        finally:
            for layer, scaling, active, disabled in saved:
                layer.scaling.clear()
                layer.scaling.update(scaling)
                layer._active_adapter, layer._disable_adapters = active, disabled
