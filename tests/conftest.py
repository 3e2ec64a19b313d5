"""Shared fixtures: a tiny random Llama + tokenizer built offline, and temp data dirs.

Nothing here touches the network: the tokenizer is trained on a few sentences
with the `tokenizers` library, and the model has random weights, so unit tests
of loading, adapters, streaming and training take seconds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"  # screenshots the tests take (git ignores it)
sys.path.insert(0, str(ROOT))
from tests import app_logs  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers (the Makefile says why)
        share_the_cores_with_background_jobs()


def share_the_cores_with_background_jobs() -> None:
    """Run this xdist worker, and all it starts, at the priority of the app's rounds and evals.

    The app starts those at the lowest CPU priority, in sessions of their own (pipeline.yield_cpu_to_serving).
    Beside the other worker's tests at normal priority they got about 1.5% of a core, and a test waiting on a
    round or an eval timed out. So each worker moves to a session of its own (its own autogroup, where the
    kernel schedules by autogroup) at that priority: the two workers' tests and the jobs they start then share
    the cores evenly. The processes' own nice values stay 0, so a job's priority, which the pipeline tests
    check, is still the one the app gave it. Where autogroups are off, process priorities are what counts."""
    from pipeline import BACKGROUND_NICE

    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled")
    try:
        if enabled.exists() and enabled.read_text().strip() == "1":
            os.setsid()  # a worker is never a process group leader: execnet starts it in pytest's group
            Path("/proc/self/autogroup").write_text(str(BACKGROUND_NICE))
            return
    except OSError:  # a container may refuse either; process priorities then are what counts
        pass
    os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_NICE)


# The files that take longest (measured with --durations, two workers on 2 cores), longest first. xdist hands
# out whole files in collection order (the Makefile turns off its reordering by test count, which put the
# one-test loop file last), so starting the longest ones first keeps the two workers' finishing times close.
LONGEST_FILES_FIRST = (
    "test_loop_browser.py", "test_tabs_feedback_browser.py", "test_browser.py", "test_training.py", "test_journal.py",
    "test_faults.py", "test_annotators_browser.py", "test_pipeline.py", "test_decode_weights.py", "test_app.py",
    "test_identity_browser.py", "test_backend.py", "test_accelerate.py", "test_full_finetune.py", "test_roles_queue.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def pytest_runtest_setup(item):
    app_logs.new_test()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report ends with the tail of every app it was served by (tests/app_logs.py)."""
    report = yield
    if report.failed:
        report.sections.extend(app_logs.tails())
        if call.when == "call":
            report.sections.extend(screenshots_of_open_pages(item))
    return report


def screenshots_of_open_pages(item) -> list[tuple[str, str]]:
    """A failing browser test's open pages, saved to test-artifacts/failed/: what the page showed when a wait
    timed out is most of the diagnosis, and a race seen once under load may not come back."""
    browser = item.funcargs.get("browser")
    if browser is None:
        return []
    folder = ARTIFACTS / "failed"
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    pages = [page for context in browser.contexts for page in context.pages if not page.is_closed()]
    for i, page in enumerate(pages):
        path = folder / f"{item.name[:80]}-{i}.png".replace("/", "_")
        try:
            page.screenshot(path=str(path), full_page=True, timeout=10_000)
            saved.append(str(path.relative_to(ROOT)))
        except Exception as exc:  # a crashed page: say so, and leave the test's own error as the report
            saved.append(f"(page {i}: no screenshot: {exc.__class__.__name__})")
    return [("screenshots of the open pages", "\n".join(saved))] if saved else []


CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The capital of France is Paris. Rain falls on the quiet town.",
    "Dear, how can I help you? Buy now and save 50 percent today!",
    "Write a short poem about the sea and the sky and the wind.",
    "Python is a programming language. Numbers add up: one two three four five.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "user assistant system hello thanks please answer question explain why how what",
] * 20


def build_tiny_model_dir(target: Path) -> Path:
    """Save a random 2-layer Llama and a small BPE tokenizer as a HF model dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    import torch

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,  # bitsandbytes' CPU 4-bit kernel repacks only in_features >= 64
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA checkpoint really trained on the tiny model (SFT toward one fixed answer, through the
    training CLI), so its greedy answers differ from the base's: Arena and Chat tests that compare
    it with the base can tell the sides apart."""
    import json

    from training.__main__ import main

    root = tmp_path_factory.mktemp("trained")
    data = root / "sft.jsonl"
    answer = "The quick brown fox jumps over the lazy dog while the cat sleeps."
    rows = [{"messages": [{"role": "user", "content": f"question {i}: tell me about the sea"},
                          {"role": "assistant", "content": answer}]} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["run", "--method", "sft", "--data", str(data), "--out", str(root / "checkpoints"),
                 "--round-id", "r-trained", "--base-model", str(tiny_model_dir), "--steps", "8",
                 "--lr", "5e-2", "--no-4bit"])
    assert code == 0, "training the test adapter failed"
    return root / "checkpoints" / "r-trained"


@pytest.fixture(scope="session")
def embedded_model_dir(tmp_path_factory) -> Path:
    """The real embedded SmolLM2, converted once per test run (about 10 s, 25 s beside other work).

    xdist workers share the run's root temp dir, and a lock makes the second worker wait for the first's
    conversion and reuse it instead of converting it again on the same two cores."""
    import fcntl

    from models.loading import EMBEDDED, resolve_base_model

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's own dir: each worker's base temp dir is a folder in it
    cache = Path(os.environ.get("PREFLOOP_TEST_CACHE", root / "model-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".converting.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return Path(resolve_base_model(EMBEDDED, cache))


@pytest.fixture
def data_dir(tmp_path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path
