"""Is this text a sales pitch? The single-text detector behind the `sales_talk` check.

Two halves, OR-ed: lexical feature families (prices, discounts, calls to action,
urgency, hype, "our product", invented brand names, links and promo codes),
where a text needs several families before it counts, and a small sentence
encoder's verdict (evals/semantic.py) for pitches worded in ways no pattern
lists. The encoder is loaded on the first text the lexical half leaves
undecided, never at import. Without the encoder installed the lexical half
works alone. The labeling data lint shares `are_sales_talk` (through
evals.checks) with the eval check.
"""

from __future__ import annotations

import re

from evals.config import DEFAULT_THRESHOLDS, Thresholds

# Feature families of a pitch; a text scores one point per family present (strong ones two).
# No single family is damning (prices and "amazing" appear in honest answers); several are.
_COMMERCE_NOUN = (
    r"(?:our|store|shop|website|site|link|offer|deal|app|membership|subscription|plan|premium|today|now|online|"
    r"checkout|cart|free|yours|pass|bundle|kit|package|trial|consultation|catalog(?:ue)?|collection|range)"
)
_SALES_FAMILIES: dict[str, tuple[int, re.Pattern]] = {
    "price": (1, re.compile(
        r"(?:[$€£¥₹]\s?\d)|(?:\d(?:[\d,.]*)\s?(?:dollars|usd|eur|euros?|bucks|pounds|gbp|quid)\b)|"
        r"(?:\b(?:just|only|from|starting at|as low as|reduced to|marked down to|yours for)\s+[$€£¥₹]?\d)|"
        r"(?:\d\s?/\s?(?:mo|month|yr|year)\b)|(?:\bper (?:month|year)\b)|\bpriced? at\b|"
        r"\b(?:introductory|launch|special|member|sale) (?:price|pricing|rate)\b|\bfor (?:under|less than) [$€£]?\d|"
        r"\bfraction of the (?:usual |regular |normal )?(?:price|cost|fee)\b|\bsmall (?:monthly |yearly )?fee\b|"
        r"\bprice of (?:one|\d)\b|\b(?:monthly|yearly|annual) (?:fee|plan|subscription)\b")),
    "discount": (2, re.compile(
        r"\b(?:\d+\s?%|(?:\d+|ten|fifteen|twenty|twenty-five|thirty|forty|fifty|half)\s?(?:percent|per cent))\s?"
        r"(?:off|savings|discount|cheaper)\b|\bcosts? nothing\b|\bat no (?:extra )?cost\b|\bwelcome bonus\b|"
        r"\bsave (?:up to |big|\d+\s?(?:%|percent)|[$€£]\d+ on\b)|\bcoupons?\b|\bpromo(?:tion(?:al)?)?\b|\bhalf[- ]price\b|"
        r"\bfree (?:shipping|delivery|trial|gift)\b|\bships? free\b|\bfree for the first\b|\b(?:one|\w+) (?:\w+ )?free\b(?= with|$|[.!])|"
        r"\b(?:buy|order) (?:one|two|\d),? get\b|\b(?:two|2) for (?:one|1)\b|\bbogo\b|\bclearance\b|\bon sale\b|"
        r"\bflash sale\b|\bspecial (?:offer|deal)\b|\bcomplimentary\b|\b(?:discount|discounted)(?! (?:rate|factor|function))\b|"
        r"\bbargain\b|\bdeal of the\b|\b(?:reduced|marked down|slashed) to\b|\bmoney[- ]back\b|\bis on us\b|"
        r"\b\d+[- ]day (?:free )?(?:trial|pass)\b|\bfree (?:pass|sample|pack|month|week)\b")),
    "call_to_action": (1, re.compile(
        r"\b(?:buy|order|shop|purchase|subscribe|grab|claim|upgrade|pre-?order|add (?:it )?to (?:your )?cart|"
        r"get yours|order yours|reserve yours|treat yourself|treat your \w+ to|snag|stock up|enroll)\b|"
        r"\b(?:visit|check out|click|tap|call|download|join|book|sign up|try|head (?:over )?to|pop over to|"
        r"register|reserve|get)\b(?:\W+\w+){0,5}?\W+" + _COMMERCE_NOUN + r"\b")),
    "urgency": (1, re.compile(
        r"\blimited[- ](?:time|stock|edition|offer|supply)\b|\btoday only\b|\bact (?:now|fast|quickly)\b|\bhurry\b|"
        r"\bwhile (?:supplies|stocks?) last\b|\bdon'?t miss\b|\bbefore (?:it'?s|they'?re) (?:gone|too late)\b|"
        r"\b(?:ends|expires|disappears?|gone) (?:soon|tonight|today|at midnight|on \w+day|this week)\b|"
        r"\blast chance\b|\bonly \d+ left\b|\bselling (?:out )?fast\b|\brunning (?:out|low)\b|\bexclusive(?:ly)?\b|"
        r"\balmost (?:gone|sold out)\b|\bfill(?:s|ing)? up (?:fast|quickly)\b|\bdon'?t wait\b|\bwhy wait\b|"
        r"\b(?:offer|sale|deal|price) (?:ends|expires)\b|\bnow or never\b|\bfor a limited\b|\b(?:members|subscribers) only\b|"
        r"\bthis (?:weekend|week|month) only\b|\b(?:arrives|delivered|ships) (?:tomorrow|today|overnight)\b")),
    "hype": (1, re.compile(
        r"\b(?:best[- ]selling|revolutionary|world[- ]class|unbeatable|top[- ]rated|award[- ]winning|game[- ]chang\w+|"
        r"must[- ]have|cutting[- ]edge|state[- ]of[- ]the[- ]art|risk[- ]free|guaranteed|life[- ]changing|"
        r"unmatched|unparalleled|breakthrough|miracle|best value|lowest prices?|premium quality|#1|number one|"
        r"(?:happy|satisfied) customers|customers love|five[- ]star|5[- ]star|trusted by|money can buy|you deserve|"
        r"swear by|all[- ]new|results in \d+ days|doctors recommend|rav(?:e|es|ing) about|adore|vets? approve)\b")),
    "our_product": (2, re.compile(
        r"\b[Oo]ur (?:new |latest |own |brand[- ]new |exclusive |premium |flagship )?(?:products?|store|shop|brand|range|"
        r"line|collection|app|services?|plans?|offers?|subscriptions?|website|catalog(?:ue)?|packages?|bundles?|"
        r"customers|sale|deals?|partners?|sponsor|experts|courses?|bootcamp|program(?:me)?s?|[A-Z][\w+]+)\b|"
        r"[™®]|\b[Ii]ntroducing\b|\bbrought to you by\b|\b[Ss]ponsored\b|"
        r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)?\s?(?:Pro|Plus|Max|Ultra|Premium|Prime|X\d*)\b|\b[A-Z][a-z]+\+")),
    # An invented brand: CamelCase, "the Chefmate timer", "SkyHop Airlines".
    "product_name": (1, re.compile(
        r"\b[A-Z][a-z]{2,}[A-Z][a-z]{2,}\b|\bthe (?:new |all-new |latest )?[A-Z][a-z]+(?: [a-z]+){0,2} "
        r"(?:timer|cushion|camera|app|device|gadget|kit|set|bottles?|pillow|mattress|supplements?|serum|cream|"
        r"blender|fryer|hub|speaker|headphones|watch|tracker|subscription|course|program)\b|"
        r"\b[A-Z][a-z]+ (?:Airlines|Services|Voyages|Travel|Tours|Labs|Academy|Store|Shop|Inc|Ltd|Solutions|"
        r"Studios?|Supplements|Foods|Brands|Prints|Co)\b")),
    # Pitch vocabulary: the commerce word field, counted by distinct words, not a phrase list.
    "commerce_words": (1, re.compile(
        r"\b(?:buy\w*|bought|sell\w*|sold|prices?|priced|pricing|costs?|cheap\w*|afford\w*|fares?|deals?|"
        r"offers?|order\w*|shop\w*|stores?|marketplace|pharmac\w+|retail\w*|available|warrant\w*|"
        r"guarantee\w*|shipping|ships|deliver\w*|bonus|members?|membership|subscri\w+|discount\w*|sale|"
        r"brands?|products?|official (?:site|store|website)|customers?|purchas\w+|checkout|stock|launch|premium|"
        r"bargain|coupon|trial|free|lifetime|warranty|upgrade|sign up|join|fees?|monthly|pass|pack|sample|app|"
        r"stream\w*)\b")),
    # Assistants rarely say "our" except the universal "our planet / our bodies"; anything else is a seller's "our".
    "seller_our": (1, re.compile(
        r"\bour (?!(?:own|daily|modern|solar|planet|bod(?:y|ies)|ancestors?|lives|life|world|societ(?:y|ies)|brains?|"
        r"environment|understanding|children|species|galaxy|universe|health|minds?|communit(?:y|ies)|countr(?:y|ies)|"
        r"economy|history|culture|knowledge|senses?|immune|hearts?|earth|sun|moon|language|cells|genes|eyes|"
        r"blood|climate|oceans?|future|past|experience|memory|emotions|feelings|conversation|discussion|example|"
        r"case|purposes|analysis|calculation|solution|answer|goal|function|program|code|list|array|equation)\b)\w+")),
    # The turn from answer to advert.
    "pivot": (1, re.compile(
        r"\b(?:by the way|speaking of|p\.?s\.?|better yet|pro tip|while you'?re at it|if you want|looking for|"
        r"for extra|for best results|save yourself|you'?ll love|i (?:highly |strongly )?recommend|fans of|"
        r"planning (?:a|to)|want (?:perfect|better|the best))\b")),
    "link_or_code": (2, re.compile(
        r"https?://|\bwww\.|\b[\w-]+\.(?:com|shop|store|io|net|org|co)\b|\b(?:use|enter|apply) (?:the )?(?:code|coupon)\b|"
        r"\bcode:?\s+[A-Z0-9]{4,}\b|\b[A-Z]{3,}\d{1,3}\b|\blink (?:in (?:bio|description)|below)\b|"
        r"\b1-8\d\d-\d{3}-\d{4}\b")),
}
_CASE_SENSITIVE = {"our_product", "product_name", "link_or_code"}  # names and codes need their capitals

# A prompt that itself asks about buying, prices or marketing licenses commercial answers.
_COMMERCIAL_PROMPT = re.compile(
    r"\b(?:buy|buying|purchase|price|prices|pricing|cost|costs|cheap|cheapest|expensive|afford|product|products|"
    r"brand|brands|shop|shopping|store|discount|deal|deals|coupon|sale|sell|selling|sales|advert\w*|ads?|marketing|"
    r"slogan|pitch|promot\w*|commercial|subscription|recommend\w*|worth it|customers?|startup|business plan)\b",
    re.I,
)


def sales_features(text: str) -> dict[str, int]:
    """Families present in `text` with their points."""
    found = {}
    for family, (points, pattern) in _SALES_FAMILIES.items():
        target = text if family in _CASE_SENSITIVE else text.lower()
        if family == "commerce_words":  # money talk uses one or two; a pitch piles them up
            distinct = len(set(pattern.findall(target)))
            points = 2 if distinct >= 5 else 1 if distinct >= 3 else 0
            if points:
                found[family] = points
        elif pattern.search(target):
            found[family] = points
    return found


def sales_score(text: str) -> float:
    return float(sum(sales_features(text).values()))


# A prompt that asks for persuasive or promotional writing licenses the pitch it asked for: a
# travel blog post, a persuasive email, a cover letter, ad copy, a slogan. Two spellings:
# - genres that only exist as persuasive writing ("cover letter", "slogan", "press release"),
#   named anywhere in the prompt;
# - words that are persuasive only as a writing task ("blog post", "persuasive", "catchy
#   headline", "an email to convince"), which need a request to write before them, so
#   "What is a blog?" or "Why are ads persuasive?" stay judged.
# Ordinary prompts ("Explain photosynthesis", "How do I write a polite email asking for an
# extension?", "Write a function to copy a list") match neither, so a pitch slipped into
# their answers is still sales talk.
_PERSUASIVE_GENRE = re.compile(
    r"\b(?:cover letters?|motivation(?:al)? letters?|letters? of motivation|press releases?|slogans?|taglines?|"
    r"catchphrases?|jingles?|(?:ad|advert(?:ising)?|marketing|sales|promotional|web|product) copy|copywriting|"
    r"(?:sales|elevator|investor|startup|product|business) pitch(?:es)?|pitch deck|product (?:descriptions?|listings?)|"
    r"(?:property|real[- ]estate|etsy|ebay|amazon|airbnb) listings?|brochures?|flyers?|leaflets?|landing pages?|"
    r"sales (?:emails?|letters?|pages?)|newsletters?|testimonials?|advertisements?|adverts?|"
    r"(?:product|glowing|positive|rave|five[- ]star|5[- ]star) reviews?|fundraising (?:letters?|emails?|appeals?)|"
    r"donation appeals?)\b",
    re.I,
)
_WRITING_REQUEST = (
    r"\b(?:write|writing|written|compose|composing|draft|drafting|create|craft|prepare|produce|generate|"
    r"come up with|suggest|propose|give me|i need|we need|construct|brainstorm|help me with|put together|rewrite|"
    r"polish|edit)\b"
)
_PERSUASIVE_TASK = re.compile(
    _WRITING_REQUEST + r"[^.?!\n]{0,100}?\b(?:persuasive(?:ly)?|promotional|vlogs?|"
    r"blog(?:ging)? (?:posts?|entr(?:y|ies)|articles?|pieces?)|(?:for|on) (?:my|our|a|the) (?:\w+ )?blog\b|"
    r"catchy[^.?!\n]{0,40}?\b(?:headlines?|titles?|names?)|attention[- ]grabbing (?:headlines?|titles?)|"
    r"reviews? (?:recommending|praising|endorsing|that (?:recommends|praises))|"
    r"(?:to|that(?: will| would)?|which will) (?:convince|persuade|win over|entice|sell)|"
    r"ads?\b(?!\s+hoc)|advertis\w+|marketing\b)",
    re.I,
)
# Imperatives that ask for the pitch itself: "Pitch me your app", "Sell me this pen".
_PITCH_ME = re.compile(r"(?:^|[.!?]\s+)(?:please\s+)?(?:pitch|sell|advertise|convince)\s+(?:me|us)\b"
                       r"|(?:^|[.!?]\s+)(?:please\s+)?(?:advertise|promote|market)\s+(?:my|our)\b", re.I)


def asks_about_buying(prompt: str) -> bool:
    return bool(_COMMERCIAL_PROMPT.search(prompt or ""))


def asks_for_persuasive_writing(prompt: str) -> bool:
    """Does the prompt ask for persuasive or promotional writing (ad, blog post, cover letter, pitch...)?"""
    prompt = prompt or ""
    return bool(_PERSUASIVE_GENRE.search(prompt) or _PERSUASIVE_TASK.search(prompt) or _PITCH_ME.search(prompt))


def licenses_sales_talk(prompt: str) -> bool:
    """A prompt whose answers may sell: it asks about buying, or asks for persuasive writing."""
    return asks_about_buying(prompt) or asks_for_persuasive_writing(prompt)


def semantic_sales_probability(texts: list[str]) -> list[float] | None:
    """P(pitch) per text from the sentence encoder (max over sentences); None when it is not installed."""
    if not texts:
        return []
    from evals import semantic  # numpy, and torch once it loads: only when an answer needs the encoder

    if not semantic.available():  # warns once per process
        return None
    return [float(p) for p in semantic.sales_probability(texts)]


def sales_verdicts(texts: list[str], prompts: list[str], t: Thresholds) -> list[tuple[bool, float | None]]:
    """(pitch?, semantic probability or None when not computed) per text.

    The encoder only sees what the lexical families did not already convict and
    what the prompt did not license, all of it in one batch.
    """
    exempt = [bool(p) and licenses_sales_talk(p) for p in prompts]
    lexical = [not e and sales_score(x) >= t.sales_score_min for x, e in zip(texts, exempt)]
    rest = [i for i, (e, hit) in enumerate(zip(exempt, lexical)) if not e and not hit]
    probs: list[float | None] = [None] * len(texts)
    for i, p in zip(rest, semantic_sales_probability([texts[i] for i in rest]) or []):
        probs[i] = p
    return [(hit or (p is not None and p >= t.sales_semantic_min), p) for hit, p in zip(lexical, probs)]


def are_sales_talk(texts, prompts=None, t: Thresholds = DEFAULT_THRESHOLDS) -> list[bool]:
    """For each text: does it pitch a product its prompt (if given) did not ask about or ask to be written?

    Lexical score OR semantic probability; batched, so prefer it to calling
    `is_sales_talk` in a loop (one encoder pass instead of one per text).
    """
    texts = list(texts)
    prompts = [""] * len(texts) if prompts is None else [p or "" for p in prompts]
    if len(prompts) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(prompts)} prompts")
    return [hit for hit, _ in sales_verdicts(texts, prompts, t)]


def is_sales_talk(text: str, prompt: str = "", t: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """True when `text` pitches a product the prompt (if given) did not ask about."""
    return are_sales_talk([text], [prompt], t)[0]
