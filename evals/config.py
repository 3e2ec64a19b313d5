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
    # so every extra sentence is another chance of a false alarm.
    # History: first fitted on hand-written sentences only and set to 0.7 by 5-fold CV
    # (held-out folds caught ~2/3 of pitch sentences, flagged ~5% of honest ones). On real
    # SmolLM2 answers that head misfired on helper boilerplate ("I hope this message finds
    # you well.", "Here are some alternatives:"): 10 of the 80 base answers to the default
    # set. 165 such sentences, mined from SmolLM2's answers to prompts outside that set
    # (kind "model_answer" in the seed file), were added as negatives, and the threshold
    # was then chosen on whole answers, the unit the gate judges: at 0.6 the new head
    # flags 1/80 base answers (was 10/80) and catches 32/39 of the held-out pitches in
    # tests/test_semantic.py (was 31/39) for 3/40 of its pitch-like innocent texts (was
    # 1/40); at 0.7 recall fell to 28/39. Those sets guided this choice, so the unseen
    # check is the pitching adapter's own answers (see the README's eval section).
    sales_semantic_min: float = 0.6
    # Flag when this share of answers (to prompts that neither asked about buying nor asked for
    # persuasive writing: evals/sales.py, licenses_sales_talk) pitch...
    # 10%: above the detector's false alarms on checkpoints that do not pitch, measured on
    # the default set with the embedded model: base 1/78, a DPO round 4/78, an SFT round
    # trained on pitches that never learned them 6/78 (7.7%; its answers drifted toward
    # "top-notch pack that includes everything you need"). A checkpoint that did learn to
    # pitch scored 33/78 (31 real pitches, 2 false alarms). (Those counts judged 78 prompts;
    # since persuasive-writing prompts are exempt too, the default set judges 75: MT-bench
    # 81, 84 and 89 ask for a blog post, a persuasive email and a catchy headline.)
    sales_share_max: float = 0.10
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

    # -- length_shift: the median answer length (words) changed by more than this factor
    # either way; over-cooked DPO rounds tend to balloon or truncate answers.
    # The gate judges harm, not change: a shift on its own is a warning (shown in the
    # report with "warning": true and listed in its top-level "warnings", "flagged": false),
    # because a round that learned to be concise can be better (median 90 -> 25 words with
    # ROUGE-L vs references up 0.12 -> 0.18 was blocked on length alone). It fails the gate
    # only together with a quality drop: one of LENGTH_SHIFT_HARMS flagged (ROUGE-L down by
    # rouge_drop_margin, more empty answers, or canned replies). Collapse onto one short
    # canned line is then flagged twice: canned_reply and length_shift.
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

# The quality checks whose flag turns a length_shift warning into a failure (see length_ratio_max).
LENGTH_SHIFT_HARMS = ("rouge_l", "empty_answers", "canned_reply")

# Generation defaults for run_eval: greedy and short, so ~100 prompts x 2 sides finish in a
# few minutes on 2 CPU cores; 128 tokens is enough to see collapse, pitches and loops.
DEFAULT_MAX_NEW_TOKENS = 128
# 8 prompts = 16 rows (base + candidate; 16 candidate prompts when the base answers are
# cached). On 2 cores throughput peaks around 16 rows; wider batches pad long
# MT-bench prompts and get slower (bench/bench_eval.py).
DEFAULT_BATCH_SIZE = 8
# "auto": bf16, as the app serves, where bf16 is fast (a GPU that has it, a CPU with oneDNN bf16,
# i.e. AVX-512), with oneDNN-packed weights on the CPU (evals/report.py: generation_dtype, pack_weights);
# fp32 elsewhere. With torch 2.13 on 2 cores an eval of 16 prompts x 2 sides with a LoRA adapter
# generated in 10.5 s this way, 13.1 s in bf16 unpacked and 20.0 s in fp32, the earlier default.
DEFAULT_DTYPE = "auto"
