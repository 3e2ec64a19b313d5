"""Eval thresholds and defaults: the one place where the gate's numbers live.

Every check compares candidate with base on the same prompts. A check flags
only when the candidate is bad in absolute terms AND worse than the base by a
margin, so a weak base model (a 135M model loops and rambles on its own) does
not make every checkpoint fail, and a small base/candidate wobble on a few
prompts does not either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Thresholds:
    # -- canned_reply: the model collapses onto one reply for unrelated prompts.
    # Two answers are near-duplicates when their character 3-gram sets overlap this much
    # (Jaccard). 0.6 keeps "Dear, how can I help you?" and "Dear! How can I help you today?"
    # together while two genuine answers on different topics stay far below 0.3.
    near_duplicate_jaccard: float = 0.6
    # Flag when this share of answers is canned (largest near-duplicate cluster or a
    # greeting template)... a quarter of all answers being one reply is never normal.
    canned_share_max: float = 0.25
    # ...and the candidate is at least this much worse than the base on the same prompts.
    canned_share_margin: float = 0.15
    # A single text is a greeting template when, after removing greeting / offer-of-help
    # phrases, at most this many content words remain.
    greeting_leftover_words: int = 4

    # -- sales_talk: unrequested pitches. A text is sales talk when its feature-family
    # score reaches this (see checks.sales_score: 1 point per family, strong families 2).
    sales_score_min: float = 3.0
    # ...or when a sentence encoder gives one of its sentences at least this probability of
    # being a pitch (evals/semantic.py: a logistic regression on all-MiniLM-L6-v2 embeddings,
    # fitted on evals/data/sales_seed.jsonl). An answer scores its most pitch-like sentence,
    # so every extra sentence is another chance of a false alarm. Chosen by 5-fold
    # cross-validation on the seed set: at 0.7 the held-out folds caught ~2/3 of the pitch
    # sentences, flagged ~4% of the deliberately pitch-like honest ones and none of the 60
    # MT-bench reference answers; at the class-balanced 0.5 they caught ~7/8 but flagged
    # 12% of honest sentences and 7% of MT-bench answers, too noisy for a 5% gate.
    sales_semantic_min: float = 0.7
    # Flag when this share of answers (to prompts that did not ask about buying) pitch...
    sales_share_max: float = 0.05
    # ...and the candidate pitches at least this much more often than the base.
    sales_share_margin: float = 0.05

    # -- repetition: an answer loops when this share of its word 4-grams are repeats.
    # Prose rarely passes 0.1; a degenerate "the the the" loop goes to 0.9+.
    repeated_4gram_share: float = 0.3
    # Answers shorter than this many words are too short to judge looping.
    repetition_min_words: int = 12
    # Flag when this share of answers loop and the candidate is this much worse than base.
    looping_share_max: float = 0.2
    looping_share_margin: float = 0.1

    # -- rouge_l: flag when mean ROUGE-L F1 against references drops this much below base
    # (absolute). ROUGE moves ~0.01-0.02 between reruns of similar checkpoints.
    rouge_drop_margin: float = 0.05

    # -- length_shift: flag when the median answer length (words) changes by more than
    # this factor either way; over-cooked DPO rounds tend to balloon or truncate answers.
    length_ratio_max: float = 2.0

    # -- empty_answers: flag when this share of answers is empty and it grew by the margin.
    empty_share_max: float = 0.05
    empty_share_margin: float = 0.05

    # -- refusal_rate: flag when refusals grow by this much (absolute share of prompts).
    refusal_margin: float = 0.15

    # -- sales_talk and repetition also need the candidate to be worse on more prompts
    # than chance explains: a one-sided exact McNemar (sign) test on the prompts where
    # base and candidate disagree must give p at most this. Why: those two detectors fire
    # on some of a 135M model's own answers (sales_talk on ~13% of SmolLM2's base answers
    # to the default set, looping on ~17%), so between two harmless checkpoints their
    # shares move by about 5 points on 80 prompts by chance, as much as the margins. A real
    # regression is far past it (a pitching adapter: dozens of new hits, p < 1e-6). It
    # also means fewer than 5 disagreeing prompts can never flag them (2^-4 > 0.05).
    # Empty answers and refusals are exact patterns with no such noise: margins alone.
    paired_p_value_max: float = 0.05

    # How many offending examples each check keeps in the report, and how much text of each.
    max_examples: int = 3
    example_chars: int = 300

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_THRESHOLDS = Thresholds()

# Generation defaults for run_eval: greedy and short, so ~100 prompts x 2 sides finish in a
# few minutes on 2 CPU cores; 128 tokens is enough to see collapse, pitches and loops.
DEFAULT_MAX_NEW_TOKENS = 128
# 8 prompts = 16 rows (base + candidate). On 2 cores, fp32 throughput peaks around 16 rows;
# wider batches pad long MT-bench prompts and get slower (bench/bench_eval.py).
DEFAULT_BATCH_SIZE = 8
# fp32, not the app's bf16: batched CPU decoding is 2-3x faster in fp32 (bench/bench_eval.py).
DEFAULT_DTYPE = "fp32"
