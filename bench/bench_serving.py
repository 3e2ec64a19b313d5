"""Serving a team: N annotators ask for a comparison at the same moment. Baseline, measured in the
same run: the comparisons served one after another (how the app served before the shared decode
loop: one generation event at a time). Then the same comparisons through the shared loop
(models/scheduler.py), all at once. Embedded model, greedy, bf16 unless told otherwise, with the
app's copies of the weights (models/decode_weights.py): int8 on narrow steps unless --no-int8-decode
(it speeds the 2-row baseline), oneDNN-packed on wider ones unless --no-packed-decode (it speeds the
shared batch).

With --through-app the same comparisons go through the real app instead, as the issue's done-means
puts it: `app.py` in a subprocess (the embedded model, logins for N annotators, the team's Arena
sampling set to --temperature, as an admin who generated with it leaves it), each annotator calling
`/arena_generate` with `gradio_client`: one after another, then all at once. That adds what each call
costs around the decode loop (HTTP, gradio's queue, storing the comparison), which the shared
loop's calls pay side by side. Answers come back trimmed to their last sentence, so tok/s there
counts the tokens returned.

Speed-up = aggregate tok/s all at once / one after another (the rows of the two runs are decoded
on different copies of the weights, int8 and packed, so an answer can differ in length).

    python bench/bench_serving.py [--users 8] [--tokens 128] [--dtype bf16] [--no-int8-decode]
                                  [--no-packed-decode] [--no-prefix-cache] [--repeats 3] [--through-app]
                                  [--temperature 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import decode_weights  # noqa: E402
from models.chat import ChatModel, SamplingParams  # noqa: E402

TOPICS = ["rainbows", "clear emails", "tide pools", "compound interest", "sourdough", "bicycle gears",
          "volcanoes", "jet lag", "chess openings", "solar panels", "honey bees", "glaciers"]


def comparison(chat, topic: str, params, user: str, asked: float | None = None) -> tuple[float, float, int]:
    """One Arena comparison (two rows); returns (seconds to first text, seconds until complete, tokens),
    counted from `asked`: when the annotator clicked, which for the baseline is when everyone did."""
    messages = [{"role": "user", "content": f"Explain {topic} in a short paragraph."}]
    started, first = asked or time.perf_counter(), None
    for texts in chat.stream([messages, messages], [None, None], params, user=user):
        if first is None and any(texts):
            first = time.perf_counter() - started
    tokens = sum(len(chat.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return first or 0.0, time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "data" / "cache" / "models")
    parser.add_argument("--no-int8-decode", dest="int8_decode", action="store_false")
    parser.add_argument("--no-packed-decode", dest="packed_decode", action="store_false")
    parser.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                        help="prefill whole prompts (by default the loop keeps the shared prompt opening's keys and values)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--through-app", action="store_true", help="call /arena_generate on the real app")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy (default); above: sampled as the Arena samples (top-p 0.9, fixed seeds)")
    args = parser.parse_args()
    topics = [TOPICS[i % len(TOPICS)] for i in range(args.users)]
    runs = []  # (sequential seconds, its comparisons, shared seconds, its comparisons), one per repeat
    if args.through_app:
        with serving_app(args) as (clients, decided):
            for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits both alike
                runs.append((*one_after_another(clients, topics, None), *all_at_once(clients, topics, None)))
        widest = None
    else:
        chat = ChatModel.load(None, args.cache_dir, dtype=args.dtype)
        decode_weights.choose(chat, args.int8_decode, args.packed_decode)  # as app.py decides
        chat.prefix_cache = args.prefix_cache
        params = SamplingParams(temperature=args.temperature, top_p=0.9, max_new_tokens=args.tokens)
        clients = [DirectClient(chat, f"user{i}", args.tokens) for i in range(args.users)]
        DirectClient(chat, "warm", 8).comparison("warm-up")
        for _ in range(args.repeats):
            runs.append((*one_after_another(clients, topics, params), *all_at_once(clients, topics, params)))
        decided = (f"int8 decode {'on' if chat.int8_decode else 'off'}, "
                   f"packed decode {'on' if chat.packed_decode else 'off'}, "
                   f"prefix cache {'on' if args.prefix_cache else 'off'}")
        widest = chat.scheduler.stats["widest"]
    sampling = "greedy" if args.temperature <= 0 else f"temperature {args.temperature}, top-p 0.9"
    print(f"{args.users} comparisons (2 rows each), {args.tokens} new tokens, {args.dtype}, {sampling}, "
          f"{'through the app (/arena_generate), ' if args.through_app else ''}{decided}; "
          f"the run with the median speed-up of {args.repeats}")
    print(f"{'variant':<38}{'seconds':>8}{'tok/s':>9}{'1st text':>11}{'slowest':>11}{'speed-up':>10}")

    def speed_up(run) -> float:
        return throughput(run[3], run[2]) / throughput(run[1], run[0])

    sequential_s, one_by_one, shared_s, shared = sorted(runs, key=speed_up)[len(runs) // 2]
    for name, seconds, comparisons in (("one after another (baseline)", sequential_s, one_by_one),
                                       ("all at once, shared decode loop", shared_s, shared)):
        firsts = [c[0] for c in comparisons if c[0] is not None]
        first = f"{statistics.median(firsts):>11.2f}" if firsts else f"{'-':>11}"
        print(f"{name:<38}{seconds:>8.1f}{throughput(comparisons, seconds):>9.1f}{first}"
              f"{max(c[1] for c in comparisons):>11.1f}"
              f"{throughput(comparisons, seconds) / throughput(one_by_one, sequential_s):>9.2f}x")
    print("speed-up of each repeat: " + ", ".join(f"{speed_up(run):.2f}x" for run in runs))
    print(f"{f'widest batch {widest} rows; ' if widest else ''}speed-up = aggregate tok/s over the baseline's; "
          "1st text = median seconds until a comparison shows text (not seen through the API); slowest = seconds "
          "until the last comparison is complete")


def throughput(comparisons, seconds: float) -> float:
    return sum(c[2] for c in comparisons) / seconds


class DirectClient:
    """An annotator asking the shared loop itself (ChatModel.stream), as the app's handlers do."""

    def __init__(self, chat, user: str, tokens: int):
        self.chat, self.user, self.tokens = chat, user, tokens

    def comparison(self, topic: str, params=None, asked: float | None = None) -> tuple[float, float, int]:
        params = params or SamplingParams(temperature=0, max_new_tokens=self.tokens)
        return comparison(self.chat, topic, params, self.user, asked)


class AppClient:
    """An annotator calling /arena_generate on the app with their own login."""

    def __init__(self, url: str, user: str, password: str, tokens: int, tokenizer):
        from gradio_client import Client

        self.client, self.tokens, self.tokenizer = Client(url, auth=(user, password), verbose=False), tokens, tokenizer

    def comparison(self, topic: str, params=None, asked: float | None = None) -> tuple[None, float, int]:
        started = asked or time.perf_counter()
        _, answer_a, answer_b = self.client.predict(f"Explain {topic} in a short paragraph.", self.tokens,
                                                    api_name="/arena_generate")
        tokens = sum(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (answer_a, answer_b))
        return None, time.perf_counter() - started, tokens


@contextmanager
def serving_app(args):
    """app.py on the embedded model in a subprocess with a data dir of its own (the converted model
    shared from --cache-dir): (one logged-in AppClient per annotator, each warmed up by one call; the
    app's line saying which copies of the weights it decodes with)."""
    from labeling.users import add_user
    from models.loading import EMBEDDED, resolve_base_model
    from tests.test_browser import serving_app as app_process
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(EMBEDDED, args.cache_dir))
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, auth, log = Path(tmp) / "data", Path(tmp) / "users.txt", Path(tmp) / "app.log"
        (data_dir / "cache").mkdir(parents=True)
        (data_dir / "cache" / "models").symlink_to(args.cache_dir.resolve())
        # the team's Arena sampling, as an admin who generated with it leaves it: /arena_generate uses it
        (data_dir / "arena_sampling.json").write_text(json.dumps({"temperature": args.temperature, "top_p": 0.9}))
        users = [(f"annotator{i}", f"password-{i}-for-the-bench") for i in range(args.users)]
        for user, password in users:
            add_user(auth, user, "annotator", password)
        flags = [flag for flag, on in (("--no-int8-decode", not args.int8_decode),
                                       ("--no-packed-decode", not args.packed_decode),
                                       ("--no-prefix-cache", not args.prefix_cache)) if on]
        with app_process(data_dir, "--auth-file", str(auth), "--dtype", args.dtype, *flags, log=log) as (url, _):
            clients = [AppClient(url, user, password, args.tokens, tokenizer) for user, password in users]
            for client in clients:  # the first call waits for the model; each opens its client's stream
                client.comparison("warm-up")
            decode_line = next((line.strip() for line in log.read_text().splitlines() if line.startswith("decode:")),
                               "the app's decode copies: see its log")
            decode_line += f"; prefix cache {'on' if args.prefix_cache else 'off'}"
            yield clients, decode_line


def one_after_another(clients, topics, params) -> tuple[float, list]:
    """How the app served before the shared loop: one generation event at a time."""
    started = time.perf_counter()
    done = [client.comparison(topic, params, asked=started) for client, topic in zip(clients, topics)]
    return time.perf_counter() - started, done


def all_at_once(clients, topics, params) -> tuple[float, list]:
    """Every annotator asks at the same moment; the shared loop batches them."""
    results: list = [None] * len(topics)
    gate = threading.Barrier(len(topics))

    def user(i: int) -> None:
        gate.wait()
        results[i] = clients[i].comparison(topics[i], params)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(topics))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, results


if __name__ == "__main__":
    main()
