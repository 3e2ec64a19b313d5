"""An answer that names its model breaks a blind comparison: the pure detector (evals.checks.names_its_model),
the data lint's warning naming the comparison, and the Arena's note after the vote."""

from __future__ import annotations

import pytest

from evals.checks import names_its_model
from labeling.lint import lint
from labeling.store import Store


@pytest.mark.parametrize("text, found", [
    ("As SmolLM, I can help with that. Paris is the capital.", "As SmolLM"),
    ("I am an AI assistant developed by Hugging Face. The answer is 4.", "I am an AI assistant developed by Hugging Face"),
    ("Hello! I'm ChatGPT, a language model.", "I'm ChatGPT"),
    ("My name is Claude and I like questions.", "My name is Claude"),
    ("I was trained by OpenAI on lots of text.", "I was trained by OpenAI"),
    ("As a language model named Qwen2.5, I think so.", "As a language model named Qwen2.5"),
])
def test_answers_that_name_their_model_or_maker_are_caught(text, found):
    assert names_its_model(text) == found


@pytest.mark.parametrize("text", [
    "GPT-4 is a large language model developed by OpenAI.",  # about a model, not itself
    "Llamas live in the Andes; Meta is a company.",
    "As an AI language model, I cannot browse the web.",  # no name: both sides could say it
    "The Falcon 9 rocket was built by SpaceX.",
    "",
])
def test_talking_about_models_is_not_naming_oneself(text):
    assert names_its_model(text) is None


def test_the_lint_warns_and_names_the_comparison():
    rows = [{"prompt": [{"role": "user", "content": "Who are you?"}],
             "chosen": [{"role": "assistant", "content": "Paris is the capital of France."}],
             "rejected": [{"role": "assistant", "content": "I am SmolLM, made by Hugging Face."}]},
            {"prompt": [{"role": "user", "content": "Capital?"}],
             "chosen": [{"role": "assistant", "content": "Paris."}],
             "rejected": [{"role": "assistant", "content": "Lyon."}]}]
    report = lint(rows, ["c-named", "c-clean"])
    [issue] = [i for i in report.issues if i.code == "names_model"]
    assert issue.severity == "warning" and [r["comparison_id"] for r in issue.rows] == ["c-named"]
    assert issue.rows[0]["answer"] == "I am SmolLM, made by Hugging Face."
    assert report.ok  # a warning: shown with its comparison, kept unless a reviewer excludes it


def test_the_arena_marks_the_comparison_and_says_so_after_the_vote(data_dir):
    from models.chat import SamplingParams
    from ui import arena
    from ui.services import Services
    from ui.settings import Settings

    with Store(data_dir) as store:
        services = Services(Settings(data_dir=data_dir), chat=None, store=store)  # base vs base: no model needed
        texts = ["Paris is the capital.", "As SmolLM, I can tell you: Paris."]
        state = arena.record_comparison(services, [{"role": "user", "content": "Capital of France?"}],
                                        ["base", "base"], texts, [True, True], SamplingParams(), "ann", None)
        assert store.get_comparison(state["id"])["params"]["names_model"] == [None, "As SmolLM"]
        _, reveal, *_ = arena.vote(services, "a", state, "")
        assert "Vote saved" in reveal and "Answer B (“As SmolLM”) named the model" in reveal
        clean = arena.record_comparison(services, [{"role": "user", "content": "2+2?"}], ["base", "base"],
                                        ["4.", "Four."], [True, True], SamplingParams(), "ann", None)
        assert "names_model" not in store.get_comparison(clean["id"])["params"]
        assert "named the model" not in arena.vote(services, "a", clean, "")[1]
