"""Continuous batching: every user's generation decoded in one shared loop.

Chat turns, Arena comparisons and API calls submit rows; one worker thread owns the
weights and runs one forward pass per step for every active row. A new row joins at the
next step boundary: the newcomers' prompts are prefilled together and their KV cache is
merged into the running batch (left-padded to a common length), so nobody waits for
someone else's answer to finish. A row leaves when it reaches end-of-sequence, its token
limit, or its own Stop; columns of padding nobody needs any more are cropped away.

Prompts open alike: the chat template's system turn (SmolLM2 adds a default one) and the start of the user's
turn are 24 of a typical Arena prompt's 38 tokens. Their keys and values are computed once per adapter and
kept (`PREFIX_ENTRIES`), and a newcomer's prefill runs only on the rest of its prompt: its row is laid out
as [prefix | padding | rest], the positions counting only what the mask lets in, as with left padding.
A 16-row prefill of the embedded model took 445 ms for the whole prompts and 174 ms for the rest alone.

Each row samples with its own temperature, top-p and seeded generator, so a batch neighbour
does not change which tokens a row draws (only float rounding of its logits can differ).
Rows pick their LoRA adapter per row, as peft's mixed batches allow. A served bf16 model on the
CPU reads int8 copies of its weights on steps of at most four rows, and oneDNN-packed copies on wider
ones (models/decode_weights.py).

Fairness: when more rows wait than fit, the users with the fewest rows in the batch go
first, and one user may have at most `max_rows_per_user` rows waiting or running.
Background rows (comparisons generated ahead for an annotator) join only after every
waiting foreground request.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from models import decode_weights
from models.lora_rows import RowAdapters

BASE = "__base__"  # peft's name for "no adapter" inside a mixed batch
TOP_K = 50  # transformers' generate() default when sampling; kept so answers read the same as before
GATHER_S = 0.02  # an idle loop waits this long after the first request for others to arrive with it
PREFIX_ENTRIES = 32  # prompt prefixes whose keys and values are kept (one per system prompt and adapter)


class SchedulerBusy(RuntimeError):
    """A user asked for more concurrent rows than their share."""


@dataclass(eq=False)
class Row:
    prompt_ids: list[int]
    adapter: str | None
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    user: str
    listener: queue.Queue  # shared by the rows of one request: told after every step that touched them
    background: bool = False  # work done ahead (pre-generation): admitted only after every waiting request
    prefix: tuple[int, ...] = ()  # the opening of prompt_ids that every prompt with its system prompt shares
    tokens: list[int] = field(default_factory=list)
    complete: bool = False  # reached end-of-sequence (not the token limit, not a Stop)
    done: bool = False
    error: BaseException | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    generator: object = None  # torch.Generator, seeded on the worker


@dataclass
class Batch:
    """The KV cache of the active rows, and which of its columns each row may attend to."""

    cache: object  # transformers.DynamicCache, rows in the order of Scheduler._active
    mask: object  # LongTensor [rows, columns]: 0 for left padding


class Scheduler:
    """Owns decoding for a ChatModel: `stream()` is what ChatModel.stream calls."""

    def __init__(self, chat, max_rows: int = 16, max_rows_per_user: int = 4):
        self.chat = chat
        self.max_rows = max_rows
        self.max_rows_per_user = max_rows_per_user
        self._pending: list[Row] = []
        self._active: list[Row] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        # for the bench and the curious (prefixes: the shared prompt openings kept per adapter, see _prefix_kv)
        self.stats = {"steps": 0, "rows": 0, "widest": 0, "prefixes_computed": 0, "prefixes_reused": 0}
        self._row_adapters: RowAdapters | None = None
        self._adapters_seen: tuple = ()
        self.row_masks = True  # models/lora_rows.py; False: peft's mixed batch (the bench compares both)
        # (prefix tokens, adapter, its fingerprint) -> per layer (keys, values) of one row, while chat.prefix_cache
        self._prefixes: OrderedDict[tuple, list] = OrderedDict()

    # ------------------------------------------------------------ the callers' side

    def stream(self, conversations: Sequence[list[dict]], adapters: Sequence[str | None], params,
               complete: list[bool] | None = None, user: str = "local",
               background: bool = False, every: float = 0.0) -> Iterator[list[str]]:
        """Yield every row's text so far as the shared loop advances; the last yield is final.

        Row i draws with seed `params.seed + i`, so two rows of one request (an Arena pair on the
        same model) do not draw the same tokens. Closing the generator stops its rows only."""
        listener: queue.Queue = queue.Queue()
        rows = self.rows(conversations, adapters, params, user, listener, background)
        self.submit(rows)  # on the first next(), like any generator: nothing runs for a caller that never reads
        yield from follow(rows, listener, self.chat.tokenizer, complete, every)

    def rows(self, conversations, adapters, params, user: str, listener: queue.Queue, background: bool = False,
             seeds: Sequence[int] | None = None) -> list[Row]:
        """One Row per conversation, told through `listener` (a request served by two loops shares one)."""
        seeds = seeds if seeds is not None else [params.seed + i for i in range(len(conversations))]
        prefix = self.chat.prompt_prefix(params.system_prompt)
        rows = []
        for messages, adapter, seed in zip(conversations, adapters, seeds):
            ids = self.chat.prompt_ids(messages, params.system_prompt)
            opens_with_prefix = len(ids) > len(prefix) and tuple(ids[:len(prefix)]) == prefix  # a conversation
            # with its own system turn opens otherwise
            rows.append(Row(ids, adapter, params.temperature, params.top_p, params.max_new_tokens, seed, user,
                            listener, background=background, prefix=prefix if opens_with_prefix else ()))
        return rows

    def close(self) -> None:
        """End the loop once no row runs; rows still waiting then would never be served, so fail them."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no row runs or waits (True), or timeout (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._active and not self._pending, timeout)

    def submit(self, rows: list[Row]) -> None:
        with self._cond:
            mine = sum(1 for row in self._pending + self._active if row.user == rows[0].user and not row.done)
            if mine + len(rows) > self.max_rows_per_user:
                raise SchedulerBusy(f"{rows[0].user} already has {mine} answers generating (at most "
                                    f"{self.max_rows_per_user} at once): wait for them or stop them first")
            self._pending.extend(rows)
            self._start()
            self._cond.notify()

    def start(self) -> None:
        """Start the loop now rather than on the first request, so its setup (copies of the weights) is done by then."""
        with self._cond:
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="decode-loop", daemon=True)
            self._thread.start()
            atexit.register(self.close)  # a daemon thread killed inside torch at exit aborts the process

    # ------------------------------------------------------------ the worker

    def _take_pending(self) -> list[Row] | None:
        """Rows that join now: as many as fit, fewest-rows-in-the-batch users first, then arrival order.
        A request's rows join together, so both sides of a comparison start on the same step."""
        with self._cond:
            if not self._active:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                deadline = time.monotonic() + GATHER_S  # from the first request's arrival, not the loop's last step
                while (left := deadline - time.monotonic()) > 0:  # let the others of a burst arrive too
                    self._cond.wait(left)
            self._pending = [row for row in self._pending if not row.stopped.is_set() or self._drop(row)]
            room = self.max_rows - len(self._active)
            in_batch: dict[str, int] = {}
            for row in self._active:
                in_batch[row.user] = in_batch.get(row.user, 0) + 1
            requests: dict[int, list[Row]] = {}
            for row in self._pending:
                requests.setdefault(id(row.listener), []).append(row)
            # stable sort: people waiting before work done ahead, then the users with fewest rows in the batch
            order = sorted(requests.values(), key=lambda rows: (rows[0].background, in_batch.get(rows[0].user, 0)))
            joining = []
            for rows in order:
                if len(rows) <= room - len(joining):
                    joining += rows
                    in_batch[rows[0].user] = in_batch.get(rows[0].user, 0) + len(rows)
            self._pending = [row for row in self._pending if row not in joining]
            return joining

    @staticmethod
    def _drop(row: Row) -> bool:
        row.done = True
        row.listener.put(None)
        return False

    def _loop(self) -> None:
        import torch

        if self.chat.int8_decode or self.chat.packed_decode:  # on this thread: see models/decode_weights.py
            try:
                decode_weights.prepare(self.chat.model, int8=self.chat.int8_decode, packed=self.chat.packed_decode)
            except (ValueError, RuntimeError) as exc:  # the app checked first; decoding goes on with the own weights
                print(f"warning: the decode loop reads the model's own weights: {exc}", file=sys.stderr, flush=True)
        batch: Batch | None = None
        while True:
            joining = self._take_pending()
            if joining is None:  # closed
                return
            try:
                with torch.inference_mode(), self.chat._lock:  # adapters attach between steps, never during
                    logits = []
                    if self._active:
                        logits.append(self._decode_step(batch))
                    if joining:
                        new_logits, new_batch = self._prefill(joining)
                        logits.append(new_logits)
                        batch = merge(batch, new_batch) if self._active else new_batch
                        for row in joining:
                            row.generator = torch.Generator().manual_seed(row.seed)
                        with self._cond:
                            self._active += joining
                    self._advance(torch.cat(logits).float().cpu())  # sampling runs on the CPU generators
                    batch = self._retire(batch)
                    if batch is None:  # idle: leave the LoRA layers as peft set them
                        self.release_adapters()
            except BaseException as exc:  # every row in the batch fails with it; the loop goes on
                with self._cond:
                    failed, self._active = self._active + [r for r in joining if r not in self._active], []
                for row in failed:
                    row.error, row.done = exc, True
                    row.listener.put(None)
                batch = None
                with self.chat._lock:
                    self.release_adapters()

    def _forward(self, input_ids, attention_mask, position_ids, cache, adapters):
        model = self.chat.model
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      cache=cache, use_cache=True, logits_to_keep=1)
        if not self.chat.adapters:
            return model(**kwargs).logits[:, -1, :]
        loaded = tuple(self.chat.adapters)
        if self._row_adapters is None or self._row_adapters.model is not model or self._adapters_seen != loaded:
            # the first adapter wraps the model in a PeftModel; a later one may add LoRA layers
            self.release_adapters()
            self._row_adapters, self._adapters_seen = RowAdapters(model), loaded
        if not self.row_masks or not self._row_adapters.layers():  # peft's own mixed batch
            self._row_adapters.restore()
            return model(**kwargs, adapter_names=[a or BASE for a in adapters]).logits[:, -1, :]
        self._row_adapters.apply(adapters, model.dtype, input_ids.device)
        return model(**kwargs).logits[:, -1, :]

    def release_adapters(self) -> None:
        """Give the LoRA layers back to peft as it set them; the caller holds the model's lock."""
        if self._row_adapters is not None:
            self._row_adapters.restore()

    def _prefill(self, rows: list[Row]) -> tuple[object, Batch]:
        """Prefill the newcomers, left-padded to a common width. When they share a kept prefix (`_prefix_kv`),
        only what follows it: row i is then [prefix | padding | the rest of its prompt]."""
        import torch
        from transformers import DynamicCache

        prefix = rows[0].prefix
        if not (self.chat.prefix_cache and all(row.prefix == prefix for row in rows)):
            prefix = ()
        rests = [row.prompt_ids[len(prefix):] for row in rows]
        width = max(len(rest) for rest in rests)
        pad, device = self.chat.tokenizer.pad_token_id, self.chat.model.device
        ids = torch.tensor([[pad] * (width - len(rest)) + rest for rest in rests], device=device)
        mask = torch.tensor([[1] * len(prefix) + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests],
                            device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(prefix):]
        cache = DynamicCache()
        if prefix:
            kept = self._prefix_kv(prefix, [row.adapter for row in rows])
            cache = DynamicCache([(torch.cat([row_kv[layer][0] for row_kv in kept]),
                                   torch.cat([row_kv[layer][1] for row_kv in kept]))
                                  for layer in range(len(kept[0]))])
        logits = self._forward(ids, mask, positions, cache, [row.adapter for row in rows])
        return logits, Batch(cache, mask)

    def _prefix_kv(self, prefix: tuple[int, ...], adapters: list[str | None]) -> list[list[tuple]]:
        """Per row, each layer's (keys, values) of the prefix under the row's adapter: kept from an earlier
        request, or computed now in one forward pass for every adapter not kept yet. An adapter changes the
        keys and values, so each has its own, keyed by its fingerprint too."""
        import torch
        from transformers import DynamicCache

        keys = {adapter: (prefix, adapter, self.chat.adapters.get(adapter)) for adapter in adapters}
        missing = [adapter for adapter, key in keys.items() if key not in self._prefixes]
        if missing:
            device = self.chat.model.device
            ids = torch.tensor([list(prefix)] * len(missing), device=device)
            positions = torch.arange(len(prefix), device=device).expand(len(missing), -1)
            cache = DynamicCache()
            self._forward(ids, None, positions, cache, missing)
            for j, adapter in enumerate(missing):
                self._prefixes[keys[adapter]] = [(layer.keys[j:j + 1].clone(), layer.values[j:j + 1].clone())
                                                 for layer in cache.layers]
            self.stats["prefixes_computed"] += len(missing)
        self.stats["prefixes_reused"] += len(keys) - len(missing)
        for key in keys.values():
            self._prefixes.move_to_end(key)
        while len(self._prefixes) > PREFIX_ENTRIES:
            self._prefixes.popitem(last=False)
        return [self._prefixes[keys[adapter]] for adapter in adapters]

    def _decode_step(self, batch: Batch):
        """Feed every active row its last token; the cache and mask grow by one column."""
        import torch

        rows = self._active
        device = batch.mask.device
        batch.mask = torch.cat([batch.mask, torch.ones((len(rows), 1), dtype=batch.mask.dtype, device=device)], dim=1)
        ids = torch.tensor([[row.tokens[-1]] for row in rows], device=device)
        positions = batch.mask.sum(-1, keepdim=True) - 1
        # no padding anywhere (one row, or prompts of one length): no mask lets attention take its
        # causal fast path
        mask = None if bool(batch.mask.all()) else batch.mask
        return self._forward(ids, mask, positions, batch.cache, [r.adapter for r in rows])

    def _advance(self, logits) -> None:
        stop_ids = {self.chat.tokenizer.eos_token_id, self.chat.tokenizer.pad_token_id} - {None}
        self.stats["steps"] += 1
        self.stats["widest"] = max(self.stats["widest"], len(self._active))
        for row, token in zip(self._active, sample_rows(logits, self._active)):
            if token in stop_ids:
                row.complete = row.done = True
            else:
                row.tokens.append(token)
                row.done = len(row.tokens) >= row.max_new_tokens or row.stopped.is_set()
        # tell each request once, after all its rows moved: a listener woken between two rows of
        # one request could see the first done and the second not yet, and wait for a step that never comes
        for listener in {id(row.listener): row.listener for row in self._active}.values():
            listener.put(None)

    def _retire(self, batch: Batch) -> Batch | None:
        """Drop finished rows from the batch, and the padding columns no remaining row uses."""
        import torch

        keep = [i for i, row in enumerate(self._active) if not row.done]
        if len(keep) == len(self._active):
            # nobody left, so no column became padding for everyone: the cache stays as it is (copying it
            # here every step cost a tenth of a 16-row step, bench/bench_serving.py)
            return batch
        with self._cond:
            self.stats["rows"] += len(self._active) - len(keep)
            self._active = [self._active[i] for i in keep]
            self._cond.notify_all()  # wake wait_idle
        if not keep:
            return None
        index = torch.tensor(keep, device=batch.mask.device)
        mask = batch.mask[index]
        first = int((mask.sum(0) > 0).nonzero()[0])
        for layer in batch.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        return Batch(batch.cache, mask[:, first:])


def take_until(updates: queue.Queue, deadline: float, finished, take=lambda item: None) -> None:
    """Pass `take` every update that arrives before `deadline` (time.monotonic()), returning then, or as soon
    as finished() says the rows are done: pacing a stream never holds back its last text."""
    while not finished():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            take(updates.get(timeout=left))
        except queue.Empty:
            return


def follow(rows: list[Row], listener: queue.Queue, tokenizer, complete: list[bool] | None = None,
           every: float = 0.0) -> Iterator[list[str]]:
    """Yield the rows' texts after every step that moved them, or with `every` > 0 at most once per `every`
    seconds (the first text at once, then the newest one each time); the last yield is final. Closing the
    generator (a Stop, a closed tab) or an error stops these rows at their loop's next step."""
    def finished() -> bool:
        return all(row.done for row in rows)

    last_yield = None
    try:
        while not finished():
            listener.get()
            if every and last_yield is not None:
                take_until(listener, last_yield + every, finished)
            while not listener.empty():  # coalesce: a slow client skips to the newest text
                listener.get_nowait()
            failed = next((row.error for row in rows if row.error is not None), None)
            if failed is not None:
                raise failed
            yield [tokenizer.decode(row.tokens, skip_special_tokens=True) for row in rows]
            last_yield = time.monotonic()
        if complete is not None:
            complete[:] = [row.complete for row in rows]
        yield [tokenizer.decode(row.tokens, skip_special_tokens=True) for row in rows]
    finally:
        for row in rows:
            row.stopped.set()


def merge(batch: Batch, new: Batch) -> Batch:
    """One batch from two: left-pad the shorter cache and mask to the longer, then stack the rows."""
    import torch
    import torch.nn.functional as F

    width = max(batch.mask.shape[1], new.mask.shape[1])
    for layer, new_layer in zip(batch.cache.layers, new.cache.layers):
        for name in ("keys", "values"):
            old_part, new_part = getattr(layer, name), getattr(new_layer, name)
            setattr(layer, name, torch.cat([F.pad(old_part, (0, 0, width - old_part.shape[2], 0)),
                                            F.pad(new_part, (0, 0, width - new_part.shape[2], 0))]))
    mask = torch.cat([F.pad(batch.mask, (width - batch.mask.shape[1], 0)),
                      F.pad(new.mask, (width - new.mask.shape[1], 0))])
    return Batch(batch.cache, mask)


def sample_rows(logits, rows: Sequence[Row]) -> list[int]:
    """The next token of every row (logits: [rows, vocab]): greedy at temperature 0, else temperature, top-k 50,
    top-p (the same order of filters as transformers' generate), each row drawing from its own generator.

    Batched: one argmax for the greedy rows, one division, top-k, softmax and top-p for the sampling
    rows; only each row's draw is its own. Per row, one at a time, this cost about 100 us a sampling row
    (1.6 ms of a 16-row step, 2 cores) and 30 us a greedy one. Each row's numbers go through the same
    per-row kernels either way, so a row draws what it would alone (tests/test_scheduler.py)."""
    import torch

    tokens = [0] * len(rows)
    greedy = [i for i, row in enumerate(rows) if row.temperature <= 0]
    if greedy:
        for i, token in zip(greedy, logits[greedy].argmax(-1).tolist()):
            tokens[i] = token
    sampling = [i for i, row in enumerate(rows) if row.temperature > 0]
    if sampling:
        temperature = torch.tensor([[rows[i].temperature] for i in sampling], dtype=torch.float32)
        top_p = torch.tensor([[rows[i].top_p] for i in sampling], dtype=torch.float32)
        scores = logits[sampling].float() / temperature
        values, indices = scores.topk(min(TOP_K, scores.shape[-1]), dim=-1)
        probs = values.softmax(-1)
        outside = probs.cumsum(-1) - probs > top_p  # tokens past the nucleus (the first always stays)
        probs = probs.masked_fill(outside, 0)
        for j, i in enumerate(sampling):
            tokens[i] = int(indices[j, torch.multinomial(probs[j], 1, generator=rows[i].generator)])
    return tokens
