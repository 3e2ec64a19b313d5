"""The report: contract shape, input files, and run_eval end to end on the tiny model."""

from __future__ import annotations

import json

import pytest

from evals.report import (
    DEFAULT_PROMPTS, EvalInputError, attach_references, build_report, load_prompts, load_references,
    run_eval, write_report,
)
from models.loading import ModelLoadError

REQUIRED_CHECKS = {"canned_reply", "sales_talk", "repetition", "rouge_l"}
PROMPTS = ["Why is the sky blue?", "How long should I boil an egg?", "What is the capital of Australia?",
           "Give me a tip for better sleep.", "What is a prime number?", "How do vaccines work?"]
ANSWERS = ["Blue light scatters most in air.", "About six minutes for a soft yolk.", "Canberra.",
           "Keep a regular bedtime and a cool dark room.", "A number with exactly two divisors, like 7.",
           "They teach the immune system to recognise a germ."]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_identity_adapter(base_dir, out_dir):
    """A freshly initialised LoRA: B is zero, so it leaves the base unchanged."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------- build_report (pure)

def test_build_report_contract_shape_and_json():
    report = build_report(PROMPTS, ANSWERS, ANSWERS, references=[ANSWERS[0]] + [None] * 5)
    assert report["regression"] is False and report["flagged"] == []
    assert REQUIRED_CHECKS <= set(report["checks"])
    for check in report["checks"].values():
        assert isinstance(check["flagged"], bool) and isinstance(check["examples"], list)
        assert check["base"] is None or isinstance(check["base"], (int, float))
        assert check["candidate"] is None or isinstance(check["candidate"], (int, float))
    assert report["n_prompts"] == 6 and "near_duplicate_jaccard" in report["thresholds"]
    assert "checks_s" in report["timings"]
    json.loads(json.dumps(report))  # serialisable as is


def test_build_report_flags_collapse_and_lists_it():
    report = build_report(PROMPTS, ANSWERS, ["Dear, how can I help you?"] * 6)
    assert report["regression"] is True and "canned_reply" in report["flagged"]
    assert report["checks"]["canned_reply"]["examples"]
    assert report["checks"]["rouge_l"]["skipped"] is True


# The gate judges harm, not change: answers four times shorter that match the references better.
QUESTIONS = ["Why is the sky blue?", "How long should I boil an egg for a soft yolk?", "What is the capital of Australia?",
             "How do vaccines work?", "What is a prime number?", "Why do leaves change colour in autumn?",
             "What does a VPN do?", "Why does bread go stale?"]
REFERENCES = [
    "Air molecules scatter short blue wavelengths of sunlight much more than red ones, so the sky looks blue.",
    "Boil the egg for about six minutes for a soft, runny yolk, then cool it in cold water.",
    "The capital of Australia is Canberra, a planned city chosen as a compromise between Sydney and Melbourne.",
    "Vaccines show the immune system a harmless piece of a germ so it learns to fight the real infection.",
    "A prime number has exactly two divisors, one and itself, for example 2, 3, 5 and 7.",
    "Leaves lose their green chlorophyll in autumn, revealing yellow and orange pigments and making red ones.",
    "A VPN encrypts your internet traffic and sends it through another server, hiding your address.",
    "Bread goes stale because its starch recrystallises and the loaf loses moisture over a few days.",
]
# The base says the same and then keeps going (different words on every prompt, so it is not canned).
ELABORATIONS = [
    "Rayleigh worked this out in the nineteenth century; at sunset the light crosses far more air, the blue is "
    "scattered away before it reaches you, and the oranges and reds are left, which is also why distant "
    "mountains look hazy and bluish on a clear summer afternoon.",
    "Fresh eggs are harder to peel than older ones, altitude lowers the boiling point so cooking takes longer "
    "in the mountains, and starting from cold water instead of boiling water changes the timing again, so "
    "many cooks test one egg first before doing a whole batch for breakfast.",
    "Parliament House sits on Capital Hill, the city was designed by Walter Burley Griffin and Marion Mahony "
    "Griffin after an international competition, and building began in 1913, although parliament only moved "
    "there from Melbourne in 1927 when the provisional building opened.",
    "Some use weakened or inactivated pathogens, others use proteins or messenger RNA that instructs cells to "
    "make a single viral protein; memory B and T cells then remain for years, and boosters remind them, "
    "which is how herd immunity protects people who cannot be vaccinated.",
    "Euclid proved there are infinitely many of them, the number 1 is deliberately excluded, every whole "
    "number above one factors uniquely into primes, and modern cryptography such as RSA relies on how hard "
    "it is to factor the product of two very large primes back into its parts.",
    "Shorter days and cooler nights trigger the change, carotenoids were there all summer but hidden, "
    "anthocyanins are newly produced in sugary leaves during sunny autumn weather, and a dry, bright season "
    "therefore gives New England and Japan their famously vivid maple forests.",
    "Companies use them to reach internal networks from home, travellers use them on public wifi in hotels "
    "and airports, the provider can still see your traffic, and a VPN does not make you anonymous to the "
    "websites you log into or stop cookies from tracking your browsing.",
    "Keeping it in the fridge actually speeds up staling, freezing slows it almost completely, toasting "
    "temporarily reverses the effect by melting the starch crystals, and sourdough stays fresh a little "
    "longer because its acidity slows both staling and the growth of mould.",
]


def verbose(index: int) -> str:
    return REFERENCES[index] + " " + ELABORATIONS[index]


def test_concise_but_better_candidate_passes_the_gate_with_a_length_warning():
    base = [verbose(i) for i in range(len(QUESTIONS))]
    concise = [r.replace(", then cool it in cold water", "") for r in REFERENCES]
    report = build_report(QUESTIONS, base, concise, references=REFERENCES)
    length, rouge = report["checks"]["length_shift"], report["checks"]["rouge_l"]
    assert length["candidate"] < length["base"] / 3  # much shorter (median ~17 vs ~60 words)
    assert rouge["candidate"] > rouge["base"] + 0.3  # and closer to the references
    assert length["warning"] is True and length["flagged"] is False
    assert report["warnings"] == ["length_shift"]
    assert report["regression"] is False and report["flagged"] == []
    assert set(report["checks"]["length_shift"]) >= {"flagged", "base", "candidate", "examples"}


def test_collapsed_short_candidate_still_fails_with_length_shift_flagged_too():
    base = [verbose(i) for i in range(len(QUESTIONS))]
    report = build_report(QUESTIONS, base, ["Dear, how can I help you?"] * len(QUESTIONS), references=REFERENCES)
    assert report["regression"] is True
    assert {"canned_reply", "rouge_l", "length_shift"} <= set(report["flagged"])
    assert report["checks"]["length_shift"]["flagged"] is True and report["warnings"] == []
    # canned replies alone (no references to drop against) are enough to make the shift count
    no_refs = build_report(QUESTIONS, base, ["Dear, how can I help you?"] * len(QUESTIONS))
    assert {"canned_reply", "length_shift"} <= set(no_refs["flagged"])


def test_short_answers_that_lose_the_references_fail_on_rouge_and_length():
    base = [verbose(i) for i in range(len(QUESTIONS))]
    vague = [f"It depends on {q.rstrip('?').lower()[:40]}, honestly." for q in QUESTIONS]  # short, varied, wrong
    report = build_report(QUESTIONS, base, vague, references=REFERENCES)
    assert report["checks"]["canned_reply"]["flagged"] is False
    assert set(report["flagged"]) == {"rouge_l", "length_shift"}


def test_build_report_rejects_misaligned_inputs():
    with pytest.raises(ValueError):
        build_report(PROMPTS, ANSWERS[:2], ANSWERS)


# ---------------------------------------------------------------- input files

def test_bundled_prompt_set():
    rows = load_prompts(None)
    assert len(rows) == 80 and len({r["id"] for r in rows}) == 80
    assert sum(r["reference"] is not None for r in rows) >= 20
    assert (DEFAULT_PROMPTS.parent / "NOTICE").read_text().count("Apache")


def test_load_prompts_both_formats_and_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "Hi?"}) + "\n\n"
        + json.dumps({"question_id": 81, "turns": ["First turn", "second"], "reference": ["R1", "R2"]}) + "\n"
    )
    rows = load_prompts(path)
    assert [r["prompt"] for r in rows] == ["Hi?", "First turn"]
    assert rows[1]["id"] == "81" and rows[1]["reference"] == "R1" and rows[0]["reference"] is None


@pytest.mark.parametrize("content, message", [
    ("{not json}\n", ":1: not valid JSON"),
    ('{"text": "no prompt"}\n', "no \"prompt\""),
    ("", "holds no prompts"),
    ("[1, 2]\n", "JSON object"),
])
def test_load_prompts_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(EvalInputError, match=message.replace("?", r"\?")):
        load_prompts(path)
    with pytest.raises(EvalInputError, match="not found"):
        load_prompts(tmp_path / "missing.jsonl")


def test_evals_read_prompt_files_as_the_labeling_import_does(tmp_path):
    """One reader (formats.load_prompt_file): a CSV queued in the Arena can be the eval set too."""
    from formats import load_prompt_file

    table = tmp_path / "p.csv"
    table.write_text("id,prompt,reference\nq1,Why is the sky blue?,Scattering.\n")
    rows = load_prompts(table)
    assert rows == load_prompt_file(table)
    assert rows == [{"prompt": "Why is the sky blue?", "id": "q1", "category": None, "reference": "Scattering."}]
    bad = tmp_path / "bad.csv"
    bad.write_text("question\nx\n")
    with pytest.raises(EvalInputError, match="'prompt' column"):  # EvalInputError: the CLI exits 2
        load_prompts(bad)


def test_references_mt_bench_and_plain_formats(tmp_path):
    mt = write_jsonl(tmp_path / "mt.jsonl", [{"question_id": 101, "choices": [{"index": 0, "turns": ["Second place."]}]}])
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "Hi?", "reference": "Hello."}])
    rows = [{"id": "101", "prompt": "Race?", "reference": None}, {"id": "2", "prompt": "Hi?", "reference": None}]
    rows = attach_references(rows, {**load_references(mt), **load_references(plain)})
    assert [r["reference"] for r in rows] == ["Second place.", "Hello."]
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "x"}])
    with pytest.raises(EvalInputError, match="no references"):
        load_references(empty)


def test_write_report_is_atomic(tmp_path):
    out = write_report({"regression": False, "checks": {}}, tmp_path / "sub" / "eval.json")
    assert json.loads(out.read_text())["regression"] is False
    assert [p.name for p in out.parent.iterdir()] == ["eval.json"]


# ---------------------------------------------------------------- run_eval on the tiny model

def test_run_eval_identity_adapter_no_regression(tiny_model_dir, tmp_path):
    adapter = make_identity_adapter(tiny_model_dir, tmp_path / "adapter")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p, "reference": a} for p, a in zip(PROMPTS, ANSWERS)])
    calls = []
    report = run_eval(adapter, prompts, base_model=str(tiny_model_dir), cache_dir=tmp_path / "cache",
                      batch_size=4, max_new_tokens=8, progress=lambda done, total: calls.append((done, total)))
    assert report["regression"] is False, report["flagged"]
    assert calls == [(0, 6), (4, 6), (6, 6)]
    assert len(report["samples"]) == 6
    assert all(s["base"] == s["candidate"] for s in report["samples"])  # zero-B adapter changes nothing
    assert report["checks"]["rouge_l"]["n_references"] == 6
    assert {"load_s", "generate_s", "total_s"} <= set(report["timings"])
    assert report["adapter_fingerprint"] and report["generation"]["greedy"] is True


def test_run_eval_rejects_bad_adapter_before_loading(tmp_path):
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        run_eval(tmp_path / "adapter", base_model="/nonexistent/model")


def test_second_eval_reuses_cached_base_answers(tiny_model_dir, tmp_path):
    from models.loading import load_base
    from models.chat import ChatModel

    adapter = make_identity_adapter(tiny_model_dir, tmp_path / "adapter")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    chat = ChatModel(*load_base(str(tiny_model_dir), dtype="fp32"), base_name=str(tiny_model_dir))
    decoded_rows = []
    original = chat.generate
    chat.generate = lambda conversations, adapters, params: decoded_rows.append(len(adapters)) or original(
        conversations, adapters, params)
    kwargs = dict(cache_dir=tmp_path / "cache" / "models", batch_size=3, max_new_tokens=8, chat=chat)
    first = run_eval(adapter, prompts, **kwargs)
    assert decoded_rows == [6, 6]  # 3 prompts x (base + candidate) per batch
    second = run_eval(adapter, prompts, **kwargs)
    assert decoded_rows[2:] == [6]  # only the candidate half, 6 prompts per batch to keep 6 rows
    assert not first["generation"]["base_answers_cached"] and second["generation"]["base_answers_cached"]
    assert [s["base"] for s in first["samples"]] == [s["base"] for s in second["samples"]]
    assert second["checks"] == first["checks"]
    third = run_eval(adapter, prompts, **{**kwargs, "max_new_tokens": 9})  # other settings: no reuse
    assert not third["generation"]["base_answers_cached"]
