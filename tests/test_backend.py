"""`--backend URL`: generation from an OpenAI-compatible server (models/remote.py).

The server is a small fake of vLLM's OpenAI API (Starlette, run by uvicorn in a thread on loopback)
that records every request it gets: /v1/models, streaming /v1/chat/completions (one SSE chunk per
word of a fixed text per model, with finish_reason) and /v1/load_lora_adapter.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path

import pytest

BASE = "served-base"
TEXTS = {BASE: "The base answers in plain words.", "r-remote": "The candidate answers with other words."}
NEVER_ENDS = "never stop"  # a prompt the fake streams forever, until the client goes away
FAILS = "fail midway"  # a prompt the fake breaks off with an in-stream error, as vLLM reports late failures


class FakeBackend:
    """The fake server's state; its handlers run on uvicorn's loop in another thread."""

    def __init__(self):
        self.requests: list[dict] = []  # chat completion bodies, in arrival order
        self.load_calls: list[dict] = []  # every load_lora_adapter body
        self.loads: list[dict] = []  # those that loaded something
        self.adapters: dict[str, str] = {}  # name -> path
        self.gather = 1  # streams wait until this many requests are in flight together
        self.word_delay = 0.0  # seconds between the words of an answer
        self.gathered: list[bool] = []  # per request: did all of its batch arrive while it waited
        self.disconnected = threading.Event()
        self._arrived = 0
        self._all_in: asyncio.Event | None = None

    def app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
        from starlette.routing import Route

        async def models(request):
            cards = [{"id": BASE, "object": "model", "root": "/models/base", "parent": None}]
            cards += [{"id": n, "object": "model", "root": p, "parent": BASE} for n, p in self.adapters.items()]
            return JSONResponse({"object": "list", "data": cards})

        async def load(request):
            body = await request.json()
            self.load_calls.append(body)
            if body["lora_name"] in self.adapters:  # what vLLM answers
                return JSONResponse({"object": "error", "message": f"The lora adapter '{body['lora_name']}' has "
                                     "already been loaded.", "type": "InvalidUserInput", "code": 400}, 400)
            self.adapters[body["lora_name"]] = body["lora_path"]
            self.loads.append(body)
            return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

        async def completions(request):
            body = await request.json()
            self.requests.append(body)
            if body["model"] not in (BASE, *self.adapters):
                return JSONResponse({"error": {"message": f"The model `{body['model']}` does not exist.",
                                               "code": 404}}, 404)
            return StreamingResponse(self._chunks(body), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/load_lora_adapter", load, methods=["POST"]),
                                 Route("/v1/chat/completions", completions, methods=["POST"])])

    async def _chunks(self, body: dict):
        if self._all_in is None:
            self._all_in = asyncio.Event()
        self._arrived += 1
        if self._arrived >= self.gather:
            self._all_in.set()
        try:  # a client that sends rows one after another leaves the first waiting here alone
            await asyncio.wait_for(self._all_in.wait(), 10)
            self.gathered.append(True)
        except TimeoutError:
            self.gathered.append(False)
        prompt = body["messages"][-1]["content"]

        def chunk(text=None, reason=None):
            delta = {"content": text} if text is not None else {}
            return "data: " + json.dumps({"object": "chat.completion.chunk", "model": body["model"], "choices": [
                {"index": 0, "delta": delta, "finish_reason": reason}]}) + "\n\n"

        if prompt == NEVER_ENDS:
            try:
                yield chunk("Forever")
                await asyncio.Event().wait()
            finally:  # starlette cancels the response when the client disconnects
                self.disconnected.set()
        words = TEXTS[body["model"]].split(" ")
        for i, word in enumerate(words[: body["max_tokens"]]):
            yield chunk(word if i == 0 else " " + word)
            await asyncio.sleep(self.word_delay)
            if prompt == FAILS:
                yield "data: " + json.dumps({"error": {"message": "CUDA out of memory", "code": 500}}) + "\n\n"
                return
        yield chunk(reason="stop" if body["max_tokens"] >= len(words) else "length")
        yield "data: [DONE]\n\n"


@pytest.fixture
def backend():
    import uvicorn

    fake = FakeBackend()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # listening before uvicorn runs: the kernel queues connections, so no waiting for it
    server = uvicorn.Server(uvicorn.Config(fake.app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield fake
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def adapter_dir(root: Path) -> Path:
    """An adapter dir as the app checks it (the fake server never reads the weights)."""
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (root / "adapter_model.safetensors").write_bytes(b"not read by the fake server")
    return root


@pytest.fixture
def remote(backend, tiny_model_dir, tmp_path):
    from models.remote import RemoteChat

    chat = RemoteChat.connect(backend.url + "/v1", str(tiny_model_dir), tmp_path / "cache")
    yield chat
    chat.close()


def test_connect_finds_the_served_base_and_the_local_tokenizer(remote):
    assert remote.served_name == BASE
    assert remote.local_tokenizer is not None and "tokenizer OFF" not in remote.note
    messages = [{"role": "user", "content": "hello there"}]
    assert remote.prompt_tokens(messages, "Be brief.") > remote.prompt_tokens(messages) > 2


def test_without_a_local_tokenizer_the_start_line_says_the_length_check_is_off(backend, tmp_path):
    from models.remote import RemoteChat

    chat = RemoteChat.connect(backend.url, "nobody/not-on-this-machine", tmp_path / "cache")  # offline: no hub
    try:
        assert chat.local_tokenizer is None and "\n" not in chat.note
        assert "prompt-length check with nobody/not-on-this-machine's tokenizer OFF" in chat.note
        assert chat.prompt_tokens([{"role": "user", "content": "hello there"}]) == 0
        assert len(chat.tokenizer("three words here")["input_ids"]) == 3  # Chat's stats count words, as said
    finally:
        chat.close()


def test_base_and_adapter_rows_are_concurrent_requests_with_their_model_and_sampling(backend, remote, tmp_path):
    from models.chat import SamplingParams

    adapter = adapter_dir(tmp_path / "ckpt" / "adapter")
    fingerprint = remote.ensure_adapter("r-remote", adapter)
    assert remote.fingerprint("r-remote") == fingerprint
    backend.gather = 2  # each stream waits for the other: only concurrent requests both see it arrive
    messages = [{"role": "user", "content": "Which is better?"}]
    params = SamplingParams(temperature=0.5, top_p=0.8, max_new_tokens=64, seed=7, system_prompt="Be brief.")
    complete: list[bool] = []
    yields = list(remote.stream([messages, messages], [None, "r-remote"], params, complete=complete))
    assert yields[-1] == [TEXTS[BASE], TEXTS["r-remote"]]
    assert complete == [True, True]
    # every yield is each row's text so far (how many there are depends on timing: updates coalesce;
    # test_stop_closes_the_request sees a partial answer arrive before the end)
    assert all(text.startswith(part) for y in yields for part, text in zip(y, yields[-1]))
    assert backend.gathered == [True, True]
    sent = {body["model"]: body for body in backend.requests}
    assert set(sent) == {BASE, "r-remote"}
    for model, seed in ((BASE, 7), ("r-remote", 8)):  # row i draws with seed + i, as the local loop does
        assert {k: sent[model][k] for k in ("stream", "temperature", "top_p", "max_tokens", "seed")} == {
            "stream": True, "temperature": 0.5, "top_p": 0.8, "max_tokens": 64, "seed": seed}
        assert sent[model]["messages"] == [{"role": "system", "content": "Be brief."}, *messages]

    # cut by the token limit: finish_reason "length" is not complete
    backend.gather = 1
    short: list[bool] = []
    *_, last = remote.stream([messages], [None], SamplingParams(max_new_tokens=2), complete=short)
    assert last == ["The base"] and short == [False]


def test_a_paced_stream_yields_at_most_once_per_interval_and_ends_with_the_whole_answers(backend, remote):
    from models.chat import SamplingParams
    from tests.test_scheduler import paced_gaps

    backend.word_delay = 0.02  # a word every 20 ms, in two concurrent streams
    messages = [{"role": "user", "content": "Which is better?"}]
    gaps, final = paced_gaps(remote.stream([messages, messages], [None, None], SamplingParams(), every=0.03))
    assert final == [TEXTS[BASE], TEXTS[BASE]]
    assert len(gaps) >= 2 and min(gaps[:-2], default=0.03) >= 0.03, gaps


def test_an_adapter_is_loaded_once_even_across_app_restarts(backend, remote, tiny_model_dir, tmp_path):
    from models.loading import ModelLoadError
    from models.remote import RemoteChat

    adapter = adapter_dir(tmp_path / "ckpt" / "adapter")
    first = remote.ensure_adapter("r-remote", adapter)
    assert remote.ensure_adapter("r-remote", adapter) == first
    assert backend.load_calls == backend.loads == [{"lora_name": "r-remote", "lora_path": str(adapter.resolve())}]
    # a restarted app finds the server still holding it: fine from the same dir, refused from another
    again = RemoteChat.connect(backend.url, str(tiny_model_dir), tmp_path / "cache", served_name=BASE)
    try:
        assert again.ensure_adapter("r-remote", adapter) == first
        assert len(backend.load_calls) == 2 and len(backend.loads) == 1  # asked once more, refused, accepted
        backend.adapters["r-moved"] = "/somewhere/else"  # the server holds this name from another dir
        with pytest.raises(ModelLoadError, match="already serves an adapter named r-moved from /somewhere/else"):
            again.ensure_adapter("r-moved", adapter)
    finally:
        again.close()


def test_stop_closes_the_request(backend, remote):
    stream = remote.stream([[{"role": "user", "content": NEVER_ENDS}]], [None])
    assert next(stream) == ["Forever"]
    assert not backend.disconnected.is_set()
    stream.close()  # what leaving the handler's loop does on Stop
    assert backend.disconnected.wait(10), "the server never saw the client go away"


def test_a_failure_midway_or_a_refusal_is_a_clear_error(backend, remote):
    from models.remote import BackendError

    with pytest.raises(BackendError, match="failed served-base's answer midway: CUDA out of memory"):
        list(remote.stream([[{"role": "user", "content": FAILS}]], [None]))
    remote.adapters["r-gone"] = "0"  # the server lost it (restarted) while the app still counts on it
    with pytest.raises(BackendError, match="refused a request for r-gone: HTTP 404 The model `r-gone` does not"):
        list(remote.stream([[{"role": "user", "content": "hi"}]], ["r-gone"]))


def test_unreachable_backend_stops_the_app_with_one_line(tmp_path, capsys):
    import app

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert app.main(["--data-dir", str(tmp_path / "data"), "--backend", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be reached" in err and "drop --backend" in err


@pytest.mark.slow
def test_arena_generate_through_the_app_serves_from_the_backend(backend, tmp_path, tiny_model_dir):
    from gradio_client import Client

    from labeling.store import Store
    from tests.test_browser import serving_app

    data_dir = tmp_path / "data"
    checkpoint = data_dir / "checkpoints" / "r-remote"
    adapter = adapter_dir(checkpoint / "adapter")
    (checkpoint / "round.json").write_text(json.dumps({"round_id": "r-remote", "finished_at": "2026-01-01"}))
    with Store(data_dir) as store:  # promoted: the Arena's default pair is base vs this candidate
        store.record_promotion("r-remote", "admin", "", False)
    backend.gather = 2
    with serving_app(data_dir, "--backend", backend.url, "--base-model", str(tiny_model_dir),
                     log=tmp_path / "app.log") as (url, _):
        comparison_id, answer_a, answer_b = Client(url, verbose=False).predict(
            "Which is better?", 64, api_name="/arena_generate")
    assert comparison_id and {answer_a, answer_b} == {TEXTS[BASE], TEXTS["r-remote"]}
    assert backend.load_calls == [{"lora_name": "r-remote", "lora_path": str(adapter.resolve())}]
    assert sorted(body["model"] for body in backend.requests) == sorted([BASE, "r-remote"])
    assert backend.gathered == [True, True]
    assert "prompt-length check with" in (tmp_path / "app.log").read_text()
