"""Serving from an OpenAI-compatible server (vLLM started with --enable-lora) instead of in-process weights.

`python app.py --backend URL` puts a RemoteChat where a ChatModel would be. It offers what the tabs
use (stream, ensure_adapter / ensure_weights, fingerprint, adapters, prompt_tokens, tokenizer), but
each row of a request is its own streaming /v1/chat/completions call with `model=` the base's served
name or the adapter's name, all rows in flight at once; the server batches them (vLLM: continuous
batching, LoRA per request). A checkpoint's adapter is loaded on the server once, with
/v1/load_lora_adapter. The evals and training subprocesses still load local weights: they never
come through here.

HTTP runs on one asyncio loop in a daemon thread, so a Stop can cancel a row's task, which closes
its HTTP stream at once (the server then frees the row); a blocking client could only notice
between two chunks.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import httpx

from models.chat import SamplingParams
from models.loading import (
    EMBEDDED, ModelLoadError, adapter_fingerprint, load_tokenizer, resolve_base_model, templated_prompt_tokens,
    validate_adapter_dir,
)
from models.scheduler import SchedulerBusy, take_until

CONNECT_S = 10.0
READ_S = 300.0  # the longest wait for the next chunk: a busy server may queue a request before its first token
MAX_ROWS_PER_USER = 4  # the in-process loop's share (models/scheduler.py), so one API user cannot flood the server


class BackendError(RuntimeError):
    """The server refused a request or broke off an answer; the message is meant for the user."""


def api_root(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all name the same server."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def error_text(body: bytes | str) -> str:
    """The message of an OpenAI-style error body (vLLM sends either shape), else the body's start."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300] or "(empty body)"
    inner = data.get("error") if isinstance(data, dict) else None
    message = (inner.get("message") if isinstance(inner, dict) else None) or (
        data.get("message") if isinstance(data, dict) else None)
    return str(message or text)[:300]


class WordCounts:
    """Stands in for a tokenizer when none is available locally: Chat's token counts become word counts
    (said at start, see RemoteChat.note). Prompt-length checks are off then; the server refuses long prompts."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": text.split()}


class RemoteChat:
    """ChatModel's serving surface, backed by an OpenAI-compatible server."""

    def __init__(self, url: str, served_name: str, tokenizer=None, base_name: str = EMBEDDED, note: str = ""):
        self.root = api_root(url)
        self.served_name = served_name  # the base's `model=` on the server
        self.base_name = base_name  # --base-model: what the evals and training load locally
        self.local_tokenizer = tokenizer  # None: no prompt-length checks (see note)
        self.tokenizer = tokenizer if tokenizer is not None else WordCounts()
        self.note = note
        self.adapters: dict[str, str] = {}  # name -> fingerprint of the local dir the server loaded it from
        self._lock = threading.Lock()  # one adapter load at a time: two handlers must not both POST it
        self._rows: dict[str, int] = {}  # user -> rows in flight
        self._rows_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="backend-http", daemon=True).start()
        self._client = self._run(self._open_client()).result()

    # ------------------------------------------------------------ start

    @classmethod
    def connect(cls, url: str, base_model: str = EMBEDDED, cache_dir: Path | None = None,
                served_name: str | None = None) -> "RemoteChat":
        """Ask the server what it serves; ModelLoadError (one line) when it cannot be used."""
        root = api_root(url)
        cards = _models(root)
        bases = [c["id"] for c in cards if not c.get("parent")]  # vLLM lists adapters with their parent base
        if served_name is not None and served_name not in bases:
            raise ModelLoadError(f"--backend {root} does not serve a base named {served_name!r}; it serves "
                                 f"{', '.join(bases) or 'nothing'}: fix --backend-model")
        if served_name is None and len(bases) != 1:
            raise ModelLoadError(f"--backend {root} serves {len(bases)} bases ({', '.join(bases) or 'none'}): "
                                 "name the one to use with --backend-model")
        served_name = served_name or bases[0]
        try:  # the same tokenizer the server uses, for the app's prompt-length check and token counts
            tokenizer, counting = load_tokenizer(resolve_base_model(base_model, cache_dir or Path("."))), "on"
        except (ModelLoadError, OSError, ValueError) as exc:
            tokenizer = None
            counting = (f"OFF: no local tokenizer for --base-model {base_model} ({str(exc).splitlines()[0][:120]}); "
                        "the server refuses over-long prompts itself and Chat counts words, not tokens")
        note = (f"generation: {root} serves {served_name!r} (and adapters as they are loaded); "
                f"prompt-length check with {base_model}'s tokenizer {counting}")
        return cls(root, served_name, tokenizer, base_name=base_model, note=note)

    async def _open_client(self) -> httpx.AsyncClient:  # made on the loop that will use it
        return httpx.AsyncClient(base_url=self.root, timeout=httpx.Timeout(READ_S, connect=CONNECT_S))

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def close(self) -> None:
        """End every request still streaming, then the loop (tests; the app's loop lives as long as it does)."""
        async def shut():
            rows = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in rows:
                task.cancel()
            await asyncio.gather(*rows, return_exceptions=True)
            await self._client.aclose()
            await self._loop.shutdown_asyncgens()

        self._run(shut()).result(timeout=CONNECT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)

    # ------------------------------------------------------------ adapters

    def ensure_adapter(self, name: str, adapter_dir: Path) -> str:
        """Have the server load the adapter under `name` once; returns its content fingerprint.
        The server reads `adapter_dir` itself, so it must see the same path (same machine or a shared disk)."""
        with self._lock:
            if name in self.adapters:
                return self.adapters[name]
            adapter_dir = Path(adapter_dir).resolve()
            if (adapter_dir / "config.json").is_file() and not (adapter_dir / "adapter_config.json").is_file():
                raise ModelLoadError(f"{name} is a full fine-tune, and --backend serves LoRA adapters only: "
                                     "serve its model dir as its own vLLM server, or drop --backend")
            validate_adapter_dir(adapter_dir)
            fingerprint = adapter_fingerprint(adapter_dir)
            body = {"lora_name": name, "lora_path": str(adapter_dir)}
            try:
                response = httpx.post(f"{self.root}/v1/load_lora_adapter", json=body, timeout=READ_S)
            except httpx.HTTPError as exc:
                raise ModelLoadError(f"the backend {self.root} did not load adapter {name}: {exc}") from exc
            if response.status_code != 200 and not self._holds(name, adapter_dir):
                hint = (" (start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora)"
                        if response.status_code in (404, 405) else "")
                raise ModelLoadError(f"the backend did not load adapter {name} from {adapter_dir}: HTTP "
                                     f"{response.status_code} {error_text(response.content)}{hint}")
            self.adapters[name] = fingerprint
            return fingerprint

    def ensure_weights(self, name: str, weights_dir: Path) -> str:
        """The name ui.services uses for any checkpoint; a full fine-tune is refused in ensure_adapter."""
        return self.ensure_adapter(name, weights_dir)

    def fingerprint(self, name: str) -> str:
        return self.adapters[name]

    def _holds(self, name: str, adapter_dir: Path) -> bool:
        """After a refused load: the server already has `name` from an earlier app process. The same dir is
        fine; another dir under the same name would serve other weights than the ones recorded, so refuse."""
        card = next((c for c in _models(self.root) if c.get("id") == name and c.get("parent")), None)
        if card is None:
            return False
        if card.get("root") not in (None, str(adapter_dir)):
            raise ModelLoadError(f"the backend already serves an adapter named {name} from {card['root']}, not "
                                 f"{adapter_dir}: unload it (POST /v1/unload_lora_adapter) or restart the server")
        return True

    # ------------------------------------------------------------ generation

    def prompt_tokens(self, messages: list[dict], system_prompt: str = "") -> int:
        """Tokens the conversation takes as a prompt; 0 without a local tokenizer (the server then checks)."""
        if self.local_tokenizer is None:
            return 0
        return templated_prompt_tokens(self.local_tokenizer, with_system(messages, system_prompt))

    def stream(self, conversations: Sequence[list[dict]], adapters: Sequence[str | None],
               params: SamplingParams = SamplingParams(), complete: list[bool] | None = None,
               user: str = "local", background: bool = False, every: float = 0.0) -> Iterator[list[str]]:
        """ChatModel.stream over HTTP: every row's text as it grows (paced by `every` as there), the last
        yield final; `complete` gets whether each row ended with finish_reason "stop". Closing the generator
        closes its requests. `background` is accepted and not used: the server schedules every request alike."""
        if len(conversations) != len(adapters):
            raise ValueError("one adapter (or None) per conversation")
        unknown = [a for a in adapters if a is not None and a not in self.adapters]
        if unknown:
            raise ModelLoadError(f"adapter not loaded: {unknown[0]}")
        bodies = [{"model": adapter or self.served_name, "messages": with_system(messages, params.system_prompt),
                   "stream": True, "temperature": params.temperature, "top_p": params.top_p,
                   "max_tokens": params.max_new_tokens, "seed": params.seed + i}  # as the local loop: seed + row
                  for i, (messages, adapter) in enumerate(zip(conversations, adapters))]
        return self._follow(bodies, complete, user, every)

    def _follow(self, bodies: list[dict], complete: list[bool] | None, user: str,
                every: float) -> Iterator[list[str]]:
        self._reserve(user, len(bodies))
        updates: queue.Queue = queue.Queue()  # (row, "text" | "end" | "error", value), from the HTTP loop
        texts, reasons = [""] * len(bodies), [None] * len(bodies)
        tasks = [self._run(self._row(i, body, updates)) for i, body in enumerate(bodies)]
        running = len(bodies)

        def take(item) -> None:
            nonlocal running
            row, kind, value = item
            if kind == "error":
                raise value
            if kind == "text":
                texts[row] += value
            else:
                reasons[row], running = value, running - 1

        try:
            last_yield = None
            while running:
                take(updates.get())
                if every and last_yield is not None:
                    take_until(updates, last_yield + every, lambda: not running, take)
                while not updates.empty():  # coalesce: a slow client skips to the newest text
                    take(updates.get_nowait())
                yield list(texts)
                last_yield = time.monotonic()
            if complete is not None:
                complete[:] = [reason == "stop" for reason in reasons]
            yield list(texts)
        finally:  # a Stop, a closed tab, or another row's error: cancelling a task closes its HTTP stream
            for task in tasks:
                task.cancel()
            self._release(user, len(bodies))

    async def _row(self, row: int, body: dict, updates: queue.Queue) -> None:
        model = body["model"]
        try:
            async with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    raise BackendError(f"the backend refused a request for {model}: HTTP {response.status_code} "
                                       f"{error_text(await response.aread())}")
                reason = None
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, SSE comments
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk or chunk.get("object") == "error":  # vLLM reports late failures in-stream
                        raise BackendError(f"the backend failed {model}'s answer midway: {error_text(data)}")
                    for choice in chunk.get("choices") or []:  # a usage-only chunk has none
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            updates.put((row, "text", text))
                        reason = choice.get("finish_reason") or reason
                if reason is None:
                    raise BackendError(f"the backend cut {model}'s answer off (the stream ended without a "
                                       "finish_reason)")
                updates.put((row, "end", reason))
        except BackendError as exc:
            updates.put((row, "error", exc))
        except httpx.HTTPError as exc:
            updates.put((row, "error", BackendError(f"the backend request for {model} failed: "
                                                    f"{type(exc).__name__}: {exc}")))
        except (ValueError, AttributeError, TypeError) as exc:  # not JSON, or not a chat completion chunk
            updates.put((row, "error", BackendError(f"the backend sent something that is not a chat completion "
                                                    f"chunk for {model}: {exc}")))

    def _reserve(self, user: str, rows: int) -> None:
        with self._rows_lock:
            if self._rows.get(user, 0) + rows > MAX_ROWS_PER_USER:
                raise SchedulerBusy(f"{user} already has {self._rows[user]} answers being generated; wait for "
                                    f"them to finish (at most {MAX_ROWS_PER_USER} at a time)")
            self._rows[user] = self._rows.get(user, 0) + rows

    def _release(self, user: str, rows: int) -> None:
        with self._rows_lock:
            self._rows[user] -= rows
            if not self._rows[user]:
                del self._rows[user]


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
    """The system prompt goes first unless the conversation brings its own (as ChatModel does)."""
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


def _models(root: str) -> list[dict]:
    """The server's /v1/models cards, or ModelLoadError saying what to do."""
    try:
        response = httpx.get(f"{root}/v1/models", timeout=CONNECT_S)
    except httpx.HTTPError as exc:
        raise ModelLoadError(f"--backend {root} cannot be reached ({type(exc).__name__}: {exc}): start the server "
                             "first (README: Serving from vLLM) or drop --backend") from None
    try:
        response.raise_for_status()
        return [card for card in response.json()["data"] if isinstance(card, dict) and "id" in card]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"--backend {root}: /v1/models did not answer as an OpenAI-compatible server does "
                             f"({exc})") from None
