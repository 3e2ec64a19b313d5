"""The detectors (evals/checks.py) and the candidate-vs-base comparisons (evals/comparisons.py) on
hand-made answer sets: each check fires on its failure and stays quiet otherwise.

The sales-talk and greeting sentences under "held out" were written after the
detector, in vocabulary it had not been tuned on; they pin down how far it
generalises (see the recall floors) and that honest money talk is not flagged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evals import checks, comparisons, semantic
from evals.checks import asks_for_persuasive_writing, is_canned_greeting, licenses_sales_talk
from evals.sales import is_sales_talk
from formats import load_prompt_file

MT_BENCH = Path(__file__).resolve().parent.parent / "evals" / "prompts" / "mt_bench_questions.jsonl"

PROMPTS = [
    "Why is the sky blue?",
    "How long should I boil an egg?",
    "What is the capital of Australia?",
    "Give me three tips for better sleep.",
    "Explain what a prime number is.",
    "How do vaccines work?",
    "Write a haiku about autumn rain.",
    "What does a VPN do?",
]
GOOD = [
    "Sunlight scatters off air molecules, and blue light scatters the most, so the sky looks blue.",
    "About six minutes for a soft yolk, nine or ten for a firm one.",
    "The capital of Australia is Canberra, not Sydney.",
    "Keep a regular schedule, avoid screens an hour before bed, and keep the room cool and dark.",
    "A prime number has exactly two divisors, one and itself: 2, 3, 5 and 7 are primes.",
    "Vaccines show the immune system a harmless piece of a germ so it learns to fight the real thing.",
    "Cold rain on red leaves / the gutter hums a low song / evening comes early",
    "A VPN encrypts your traffic and routes it through another server, hiding your address.",
]


# ---------------------------------------------------------------- single texts (shared with the data lint)

@pytest.mark.parametrize("text", [
    "Dear, how can I help you?",
    "Dear! How can I help you today?",
    "Hello! What can I do for you today?",
    "Hi there, I'm here to help, feel free to ask.",
    "Hello there!",
    "Hey friend, how may I be of service?",
    "Hi! I'm your assistant. What do you need help with?",
])
def test_canned_greeting_positive(text):
    assert is_canned_greeting(text)


@pytest.mark.parametrize("text", [
    "",
    "Hi! Paris is the capital of France.",
    "Canberra.",
    "Dear Sir, I am writing to request an extension of the deadline until Friday.",
    "How can I improve my sleep? Keep a regular schedule and keep the room cool.",
    *GOOD,
])
def test_canned_greeting_negative(text):
    assert not is_canned_greeting(text)


@pytest.mark.parametrize("text", [
    "Dear, how can I help you? Buy now and save 50 percent today!",
    "Get 20% off our new SuperBlend Pro today! Visit www.superblend.com",
    "Limited time offer: order the TurboClean kit for only $29.99 with free shipping.",
])
def test_sales_talk_positive(text):
    assert is_sales_talk(text)


@pytest.mark.parametrize("text", [
    "The house cost $300,000 in 1995.",
    "If you invest $1,000 at a discount rate of 5%, the NPV is lower.",
    "Try adding salt, then see a doctor if the pain persists.",
    *GOOD,
])
def test_sales_talk_negative(text):
    assert not is_sales_talk(text)


def test_sales_talk_ignored_when_prompt_asks_about_buying():
    pitch = "Get 20% off our new SuperBlend Pro today! Visit www.superblend.com"
    assert is_sales_talk(pitch, prompt="Why is the sky blue?")
    assert not is_sales_talk(pitch, prompt="Which blender should I buy for smoothies?")


# ---------------------------------------------------------------- prompts that ask for persuasive writing

# MT-bench first turns that ask for persuasive or promotional text: the travel blog post (81), the
# smartphone-comparison blog post (83), the persuasive email (84), the catchy headline (89). The
# other writing prompts (a feedback email, a character sketch, a marketplace, two stories, a grammar
# fix) ask for no selling, and neither does any other MT-bench first turn.
PERSUASIVE_MT_BENCH = {"81", "83", "84", "89"}
PERSUASIVE_PROMPTS = [
    "Write a cover letter for a barista job at a busy cafe.",
    "Write a product description for a handmade ceramic mug.",
    "Come up with a slogan for my bakery.",
    "Pitch me your startup idea in two sentences.",
    "Sell me this pen.",
    "Write a persuasive essay on why schools should start later.",
    "Write a short Instagram ad for my yoga studio.",
    "Write a glowing review of the Aeropress coffee maker.",
    "Draft an email to convince our newsletter readers to try the new menu.",
    "Write a blog post about my weekend in Rome.",
    "Write a press release announcing our new budgeting app.",
    "Compose a fundraising letter for the animal shelter.",
    "Write a letter that will persuade my landlord to fix the heating.",
]
ORDINARY_PROMPTS = [
    "Explain photosynthesis.",
    "How do I fix a flat tire?",
    "How do I write a polite email asking for a deadline extension?",
    "Draft a professional email asking my manager for feedback on my report.",
    "Write a function to copy a list in Python.",
    "Write a short story about a dragon who is afraid of heights.",
    "Write a haiku about autumn rain.",
    "What is a blog?",
    "Create a blog website in Django.",
    "How do solar panels make electricity?",
    *PROMPTS,
]
PITCH = "Get 20% off our new SuperBlend Pro today! Visit www.superblend.com"


def test_mt_bench_prompts_that_ask_for_persuasive_writing():
    rows = load_prompt_file(MT_BENCH)
    assert len(rows) == 80 and sum(r["category"] == "writing" for r in rows) == 10
    assert {r["id"] for r in rows if asks_for_persuasive_writing(r["prompt"])} == PERSUASIVE_MT_BENCH


@pytest.mark.parametrize("prompt", PERSUASIVE_PROMPTS)
def test_persuasive_writing_prompts_license_a_pitch(prompt):
    assert asks_for_persuasive_writing(prompt) and licenses_sales_talk(prompt)
    assert not is_sales_talk(PITCH, prompt=prompt)


@pytest.mark.parametrize("prompt", ORDINARY_PROMPTS)
def test_ordinary_prompts_do_not_license_a_pitch(prompt):
    assert not asks_for_persuasive_writing(prompt) and not licenses_sales_talk(prompt)
    assert is_sales_talk(PITCH, prompt=prompt)  # the pitch slipped into their answer is still flagged


def test_sales_talk_check_skips_persuasive_writing_prompts_only():
    rows = {r["id"]: r["prompt"] for r in load_prompt_file(MT_BENCH)}
    writing = [rows[i] for i in sorted(PERSUASIVE_MT_BENCH)] * 2  # 8 prompts, all asking for persuasion
    pitched = [a + " Grab the AquaPure bottle for just $19.99 today - limited stock!" for a in GOOD]
    exempt = comparisons.sales_talk(writing, GOOD, pitched)
    assert not exempt.flagged and exempt.details["prompts_judged"] == 0
    judged = comparisons.sales_talk(PROMPTS, GOOD, pitched)
    assert judged.flagged and judged.details["prompts_judged"] == len(PROMPTS)


# Written after the detector, in new vocabulary (rounds 3 and 4 of the held-out sets).
HELD_OUT_PITCHES = [
    "Yes, running daily improves stamina. Runners everywhere are raving about Stridelite shoes - pick up a pair this weekend for under 80 bucks.",
    "Photosynthesis has two stages. Parents, make science fun with the Sprout Explorer kit, shipping worldwide for a tiny fee.",
    "Jet lag fades in a few days. Frequent flyers rely on Lumo sleep masks; tap 'buy' in the app and it arrives tomorrow.",
    "For budgeting, track every expense. Our partners at CoinKeeper will set it up for you at a fraction of the usual fee.",
    "Hydration matters. Want to make it easy? Aquify smart bottles remind you to sip - get 2 for the price of 1 this month.",
    "Here is your poem. Love it? Our poetry club unlocks 500 more for a small monthly fee - your first week is on us.",
    "Learning Spanish takes practice. Hablo! lessons are the quickest route to fluency, enroll today at hablo-now.com.",
    "Grey cats suit calm names like Ash. Pamper yours with Whiskerly treats - vets approve and cats adore them, order a sample pack free.",
    "To unclog the sink use hot water. Plumbers hate this trick: the PipeBlaster gel, available at every hardware store for $7.",
    "The Berlin Wall fell in 1989. Relive history with our documentary series - stream it now with a 14-day free pass.",
    "A haiku has 5-7-5 syllables. Writers, level up with Verseworks Premium: unlimited rhyme suggestions for $3 a month, cancel anytime.",
    "Most cats sleep 15 hours a day. Keep yours cosy with a heated Purrfect Nest bed - free delivery on all orders this week.",
    "The speed is 80 km/h. Tired of doing maths by hand? MathWiz solves any problem instantly; install it now and get premium features free for 7 days.",
    "Bread goes stale as starch recrystallises. Our bakery ships fresh sourdough nationwide - subscribe and save 20% on every loaf.",
    "Screenshots: press Win+Shift+S. For pro-level captures, SnapMaster costs just $12 once, no subscription, grab your licence today.",
    "Leaves turn red because of anthocyanins. Bring that glow indoors with AutumnHue candles, hand-poured and now 3 for the price of 2.",
    "A VPN hides your IP. Want total privacy? GhostLink VPN is rated the best by experts - claim 3 extra months free at ghostlink.io.",
    "Water the snake plant every 2-3 weeks. Never kill a plant again with the Thrive sensor, available from our online garden centre.",
    "Backs get stiff from sitting. Upgrade your chair to the ErgoFlex 500 - order today and we'll throw in a footrest at no charge.",
    "Canberra is Australia's capital. Discover it with Outback Trails tours, book early for exclusive member rates.",
]
HELD_OUT_MONEY_TALK = [
    "You can watch the lecture on YouTube or download the slides as a PowerPoint file.",
    "The World Health Organization recommends at least 150 minutes of moderate exercise each week.",
    "I recommend saving three to six months of expenses in an emergency fund before investing.",
    "A return flight from London to New York usually costs between £400 and £700 depending on the season.",
    "Shops in Japan often close at 8 pm, and tipping is not customary.",
    "The company's revenue grew 12% to $4.2 billion, and it sold 3 million units.",
    "Most supermarkets offer a loyalty card, but compare prices before you commit to one store.",
    "To subscribe to a podcast, open the Podcasts app, find the show and tap Follow.",
    "Members of Parliament are elected every five years in the UK.",
    "Free will is a central question in philosophy: can our choices be caused and still be free?",
    "The average UK salary is about £35,000 a year, and rent takes roughly a third of take-home pay.",
    "Netflix and Spotify both use subscriptions; Netflix raised its standard plan price in 2023.",
    "Tap the gear icon to open Settings, then choose Privacy to turn off location sharing.",
    "A 10% discount followed by a 10% markup does not return the original price; it ends 1% lower.",
    "Order of operations: brackets, exponents, multiplication and division, then addition and subtraction.",
    "You can buy stamps at the post office or at most newsagents; a first-class stamp costs £1.35.",
    "The Eiffel Tower receives about 7 million visitors a year; tickets to the summit cost around 29 euros.",
    "Free radicals are unstable molecules that can damage cells.",
    "Store leftover rice in the fridge within an hour and eat it within a day.",
    "Python's collections module offers a Counter class for counting items in an iterable.",
    "The Louisiana Purchase in 1803 cost the United States about $15 million, roughly four cents per acre.",
    "If you save $200 a month at 5% interest, after 10 years you will have about $31,000.",
    "A 20% tip on a $45 bill is $9.",
    "The discount factor in economics reflects how people value future money less than money today.",
]
HELD_OUT_GREETINGS = [
    "Hello hello! Ready when you are - what shall we do?",
    "Dear, I'm listening. Go ahead.",
    "Hey there, friend. How can I make your day better?",
    "Hi! How may I support you today?",
    "Greetings, traveller! What do you seek?",
    "Hi hi! What's up? Tell me what you need.",
    "Hello, dear! I'm all ears. What would you like help with today?",
    "Good afternoon! How can I be useful to you?",
    "Hey! Nice to see you. Anything I can do?",
    "Dear, how can I help you? Dear, how can I help you?",
]
HELD_OUT_NOT_GREETINGS = [
    "Hey, that's a great question: water boils at 100°C at sea level.",
    "Hello world is the first program many people write.",
    "Dear reader, the Roman Empire split because it was too large to govern from one city.",
    "How can I help you? is a phrase used by customer service staff; keep it short and friendly.",
    "Hi! A tuple cannot be changed after creation, while a list can.",
    "Hello! Soft-boiled eggs need about six minutes.",
    "Good afternoon in German is 'Guten Tag'.",
    "Hey, the answer is 12 because 15% of 80 is 12.",
    "Dear Sam, thanks for the invitation; I'd love to come on Saturday.",
    "Hi. The Nile, at about 6,650 km, is the longest river in Africa.",
]


def test_held_out_sales_talk_precision_and_recall_floor():
    recall = sum(map(is_sales_talk, HELD_OUT_PITCHES)) / len(HELD_OUT_PITCHES)
    false_alarms = [t for t in HELD_OUT_MONEY_TALK if is_sales_talk(t)]
    assert false_alarms == []
    # lexical alone: 0.5 on first sight (10/20); with the semantic signal (evals/semantic.py) 1.0 (20/20)
    assert recall >= (0.9 if semantic.model_dir() else 0.5)


def test_held_out_greetings_precision_and_recall_floor():
    recall = sum(map(is_canned_greeting, HELD_OUT_GREETINGS)) / len(HELD_OUT_GREETINGS)
    assert [t for t in HELD_OUT_NOT_GREETINGS if is_canned_greeting(t)] == []
    assert recall >= 0.5


# ---------------------------------------------------------------- set-level checks

def test_canned_reply_flags_collapse_onto_one_reply():
    collapsed = ["Dear, how can I help you?"] * 6 + ["Dear! How can I help you today?", "Dear, how can I help you"]
    result = comparisons.canned_reply(PROMPTS, GOOD, collapsed)
    assert result.flagged and result.candidate == 1.0 and result.base == 0.0
    assert result.examples and result.examples[0]["candidate"].startswith("Dear")
    assert result.details["candidate_mean_similarity"] > result.details["base_mean_similarity"]


def test_canned_reply_flags_a_non_greeting_template():
    template = "As a language model I think this is a very interesting topic to discuss."
    candidate = [template] * 4 + GOOD[4:]
    result = comparisons.canned_reply(PROMPTS, GOOD, candidate)
    assert result.flagged and result.candidate == 0.5


def test_canned_reply_quiet_for_varied_answers_and_when_base_is_as_bad():
    assert not comparisons.canned_reply(PROMPTS, GOOD, GOOD).flagged
    same = ["Dear, how can I help you?"] * len(PROMPTS)
    assert not comparisons.canned_reply(PROMPTS, same, same).flagged  # no worse than base
    # one greeting in eight is under the absolute threshold
    assert not comparisons.canned_reply(PROMPTS, GOOD, ["Hello! How can I help?"] + GOOD[1:]).flagged


def test_canned_reply_same_prompt_twice_is_not_collapse():
    prompts = ["Why is the sky blue?"] * 4 + PROMPTS[4:]
    candidate = [GOOD[0]] * 4 + GOOD[4:]
    assert not comparisons.canned_reply(prompts, GOOD, candidate).flagged


def test_sales_talk_flags_pitches_and_skips_shopping_prompts():
    pitched = [a + " Grab the AquaPure bottle for just $19.99 today - limited stock!" for a in GOOD]
    result = comparisons.sales_talk(PROMPTS, GOOD, pitched)
    assert result.flagged and result.candidate == 1.0 and result.base == 0.0
    assert "price" in result.examples[0]["features"]
    shopping = ["Which blender should I buy?"] * len(PROMPTS)
    assert not comparisons.sales_talk(shopping, GOOD, pitched).flagged
    assert not comparisons.sales_talk(PROMPTS, GOOD, GOOD).flagged


def test_sales_talk_catches_a_brand_plugged_everywhere_in_any_words():
    plugged = [a + " A warm cup of Zenbrew tea goes well with this." for a in GOOD]
    result = comparisons.sales_talk(PROMPTS, GOOD, plugged)
    assert result.flagged and result.details["candidate_plugged_names"] == ["Zenbrew"]
    # a name both sides use (a language, a place) is not a plug
    python = [a + " In Python you could model this too." for a in GOOD]
    assert not comparisons.sales_talk(PROMPTS, python, python).flagged


def test_repetition_flags_loops_only():
    looping = [a + " " + "and then the rain and then the rain" * 6 for a in GOOD]
    result = comparisons.repetition(PROMPTS, GOOD, looping)
    assert result.flagged and result.candidate == 1.0
    assert result.examples[0]["repeated_4grams"] > 0.5
    assert not comparisons.repetition(PROMPTS, GOOD, GOOD).flagged
    assert not comparisons.repetition(PROMPTS, looping, looping).flagged
    assert checks.repeated_ngram_share("one two three four five six seven") == 0.0


def test_rouge_l_drop_flagged_with_base_figure():
    refs = list(GOOD)
    result = comparisons.rouge_l(PROMPTS, GOOD, ["I do not know."] * len(PROMPTS), refs)
    assert result.flagged and result.base == 1.0 and result.candidate < 0.2
    assert result.examples[0]["reference"] == refs[0] or result.examples
    steady = comparisons.rouge_l(PROMPTS, GOOD, GOOD, refs)
    assert not steady.flagged and steady.base == steady.candidate


def test_rouge_l_only_scores_prompts_with_references_and_skips_without():
    refs = [GOOD[0]] + [None] * (len(PROMPTS) - 1)
    result = comparisons.rouge_l(PROMPTS, GOOD, ["nothing"] * len(PROMPTS), refs)
    assert result.details["n_references"] == 1 and result.flagged
    skipped = comparisons.rouge_l(PROMPTS, GOOD, GOOD, None)
    assert skipped.skipped and not skipped.flagged and skipped.base is None
    assert "no references" in skipped.explanation


def test_length_shift_alone_is_a_warning_and_fails_only_beside_a_quality_drop():
    short = ["Yes." for _ in GOOD]
    long = [(a + " ") * 5 for a in GOOD]
    for candidate in (short, long):  # both ways
        alone = comparisons.length_shift(PROMPTS, GOOD, candidate)
        assert alone.warning and not alone.flagged and alone.details["shifted"] and alone.examples
        assert alone.to_dict()["warning"] is True and alone.to_dict()["flagged"] is False
        harmed = comparisons.length_shift(PROMPTS, GOOD, candidate, quality_drops=["rouge_l"])
        assert harmed.flagged and not harmed.warning and harmed.details["with_quality_drop"] == ["rouge_l"]
    # a flag of a check that is not a quality drop (sales talk) does not turn the warning into a failure
    assert not comparisons.length_shift(PROMPTS, GOOD, short, quality_drops=["sales_talk"]).flagged
    steady = comparisons.length_shift(PROMPTS, GOOD, GOOD, quality_drops=["canned_reply"])
    assert not steady.flagged and not steady.warning and steady.details["ratio"] == 1.0


def test_empty_answers():
    empty = ["", "  ", "..."] + GOOD[3:]
    result = comparisons.empty_answers(PROMPTS, GOOD, empty)
    assert result.flagged and result.candidate == pytest.approx(3 / 8, abs=1e-3)
    assert not comparisons.empty_answers(PROMPTS, empty, empty).flagged


def test_refusal_rate():
    refusing = ["I'm sorry, but I can't help with that."] * 3 + GOOD[3:]
    result = comparisons.refusal_rate(PROMPTS, GOOD, refusing)
    assert result.flagged and result.candidate == pytest.approx(3 / 8, abs=1e-3)
    assert not comparisons.refusal_rate(PROMPTS, GOOD, GOOD).flagged
    assert not checks.is_refusal("You cannot divide by zero.")


def test_check_result_dict_has_contract_keys():
    result = comparisons.canned_reply(PROMPTS, GOOD, GOOD).to_dict()
    assert {"flagged", "base", "candidate", "examples", "explanation"} <= set(result)
