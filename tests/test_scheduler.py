"""The shared decode loop (models/scheduler.py) on the tiny model: requests from many users are
decoded in one batch, a request that arrives mid-answer joins at the next step, and every row's
greedy answer equals what it gets served alone, adapters included."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from models.chat import ChatModel, SamplingParams
from models.loading import load_base
from models.scheduler import SchedulerBusy
from tests.test_models import make_adapter

GREEDY = SamplingParams(temperature=0, max_new_tokens=24)
PROMPTS = [[{"role": "user", "content": text}] for text in
           ("hello how are you", "the sea", "tell me a long story about a lighthouse keeper", "2+2?")]


@pytest.fixture
def chat(tiny_model_dir) -> ChatModel:
    return ChatModel(*load_base(str(tiny_model_dir), dtype="fp32"), base_name=str(tiny_model_dir))


def alone(chat, messages, adapter=None, params=GREEDY) -> str:
    """The reference: plain transformers generate() on this one conversation."""
    return chat.generate([messages], [adapter], params)[0]


def all_at_once(chat, requests) -> list[list[str]]:
    """Each (conversations, params) request from its own user, all asked at the same moment, as annotators
    would: every request's final answers."""
    results: dict[int, list[str]] = {}
    ready = threading.Barrier(len(requests))

    def user(k):
        conversations, params = requests[k]
        ready.wait()
        results[k] = list(chat.stream(conversations, [None] * len(conversations), params, user=f"user{k}"))[-1]

    threads = [threading.Thread(target=user, args=(k,)) for k in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return [results[k] for k in range(len(requests))]


def test_concurrent_users_share_one_batch_and_get_their_own_answers(chat):
    expected = [alone(chat, messages) for messages in PROMPTS]
    assert all_at_once(chat, [([messages], GREEDY) for messages in PROMPTS]) == [[text] for text in expected]
    assert chat.scheduler.stats["widest"] >= 2  # decoded together, not one after the other


def test_a_request_arriving_mid_answer_joins_the_running_batch(chat, tiny_model_dir, tmp_path):
    chat.ensure_adapter("r1", make_adapter(tiny_model_dir, tmp_path / "a1", seed=1))
    long = SamplingParams(temperature=0, max_new_tokens=60)
    expected_first = alone(chat, PROMPTS[2], None, long)
    expected_pair = [alone(chat, PROMPTS[0], None), alone(chat, PROMPTS[0], "r1")]
    first = chat.stream([PROMPTS[2]], [None], long, user="ann")
    for _ in range(5):
        next(first)  # a few tokens in: the batch is running
    second = list(chat.stream([PROMPTS[0], PROMPTS[0]], [None, "r1"], GREEDY, user="bob"))[-1]
    rest = list(first)
    assert second == expected_pair  # base and adapter rows, joined mid-way, equal each served alone
    assert rest[-1][0] == expected_first  # the running row was not disturbed by the newcomers
    assert chat.scheduler.stats["widest"] == 3
    assert chat.scheduler.stats["steps"] < 60 + 24  # shared steps, not one answer after the other


def test_stop_ends_only_its_own_rows(chat):
    long = SamplingParams(temperature=0, max_new_tokens=60)
    keep = chat.stream([PROMPTS[1]], [None], long, user="ann")
    stop = chat.stream([PROMPTS[2]], [None], long, user="bob")
    next(keep), next(stop), next(keep), next(stop)
    stop.close()  # bob's Stop
    assert list(keep)[-1][0] == alone(chat, PROMPTS[1], None, long)
    assert chat.scheduler.wait_idle(timeout=30)


def test_one_user_cannot_take_more_than_their_share(chat):
    long = SamplingParams(temperature=0, max_new_tokens=200)
    mine = [chat.stream([PROMPTS[0], PROMPTS[1]], [None, None], long, user="greedy") for _ in range(2)]
    for stream in mine:
        next(stream)  # 4 rows running: the per-user limit
    with pytest.raises(SchedulerBusy, match="greedy already has 4 answers generating"):
        next(chat.stream([PROMPTS[2]], [None], long, user="greedy"))
    other = list(chat.stream([PROMPTS[3]], [None], GREEDY, user="patient"))[-1]  # others are still served
    assert other == [alone(chat, PROMPTS[3])]
    for stream in mine:
        stream.close()
    assert chat.scheduler.wait_idle(timeout=30)


def test_seeded_sampling_repeats_and_rows_of_one_request_differ(chat):
    sampled = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=16, seed=11)
    first = list(chat.stream([PROMPTS[0], PROMPTS[0]], [None, None], sampled))[-1]
    again = list(chat.stream([PROMPTS[0], PROMPTS[0]], [None, None], sampled))[-1]
    assert first == again  # the seed recorded with a comparison reproduces it
    assert first[0] != first[1]  # an Arena pair on one model is two draws, not one answer twice



def test_each_row_draws_what_it_draws_alone_in_a_batch_of_mixed_sampling(chat):
    """Greedy and sampling rows with their own temperature, top-p and seed share one step (sampled together,
    models/scheduler.py sample_rows): each row's answer is the one it gets as the only row of a request."""
    requests = [  # (conversations, params): row i of a request draws with seed + i
        ([PROMPTS[0], PROMPTS[1]], SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=16, seed=5)),
        ([PROMPTS[2]], GREEDY),
        ([PROMPTS[3], PROMPTS[0]], SamplingParams(temperature=0.6, top_p=0.5, max_new_tokens=16, seed=9)),
    ]
    expected = [[list(chat.stream([messages], [None], replace(params, seed=params.seed + i)))[-1][0]
                 for i, messages in enumerate(conversations)] for conversations, params in requests]
    assert all_at_once(chat, requests) == expected
    assert chat.scheduler.stats["widest"] >= 3  # the requests shared steps


def test_rows_of_several_adapters_and_the_base_equal_each_served_alone(chat, tiny_model_dir, tmp_path):
    """The per-row adapter masks (models/lora_rows.py) against peft's own one-adapter path."""
    plain = alone(chat, PROMPTS[1])
    chat.ensure_adapter("r1", make_adapter(tiny_model_dir, tmp_path / "a1", seed=1))
    chat.ensure_adapter("r2", make_adapter(tiny_model_dir, tmp_path / "a2", seed=2))
    expected = [alone(chat, PROMPTS[1], name) for name in (None, "r1", "r2", "r1")]
    assert expected[0] == plain and expected[1] != plain and expected[2] != expected[1]
    got = list(chat.stream([PROMPTS[1]] * 4, [None, "r1", "r2", "r1"], GREEDY))[-1]
    assert got == expected
    base_only = list(chat.stream([PROMPTS[1]], [None], GREEDY))[-1]  # the LoRA layers switched off
    assert base_only == [plain]
    assert chat.generate([PROMPTS[1]], ["r2"], GREEDY) == [expected[2]]  # peft's own path is left as it was
    assert list(chat.stream([PROMPTS[1]] * 2, ["r2", "r1"], GREEDY))[-1] == [expected[2], expected[1]]
    # the loop keeps its settings in the layers between steps; an adapter loaded after it must not see them
    chat.ensure_adapter("r3", make_adapter(tiny_model_dir, tmp_path / "a3", seed=3))
    third = chat.generate([PROMPTS[1]], ["r3"], GREEDY)
    assert third != [plain]
    assert list(chat.stream([PROMPTS[1]] * 3, ["r1", None, "r3"], GREEDY))[-1] == [expected[1], plain, *third]
    assert chat.generate([PROMPTS[1]], ["r1"], GREEDY) == [expected[1]]


def paced_gaps(stream) -> tuple[list[float], list[str]]:
    """Seconds between the texts a stream yields as its reader receives them, and its final texts."""
    times, last = [], None
    for last in stream:
        times.append(time.monotonic())
    return [b - a for a, b in zip(times, times[1:])], last


def test_a_paced_stream_yields_at_most_once_per_interval_and_ends_with_the_same_answers(chat):
    long = replace(GREEDY, max_new_tokens=64)
    unpaced = list(chat.stream(PROMPTS[:2], [None, None], long))[-1]
    gaps, final = paced_gaps(chat.stream(PROMPTS[:2], [None, None], long, every=0.03))
    assert final == unpaced
    # every text but the last two (the step that finished the rows, then the final one) waited its turn
    assert len(gaps) >= 2 and min(gaps[:-2], default=0.03) >= 0.03, gaps


def test_the_shared_prompt_opening_is_prefilled_once_per_adapter_and_answers_equal_each_served_alone(
        chat, tiny_model_dir, tmp_path):
    """The decode loop keeps the keys and values of the template's opening (models/scheduler.py, _prefix_kv):
    computed once for the base and once for each adapter (which changes them), reused by later requests, and
    the rows prefilled after it ([prefix | padding | rest]) answer as plain generate() on the whole prompt."""
    chat.ensure_adapter("r1", make_adapter(tiny_model_dir, tmp_path / "a1", seed=1))
    params = replace(GREEDY, system_prompt="You are a careful assistant. Answer in one short paragraph.")
    prefix = chat.prompt_prefix(params.system_prompt)
    assert chat.tokenizer.decode(list(prefix)).endswith("<|im_start|>user\n")  # the system turn and the user's opening
    stats = chat.scheduler.stats
    first = list(chat.stream([PROMPTS[0], PROMPTS[2]], [None, "r1"], params))[-1]
    assert first == [alone(chat, PROMPTS[0], None, params), alone(chat, PROMPTS[2], "r1", params)]
    assert (stats["prefixes_computed"], stats["prefixes_reused"]) == (2, 0)  # the base's and r1's
    second = list(chat.stream([PROMPTS[1], PROMPTS[3], PROMPTS[0]], ["r1", None, None], params))[-1]
    assert second == [alone(chat, PROMPTS[1], "r1", params), alone(chat, PROMPTS[3], None, params), first[0]]
    assert (stats["prefixes_computed"], stats["prefixes_reused"]) == (2, 2)  # kept, not computed again
    # a conversation with a system turn of its own opens otherwise: its prompt is prefilled whole
    own_system = [{"role": "system", "content": "Reply in French."}, *PROMPTS[1]]
    assert list(chat.stream([own_system], [None], params))[-1] == [alone(chat, own_system, None, params)]
    assert (stats["prefixes_computed"], stats["prefixes_reused"]) == (2, 2)
