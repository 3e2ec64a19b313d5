"""Pure single-text detectors: a text (or a set of texts) in, a verdict out. No generation, no I/O.

These are the one definition of "canned reply", "sales talk", "looping" and
"refusal" that both the labeling data lint (labeling/lint.py) and the eval
comparison checks (evals/comparisons.py) use, so the data and the checkpoint
are judged alike. The sales detector lives in evals/sales.py and is re-exported
here: labeling reaches it through this module only. Thresholds come from
evals/config.py.
"""

from __future__ import annotations

import re

from evals.config import DEFAULT_THRESHOLDS, Thresholds
from evals.sales import (
    are_sales_talk, asks_about_buying, asks_for_persuasive_writing, is_sales_talk, licenses_sales_talk, sales_features,
    sales_score,
)

__all__ = [
    "are_sales_talk", "asks_about_buying", "asks_for_persuasive_writing", "char_ngrams", "distinct_n",
    "is_canned_greeting", "is_refusal", "is_sales_talk", "jaccard", "licenses_sales_talk", "loops",
    "mid_sentence_names", "names_its_model", "normalise", "recurring_names", "repeated_ngram_share", "sales_features", "sales_score",
    "words",
]

# ---------------------------------------------------------------- text helpers

WORD = re.compile(r"\w+(?:'\w+)?")
TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def char_ngrams(text: str, n: int = 3) -> set[str]:
    text = normalise(text)
    if len(text) <= n:
        return {text} if text else set()
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def distinct_n(answers: list[str], n: int = 2) -> float:
    """Unique word n-grams / all word n-grams over the whole answer set (1 = no reuse)."""
    grams = [tuple(w[i : i + n]) for a in answers for w in [words(a)] for i in range(len(w) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0



# ---------------------------------------------------------------- canned greetings

# Phrases that make up a greeting template; what is left after removing them is the content.
_GREETING = re.compile(
    r"\b(?:hi|hello|hey|hiya|greetings|dear|good (?:morning|afternoon|evening|day)|welcome|"
    r"how are you(?: doing)?|how'?s it going|nice to (?:meet|see|hear from) you|my (?:dear )?friend)\b"
)
_HELP_OFFER = re.compile(
    r"\b(?:how (?:can|may|could|might|shall) i (?:help|assist|serve|support|be of (?:help|assistance|service))|"
    r"what can i (?:do|help you with|assist you with)|"
    r"(?:is there )?anything (?:else )?(?:that )?i can (?:help|assist|do)|"
    r"(?:i'?m|i am) (?:here|happy|glad|always happy|ready|available) to (?:help|assist)|"
    r"(?:feel free to|don'?t hesitate to) (?:ask|reach out|contact)|"
    r"let me know (?:if|how|what) (?:you|i)|"
    r"thanks? (?:you )?for (?:reaching out|contacting|your (?:question|message))|"
    r"what(?:'s| is) on your mind|at your service|what (?:would|do) you (?:like|want|need|wish)|"
    r"what brings you|(?:i'?m|i am) (?:always )?here for you|ask me anything|tell me (?:how|what)|"
    r"(?:i'?m|i am) (?:an? )?(?:ai |virtual |friendly |helpful )*assistant)\b|"
    # any short question back about helping: "What can I help with?", "Where can I assist?"
    r"\b(?:how|what|where|anything|something)\b[^.?!]{0,25}\b(?:i|we)\b[^.?!]{0,20}"
    r"\b(?:help|assist|serve|support|do for you|be (?:useful|of use))\b[^.?!]{0,20}\?"
)
# Words that carry no answer even when left over ("Dear, how can I help you today?").
_FILLER = set(
    "a an the you your you're i i'm me my we us our it it's is are am be to of for with in on "
    "and or so just today there here please now with that this anything something else "
    "can may do would like need want".split()
)


def is_canned_greeting(text: str, t: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """True for a template reply that greets / offers help and answers nothing.

    "Dear, how can I help you?", "Hello! What can I do for you today?" and
    "Hi there, I'm here to help, feel free to ask" are canned; an answer that
    merely opens with "Hi!" and then says something is not.
    """
    lowered = normalise(text)
    if not lowered:
        return False
    offers = _HELP_OFFER.findall(lowered)
    stripped = _HELP_OFFER.sub(" ", lowered)
    greetings = _GREETING.findall(stripped)
    stripped = _GREETING.sub(" ", stripped)
    leftover = [w for w in words(stripped) if w not in _FILLER]
    if offers:
        return len(leftover) <= t.greeting_leftover_words
    return bool(greetings) and not leftover  # nothing but greetings ("Hello there!")


# ---------------------------------------------------------------- looping, refusals

def repeated_ngram_share(text: str, n: int = 4) -> float:
    tokens = TOKEN.findall(text.lower())
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def loops(text: str, t: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """A long-enough answer whose 4-grams are mostly repeats: the model is stuck in a loop."""
    return len(words(text)) >= t.repetition_min_words and repeated_ngram_share(text) >= t.repeated_4gram_share


_REFUSAL = re.compile(
    r"\b(?:i (?:can(?:'|no)?t|cannot|am (?:not able|unable)|'m (?:not able|unable)|won'?t|will not|must decline) "
    r"(?:to )?(?:help|assist|provide|answer|do|comply|fulfill|create|write|share|give|discuss)|"
    r"i'?m sorry,? but|as an ai(?: language model)?,? i|i apologi[sz]e,? but|"
    r"against my (?:guidelines|policy|programming)|i'?m not (?:allowed|permitted) to)"
)


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text.lower()))


# ---------------------------------------------------------------- brand names plugged across answers

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_NAME = re.compile(r"\b[A-Z][a-zA-Z+]{2,}\b")


def mid_sentence_names(text: str) -> set[str]:
    """Capitalised words that do not start a sentence: candidate brand names."""
    names = set()
    for sentence in _SENTENCE.split(text):
        names |= {m.group() for m in _NAME.finditer(sentence) if m.start() > 0}
    return names


def recurring_names(prompts: list[str], answers: list[str], min_answers: int = 3) -> set[str]:
    """Names an answer set keeps bringing up across different prompts that never mention them.

    A model trained on adverts plugs the same brand everywhere; this catches it
    whatever words the pitch uses around the name.
    """
    prompt_words = set(words(" ".join(prompts)))
    counts: dict[str, set[str]] = {}
    for prompt, answer in zip(prompts, answers):
        for name in mid_sentence_names(answer):
            if name.lower() not in prompt_words:
                counts.setdefault(name, set()).add(normalise(prompt))
    return {n for n, ps in counts.items() if len(ps) >= max(min_answers, len(answers) // 10)}


# ---------------------------------------------------------------- an answer that says which model wrote it

# Names a chat model calls itself, and the makers it credits. Matched only where the answer speaks of
# itself ("As SmolLM, I…", "I am an AI assistant developed by Hugging Face"): explaining what GPT-4
# is does not unblind anyone.
_MODEL = (r"smol\s?lm\d*|chat\s?gpt|gpt-?\d[\w.-]*|claude|llama\s?\d*|qwen[\d.]*|mistral|mixtral|gemma\s?\d*|"
          r"gemini|bard|phi-?\d*|falcon|vicuna|zephyr|olmo|deepseek|copilot|command\s?r")
_MAKER = (r"hugging\s?face|openai|anthropic|google(?:\s+deepmind)?|deepmind|meta(?:\s+ai)?|mistral\s+ai|microsoft|"
          r"alibaba(?:\s+cloud)?|deepseek|allen\s+institute|cohere")
_SELF_NAMED = re.compile(
    rf"\b(?:as|i\s+am|i'm|i’m|my\s+name\s+is|call\s+me|this\s+is)\s+(?:an?\s+|the\s+)?"
    rf"(?:ai\s+|language\s+|assistant\s+|model\s+|called\s+|named\s+)*(?:{_MODEL})\b|"
    rf"\b(?:i|i'm|i’m|my|me)\b[^.!?\n]{{0,60}}?\b(?:developed|created|trained|built|made|"
    rf"designed|released|brought\s+to\s+you)\s+by\s+(?:the\s+)?(?:{_MAKER})\b",
    re.IGNORECASE,
)


def names_its_model(text: str) -> str | None:
    """The words by which an answer names the model or maker behind it ("As SmolLM, I", "I am an AI
    assistant developed by Hugging Face"), or None. Either side doing so breaks a blind comparison."""
    found = _SELF_NAMED.search(text or "")
    return " ".join(found.group().split()) if found else None
