"""Serving: one base model plus named LoRA adapters, decoded in one batch (and full fine-tunes beside it).

One base model in memory serves every side of a comparison. Checkpoints are
LoRA adapters attached with peft and picked per row of a batch with
`adapter_names` (peft's mixed-batch inference), so base vs candidate costs one
forward pass per token, not two models. Streaming goes through one shared decode
loop for all users (models/scheduler.py); `generate` is plain transformers for evals.

A checkpoint from full fine-tuning is a whole second model: it is loaded as its own ChatModel with
its own decode loop, and a request that mixes it with the base sends each row to its model's loop
(both loops report to the same listener, so a comparison still streams as one).
"""

from __future__ import annotations

import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from models.own_thread import on_own_thread
from models.scheduler import BASE, Scheduler, follow
from models.loading import (
    EMBEDDED, ModelLoadError, adapter_fingerprint, is_full_model_dir, load_base, resolve_base_model,
    validate_adapter_dir, validate_model_dir,
)



@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0
    system_prompt: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class ChatModel:
    """One loaded base plus any number of named LoRA adapters, served per batch row."""

    def __init__(self, model, tokenizer, base_name: str = EMBEDDED):
        self.model = model
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.adapters: dict[str, str] = {}  # LoRA adapter name -> fingerprint
        self.full: dict[str, "ChatModel"] = {}  # name -> a full fine-tune's own model (a second copy of weights)
        self.full_fingerprints: dict[str, str] = {}
        self._lock = threading.Lock()  # one forward pass / adapter change at a time on shared weights
        self._scheduler = None
        self._scheduler_lock = threading.Lock()
        self._prompt_prefixes: dict[str, tuple[int, ...]] = {}  # system prompt -> prompt_prefix
        # the decode loop's own copies of the weights: int8 for narrow steps, oneDNN-packed for wide ones
        # (models/decode_weights.py); the app turns them on, so generate(), evals and tests keep the model's
        # own weights unless asked
        self.int8_decode = False
        self.packed_decode = False
        # the decode loop keeps the shared prompt opening's keys and values (models/scheduler.py); False: every
        # prefill runs on whole prompts (app.py --no-prefix-cache; the bench compares both)
        self.prefix_cache = True

    @classmethod
    def load(cls, spec: str | None, cache_dir: Path, dtype: str = "auto", device: str = "cpu") -> "ChatModel":
        path = resolve_base_model(spec, cache_dir)
        model, tokenizer = on_own_thread(lambda: load_base(path, dtype=dtype, device=device), "load-base")
        return cls(model, tokenizer, base_name=spec or EMBEDDED)

    def ensure_adapter(self, name: str, adapter_dir: Path) -> str:
        """Attach an adapter under `name` once; returns its content fingerprint."""
        with self._lock:
            if name in self.adapters:
                return self.adapters[name]
            validate_adapter_dir(adapter_dir)
            self._release_adapters()
            from peft import PeftModel

            def attach():
                if hasattr(self.model, "load_adapter") and hasattr(self.model, "peft_config"):
                    self.model.load_adapter(str(adapter_dir), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)

            try:
                on_own_thread(attach, "load-adapter")  # models/own_thread.py: no OpenMP team left behind
            except Exception as exc:  # safetensors/peft raise many types on corrupt files
                raise ModelLoadError(f"cannot load adapter {adapter_dir}: {exc}") from exc
            self.model.eval()
            self.adapters[name] = adapter_fingerprint(adapter_dir)
            return self.adapters[name]

    def ensure_weights(self, name: str, weights_dir: Path) -> str:
        """ensure_adapter for an adapter dir, ensure_full for a full model dir; returns the fingerprint."""
        if is_full_model_dir(weights_dir):
            return self.ensure_full(name, weights_dir)
        return self.ensure_adapter(name, weights_dir)

    def ensure_full(self, name: str, model_dir: Path) -> str:
        """Load a full fine-tune under `name` once, in this model's dtype and on its device. It costs a whole
        second copy of the weights; its rows decode in its own loop, beside this model's."""
        with self._lock:
            if name in self.full:
                return self.full_fingerprints[name]
            validate_model_dir(model_dir)
            dtype = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(self.model.dtype), "fp32")
            model, _ = on_own_thread(lambda: load_base(str(model_dir), dtype=dtype, device=str(self.model.device)),
                                     "load-full")
            self.full[name] = ChatModel(model, self.tokenizer, base_name=str(model_dir))
            self.full[name].int8_decode, self.full[name].packed_decode = self.int8_decode, self.packed_decode
            self.full[name].prefix_cache = self.prefix_cache
            self.full_fingerprints[name] = adapter_fingerprint(model_dir)
            return self.full_fingerprints[name]

    def fingerprint(self, name: str) -> str:
        """The content hash of a loaded adapter or full fine-tune (stored with every comparison)."""
        return self.full_fingerprints[name] if name in self.full else self.adapters[name]

    def _engines(self, adapters: Sequence[str | None]) -> list[tuple["ChatModel", list[int]]]:
        """Which model serves which rows: full fine-tunes their own, everything else this one."""
        groups: dict[str | None, list[int]] = {}
        for i, adapter in enumerate(adapters):
            groups.setdefault(adapter if adapter in self.full else None, []).append(i)
        return [(self.full[key] if key else self, rows) for key, rows in groups.items()]

    def _encode(self, conversations: Sequence[list[dict]], system_prompt: str):
        texts = []
        for messages in conversations:
            if system_prompt and not (messages and messages[0]["role"] == "system"):
                messages = [{"role": "system", "content": system_prompt}, *messages]
            texts.append(
                self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            )
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)

    def prompt_tokens(self, messages: list[dict], system_prompt: str = "") -> int:
        """How many tokens a conversation takes as a prompt (to refuse oversized ones early)."""
        return int(self._encode([messages], system_prompt)["input_ids"].shape[1])

    def prompt_ids(self, messages: list[dict], system_prompt: str = "") -> list[int]:
        return self._encode([messages], system_prompt)["input_ids"][0].tolist()

    def prompt_prefix(self, system_prompt: str = "") -> tuple[int, ...]:
        """The tokens every prompt with this system prompt opens with (the template's system turn, the opening
        of the user's): what two one-message conversations share. The decode loop keeps their keys and values."""
        if system_prompt not in self._prompt_prefixes:
            if len(self._prompt_prefixes) >= 64:  # system prompts typed in the Chat tab: keep the memo small
                self._prompt_prefixes.clear()
            one, other = (self.prompt_ids([{"role": "user", "content": text}], system_prompt) for text in ("a", "b"))
            shared = next((i for i, (x, y) in enumerate(zip(one, other)) if x != y), min(len(one), len(other)))
            self._prompt_prefixes[system_prompt] = tuple(one[:shared])
        return self._prompt_prefixes[system_prompt]

    @property
    def scheduler(self) -> Scheduler:
        """The shared decode loop (models/scheduler.py), started on first use."""
        with self._scheduler_lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self)
            return self._scheduler

    def stream(
        self,
        conversations: Sequence[list[dict]],
        adapters: Sequence[str | None],
        params: SamplingParams = SamplingParams(),
        complete: list[bool] | None = None,
        user: str = "local",
        background: bool = False,
        every: float = 0.0,
    ) -> Iterator[list[str]]:
        """Decode the conversations in the shared loop, batched with everyone else's; yield every
        row's text as it grows (with `every` > 0, at most once per `every` seconds). The last yield is final.

        `adapters[i]` is an adapter name from ensure_adapter, or None for the base. A list
        passed as `complete` is filled, once decoding ended, with whether each row reached
        its end-of-sequence token (False: cut by max_new_tokens or stopped). Closing the
        generator early (Stop, a closed tab) stops these rows at the next step, and only them.
        Raises models.scheduler.SchedulerBusy when `user` already has their share of rows running.
        `background` rows (work done ahead) join the batch only after every waiting request.
        """
        self._check_adapters(conversations, adapters)
        engines = self._engines(adapters)
        if len(engines) == 1 and engines[0][0] is self:
            return self.scheduler.stream(conversations, adapters, params, complete=complete, user=user,
                                         background=background, every=every)
        return self._stream_across(engines, conversations, adapters, params, complete, user, background, every)

    def _stream_across(self, engines, conversations, adapters, params, complete, user, background, every):
        """stream() for a request whose rows live in more than one model (a full fine-tune beside the base)."""
        listener: queue.Queue = queue.Queue()  # one for every loop serving this request
        rows: list = [None] * len(adapters)
        for engine, indices in engines:
            own = [None if engine is not self else adapters[i] for i in indices]
            made = engine.scheduler.rows([conversations[i] for i in indices], own, params, user, listener,
                                         background, seeds=[params.seed + i for i in indices])
            for i, row in zip(indices, made):
                rows[i] = row
        try:
            for engine, indices in engines:
                engine.scheduler.submit([rows[i] for i in indices])
        except BaseException:
            for row in rows:  # a loop that refused (SchedulerBusy) must not leave the others' rows running
                row.stopped.set()
            raise
        yield from follow(rows, listener, self.tokenizer, complete, every)

    def _release_adapters(self) -> None:
        """The decode loop leaves its per-row adapter settings in the LoRA layers between steps;
        anything else that uses the model (under self._lock) first gives them back to peft."""
        if self._scheduler is not None:
            self._scheduler.release_adapters()

    def _check_adapters(self, conversations, adapters) -> None:
        if len(conversations) != len(adapters):
            raise ValueError("one adapter (or None) per conversation")
        unknown = [a for a in adapters if a is not None and a not in self.adapters and a not in self.full]
        if unknown:
            raise ModelLoadError(f"adapter not loaded: {unknown[0]}")

    def _generate_kwargs(self, inputs, adapters, params: SamplingParams, streamer=None) -> dict:
        kwargs = dict(
            **inputs,
            max_new_tokens=params.max_new_tokens,
            streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.adapters:  # peft mixed batch: "__base__" rows skip every adapter
            kwargs["adapter_names"] = [a or BASE for a in adapters]
        return kwargs

    def generate(self, conversations, adapters, params: SamplingParams = SamplingParams()) -> list[str]:
        """Non-streaming batch generation (evals, data prep): the final texts.

        Skips the streamer: decoding every row's text after every step costs ~15%
        of an eval's time and nobody watches these tokens arrive.
        """
        import torch

        self._check_adapters(conversations, adapters)
        engines = self._engines(adapters)
        if len(engines) > 1 or engines[0][0] is not self:  # each model answers its own rows
            texts: list = [None] * len(adapters)
            for engine, indices in engines:
                own = [None if engine is not self else adapters[i] for i in indices]
                for i, text in zip(indices, engine.generate([conversations[i] for i in indices], own, params)):
                    texts[i] = text
            return texts
        stop_ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        with self._lock:
            self._release_adapters()
            inputs = self._encode(conversations, params.system_prompt)
            with torch.inference_mode():
                torch.manual_seed(params.seed)
                output = self.model.generate(**self._generate_kwargs(inputs, adapters, params))
        texts = []
        for row in output[:, inputs["input_ids"].shape[1]:].tolist():
            end = next((k for k, token in enumerate(row) if token in stop_ids), len(row))
            texts.append(self.tokenizer.decode(row[:end], skip_special_tokens=True))
        return texts


LIST_NUMBER = re.compile(r"(?:^|\n)\s*\d+\.$")  # "2." opening a list item ends no sentence
SENTENCE_END = re.compile(r"""[.!?](?:["')\]*_]*)?(?=\s|$)|\n\s*\n""")


def end_at_last_sentence(text: str, keep_at_least: float = 0.3) -> tuple[str, bool]:
    """Trim an answer cut off by the token limit back to its last complete sentence.

    Returns (text, trimmed). An answer cut mid-sentence would teach a model to stop
    mid-sentence once it becomes a chosen answer, so the Arena shows and stores the
    trimmed text. When the last sentence end leaves less than `keep_at_least` of the
    text (one long code block, a single run-on sentence), the text is kept as it is
    and reported untrimmed; the data lint then flags it as cut off.
    """
    stripped = text.rstrip()
    ends = [m.end() for m in SENTENCE_END.finditer(stripped) if not LIST_NUMBER.search(stripped[: m.end()])]
    if not ends or ends[-1] >= len(stripped):
        return text, False
    cut = stripped[: ends[-1]].rstrip()
    if len(cut) < keep_at_least * len(stripped) or cut.count("```") % 2:
        return text, False
    return cut, True
