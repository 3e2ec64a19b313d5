"""Full fine-tuning (`--full`): a round that trains every weight and writes a whole model dir, which
the registry lists, the app serves beside the base (a second model with its own decode loop) and the
evals gate like any adapter. Also `save_every`, which keeps the weights of every few steps for the
over-training window."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from evals.report import run_eval
from models import decode_weights
from models.chat import ChatModel, SamplingParams
from models.loading import load_base
from training.registry import list_checkpoints
from training.__main__ import main
from tests.test_training import sft_rows, tiny_args, write_jsonl

QUESTION = [{"role": "user", "content": "write a poem 3"}]
GREEDY = SamplingParams(temperature=0, max_new_tokens=8)


@pytest.fixture(scope="module")
def full_round(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    data = write_jsonl(root / "sft.jsonl", sft_rows(8))
    out = root / "checkpoints"
    # the training CLI's own main, in this process: no fresh interpreter to import torch and trl again
    code = main([*map(str, tiny_args(tiny_model_dir, data, out, "f1", "--method", "sft", "--full", "--steps", "3",
                                     "--lr", "1e-2", "--save-every", "1", "--eval-every", "3"))])
    assert code == 0, "the full round failed: its error line is in the captured stderr"
    return out


def test_full_round_writes_a_whole_model_that_the_registry_lists(full_round, tiny_model_dir):
    checkpoint = list_checkpoints(full_round)[0]
    assert checkpoint.full and checkpoint.weights_dir == full_round / "f1" / "model"
    assert not (full_round / "f1" / "adapter").exists()
    info = json.loads((full_round / "f1" / "round.json").read_text())
    assert info["recipe"] == "sft_full" and info["full"] is True and "lora" not in info
    assert info["config"]["load_in_4bit"] is False and info["quantization"] == "none"
    assert info["steps_saved"] == [1, 2, 3] and (full_round / "f1" / "steps" / "step-2" / "config.json").is_file()
    assert checkpoint.fingerprint == info["fingerprint"]
    tuned = load_file(str(checkpoint.weights_dir / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    changed = [k for k in base if k in tuned and not torch.equal(base[k].float(), tuned[k].float())]
    assert len(changed) > len(base) // 2  # every layer trained, not a few adapter matrices


def test_full_and_4bit_together_are_refused_in_one_line(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(6))
    # the CLI's own main, in this process: a refusal needs no fresh interpreter
    code = main([*map(str, tiny_args(tiny_model_dir, data, tmp_path / "checkpoints", "f2", "--method", "sft",
                                     "--full", "--recipe", "sft_qlora"))])
    stderr = capsys.readouterr().err
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "full fine-tuning trains unquantized weights: add --no-4bit" in errors[0], stderr
    assert not (tmp_path / "checkpoints" / "f2").exists()


def alone(model_dir, conversation) -> str:
    model, tokenizer = load_base(str(model_dir), dtype="fp32")
    return ChatModel(model, tokenizer).generate([conversation], [None], GREEDY)[0]


def test_a_full_fine_tune_is_served_beside_the_base_in_one_stream(full_round, tiny_model_dir):
    checkpoint = list_checkpoints(full_round)[0]
    model, tokenizer = load_base(str(tiny_model_dir), dtype="fp32")
    chat = ChatModel(model, tokenizer)
    assert chat.ensure_weights("f1", checkpoint.weights_dir) == checkpoint.fingerprint
    expected = [alone(tiny_model_dir, QUESTION), alone(checkpoint.weights_dir, QUESTION)]
    assert expected[0] != expected[1]  # the sides can be told apart
    *_, streamed = chat.stream([QUESTION, QUESTION], [None, "f1"], GREEDY)
    assert streamed == expected
    assert chat.generate([QUESTION, QUESTION], ["f1", None], GREEDY) == expected[::-1]
    assert chat.full["f1"].scheduler.stats["rows"] == 1 and chat.scheduler.stats["rows"] == 1


def test_evals_gate_a_full_fine_tune_against_its_base(full_round, tiny_model_dir, tmp_path):
    checkpoint = list_checkpoints(full_round)[0]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "write a poem 3"}, {"prompt": "hello"}])
    report = run_eval(checkpoint.weights_dir, prompts_file=prompts, base_model=str(tiny_model_dir),
                      cache_dir=tmp_path / "cache", max_new_tokens=8, dtype="fp32", use_base_cache=False)
    assert report["full_fine_tune"] is True and report["adapter_fingerprint"] == checkpoint.fingerprint
    first = report["samples"][0]
    conversation = [{"role": "user", "content": "write a poem 3"}]
    assert first["base"] == alone(tiny_model_dir, conversation).strip()  # the report keeps answers stripped
    assert first["candidate"] == alone(checkpoint.weights_dir, conversation).strip() != first["base"]


def test_the_arena_serves_a_promoted_full_fine_tune_through_the_real_app(full_round, tiny_model_dir, tmp_path):
    """/arena_generate on a real app whose promoted candidate is a full fine-tune: each side's answer is what
    that model samples with the stored seed, and the comparison records the full model's fingerprint."""
    from gradio_client import Client

    from labeling.store import Store
    from models.chat import end_at_last_sentence
    from tests.test_browser import serving_app

    data_dir = tmp_path / "data"
    shutil.copytree(full_round / "f1", data_dir / "checkpoints" / "f1")
    with Store(data_dir) as store:  # promoted: the Arena's default pair is base vs this candidate
        store.record_promotion("f1", "admin", "", False)
    with serving_app(data_dir, "--base-model", str(tiny_model_dir), "--dtype", "fp32",
                     log=tmp_path / "app.log") as (url, _):
        comparison_id, answer_a, answer_b = Client(url, verbose=False).predict(
            QUESTION[0]["content"], 8, api_name="/arena_generate")
    with Store(data_dir) as store:
        stored = store.get_comparison(comparison_id)
    checkpoint = list_checkpoints(data_dir / "checkpoints")[0]
    assert {stored["model_a"], stored["model_b"]} == {"base", "f1"}
    fingerprints = dict(zip((stored["model_a"], stored["model_b"]), (stored["adapter_a"], stored["adapter_b"])))
    assert fingerprints["f1"] == checkpoint.fingerprint

    p = stored["params"]
    for i, (model, answer) in enumerate(zip((stored["model_a"], stored["model_b"]), (answer_a, answer_b))):
        # row i of a request samples with seed + i; each model alone, loaded straight from its own dir
        weights = tiny_model_dir if model == "base" else checkpoint.weights_dir
        chat = ChatModel(*load_base(str(weights), dtype="fp32"))
        # as the app serves it: from oneDNN-packed weights where they can be made (in fp32 not the same
        # rounding as the plain weights, and a sampled token of a random tiny model can flip on that)
        chat.packed_decode = decode_weights.packing_unsupported(chat.model) is None
        params = SamplingParams(temperature=p["temperature"], top_p=p["top_p"], max_new_tokens=8, seed=p["seed"] + i)
        complete = []
        *_, (text,) = chat.stream([QUESTION], [None], params, complete=complete)
        # only an answer cut by the token limit is trimmed; one that ended on its own is kept whole
        # (this test once trimmed both, and failed whenever a side happened to end within its 8 tokens)
        expected = text if complete[0] else end_at_last_sentence(text)[0]
        assert answer == expected, (model, answer, text, complete[0], params.seed)
        assert p["cut_off"][i] is not complete[0]
