"""Gopher rules: real Common Crawl documents, one realistic snippet per quality rule, a boundary test at every
repetition threshold, and an independent (deliberately naive) recomputation of the n-gram statistics."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import pickle
import re
from collections import Counter

import pytest

from scratchlm.data.document import Document
from scratchlm.data.quality import RULES, GopherQuality, GopherThresholds, gopher_check, gopher_stats
from tests.conftest import shared_data

WET_FILES = ("webcrawl/wet_text/cc_en_head-0091.jsonl.gz", "webcrawl/wet_text/cc_en_head-0174.jsonl.gz")
LOW_QUALITY = "webcrawl/html_fixtures/low_quality_cc.txt"
HIGH_QUALITY = "webcrawl/html_fixtures/high_quality_wiki_reference.txt"

PROSE = (
    "The city council met on Tuesday evening to discuss the new budget for the public library. Several residents "
    "spoke in favour of longer opening hours, and the head librarian explained that the building needs a new roof "
    "before winter. The council agreed to set aside money for the repairs and to review the opening hours again in "
    "the spring, after a survey of the people who use the library most often."
)


def wet_documents() -> list[dict]:
    return [json.loads(line) for path in WET_FILES for line in gzip.open(shared_data(path), "rt", encoding="utf-8")]


def only(rule: str) -> GopherThresholds:
    """Thresholds with every rule off but `rule` (at its default): isolates one rule in a boundary test."""
    return GopherThresholds(**{f.name: None for f in dataclasses.fields(GopherThresholds) if f.name != rule})


# --- defaults and definitions -----------------------------------------------------------------------------------


def test_defaults_are_the_gopher_paper_table():
    # Rae et al. 2021, App. A.1.1 and Table A1.
    assert dataclasses.asdict(GopherThresholds()) == {
        "min_words": 50, "max_words": 100_000, "min_mean_word_length": 3, "max_mean_word_length": 10,
        "max_hash_ratio": 0.1, "max_ellipsis_ratio": 0.1, "max_bullet_lines": 0.9, "max_ellipsis_lines": 0.3,
        "min_alpha_words": 0.8, "min_stop_words": 2,
        "max_dup_line_frac": 0.3, "max_dup_para_frac": 0.3, "max_dup_line_char_frac": 0.2,
        "max_dup_para_char_frac": 0.2,
        "max_top_2gram_char_frac": 0.2, "max_top_3gram_char_frac": 0.18, "max_top_4gram_char_frac": 0.16,
        "max_dup_5gram_char_frac": 0.15, "max_dup_6gram_char_frac": 0.14, "max_dup_7gram_char_frac": 0.13,
        "max_dup_8gram_char_frac": 0.12, "max_dup_9gram_char_frac": 0.11, "max_dup_10gram_char_frac": 0.10,
    }  # fmt: skip
    assert all(f.metadata["help"] for f in dataclasses.fields(GopherThresholds))


def test_word_token_line_and_stop_word_definitions():
    text = "The cat (and THE dog) sat... #1 in 2023 -- e-mail: me!\n\n- one\n- two…"
    stats = gopher_stats(text)
    # tokens: The cat (and THE dog) sat... #1 in 2023 -- e-mail: me! - one - two… (16); "--" and "-" have no word
    assert stats["words"] == 13
    assert stats["mean_word_length"] == sum(map(len, "The cat and THE dog sat 1 in 2023 e-mail me one two".split())) / 13
    assert stats["alpha_words"] == 11 / 16  # "#1", "2023", "--", "-", "-" hold no letter
    assert stats["hash_ratio"] == 1 / 13
    assert stats["ellipsis_ratio"] == 2 / 13
    assert stats["bullet_lines"] == 2 / 3 and stats["ellipsis_lines"] == 1 / 3
    assert stats["stop_words"] == 2  # "the" (twice, any case) and "and": distinct words count


def test_empty_text_is_too_short_and_has_zero_stats():
    assert gopher_check("") == "gopher_min_words"
    assert set(gopher_stats("").values()) == {0}


# --- real documents ---------------------------------------------------------------------------------------------


def test_low_quality_fixture_passes_every_gopher_rule():
    # Forum navigation boilerplate, but with exactly 100 words of normal length, 3 stop words and little
    # repetition: none of the Gopher heuristics fires. Catching such pages is the quality classifier's job.
    text = shared_data(LOW_QUALITY).read_text(encoding="utf-8")
    stats = gopher_stats(text)
    assert gopher_check(text) is None
    assert (stats["words"], stats["stop_words"], stats["dup_line_frac"]) == (100, 3, 0.0)
    # "...private messagesLog in to check your private messages" (words glued by the HTML-to-text step):
    # the 5 words "in to check your private" occur twice, out of 573 word characters.
    assert stats["dup_5gram_char_frac"] == 2 * len("intocheckyourprivate") / 573


def test_high_quality_fixture_is_kept():
    text = shared_data(HIGH_QUALITY).read_text(encoding="utf-8")
    stats = gopher_stats(text)
    assert gopher_check(text) is None
    assert (stats["words"], stats["stop_words"], stats["bullet_lines"]) == (10_610, 8, 0.0)


def test_real_common_crawl_documents():
    reasons = {doc["id"]: gopher_check(doc["text"]) for doc in wet_documents()}
    dropped = {url: reason for url, reason in reasons.items() if reason}
    assert len(reasons) == 20
    assert dropped == {
        # "City Dogs Rescue & City Kitties" six times: 19.6% of the characters sit in repeated 5-grams
        "http://9pmstudios.com/9pm-studios-lends-support-to-city-dogs-rescue-city-kitties/":
            "gopher_max_dup_5gram_char_frac",
        # one line, ending in "..." (a truncated teaser)
        "http://blogs.boardprospects.com/articles/3928691/opendoor-adds-to-leadership-team-board-of-director/":
            "gopher_max_ellipsis_lines",
        # five truncated headlines, 40 words
        "http://cempaka-tourist.blogspot.com/2017/07/aborigines-in-australia-longer-than.html": "gopher_min_words",
    }  # fmt: skip


# --- one realistic snippet per quality rule ---------------------------------------------------------------------

CHAT = (
    "ok so i am at the bar now and it is so on. u up? i am up. we go at 9 or so. ya ok i do it. he is in, me too. "
    "no way it is on us. ha ha ok. so we go at 9 and be at his by 10 ok? ya go go go. i am so in. c u"
)
LINK_FARM = "Useful links\n" + "\n".join(
    f"https://www.example-travel-deals.com/{city}/{kind}"
    for city in ("london", "paris", "berlin", "madrid", "rome", "vienna", "prague", "lisbon", "dublin", "athens")
    for kind in ("cheap-flights", "hotels", "car-hire", "city-breaks", "last-minute")
)
INSTAGRAM = (
    "Sunday morning at the farmers market with the best people. Fresh bread, strawberries and way too much coffee. "
    "We found a stall that sells honey from the hills behind the town and of course we had to buy three jars. "
    "Back next week!\n#sunday #farmersmarket #weekend #coffee #honey #localfood #foodie #strawberries #bread #market "
    "#instagood #happy #friends"
)
HESITANT = (
    "so... i went to the store to get some milk... and guess what... they were closed again... the sign on the door "
    "said back in ten minutes... so i waited... and waited... nobody came... i think i will just have my coffee black "
    "today and go back to the store later with my sister, who has a car and never minds the drive."
)
BULLETS = "Features:\n" + "\n".join(
    f"• {item}"
    for item in (
        "Waterproof to fifty metres, so you can wear it while swimming",
        "Battery that lasts for two weeks between charges",
        "Heart rate monitor with alerts for unusual readings",
        "Sleep tracking with a weekly summary",
        "Built-in GPS for running and cycling",
        "Bright display that is easy to read in sunlight",
        "Notifications from your phone for calls and messages",
        "Strap made of soft silicone in five colours",
        "Works with both Android and iPhone",
        "Two-year warranty and free returns",
    )
)
HEADLINES = "Latest news\n" + "\n".join(
    f"{headline}..."
    for headline in (
        "Council approves the new budget for the public library after a long debate about the",
        "Local bakery wins a national award for its sourdough bread and plans to open a second",
        "Heavy rain expected across the region this weekend as the weather service issues a",
        "School football team reaches the county final for the first time in twenty years after",
        "New bus route will connect the hospital with the train station from next month, the",
        "Volunteers clean up the river bank and collect more than two hundred bags of rubbish",
    )
)
RESULTS = "Premier League results\n" + "\n".join(
    f"{home} {a} {b} {away}"
    for home, a, b, away in (
        ("Arsenal", 2, 1, "Chelsea"), ("Everton", 0, 0, "Fulham"), ("Brighton", 3, 2, "Wolves"),
        ("Liverpool", 4, 0, "Burnley"), ("Newcastle", 1, 1, "Brentford"), ("Tottenham", 2, 3, "Villa"),
        ("Southampton", 1, 0, "Leeds"), ("Leicester", 2, 2, "Watford"), ("Norwich", 0, 1, "Bournemouth"),
        ("Sheffield", 1, 2, "Crystal Palace"), ("Arsenal", 3, 1, "Everton"), ("Chelsea", 2, 0, "Fulham"),
        ("Wolves", 1, 1, "Liverpool"),
    )
)  # fmt: skip
KEYWORDS = "Popular searches: " + ", ".join(
    f"cheap {thing} {city}"
    for thing in ("flights", "hotels", "holidays", "car hire")
    for city in ("London", "Paris", "Berlin", "Madrid", "Rome")
)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Click here to subscribe to our newsletter and get the latest deals delivered to your inbox.",
         "gopher_min_words"),
        (" ".join([PROSE] * 1500), "gopher_max_words"),
        (CHAT, "gopher_min_mean_word_length"),
        (LINK_FARM, "gopher_max_mean_word_length"),
        (INSTAGRAM, "gopher_max_hash_ratio"),
        (HESITANT, "gopher_max_ellipsis_ratio"),
        (BULLETS, "gopher_max_bullet_lines"),
        (HEADLINES, "gopher_max_ellipsis_lines"),
        (RESULTS, "gopher_min_alpha_words"),
        (KEYWORDS, "gopher_min_stop_words"),
        (PROSE, None),
    ],
    ids=["short", "long", "chat", "link-farm", "hashtags", "hesitant", "bullets", "headlines", "results",
         "keywords", "prose"],
)  # fmt: skip
def test_quality_rule_on_realistic_snippet(text, reason):
    assert gopher_check(text) == reason


def test_disabled_rule_is_skipped():
    short = "Click here to subscribe to our newsletter and get the latest deals delivered to your inbox."
    assert gopher_check(short, GopherThresholds(min_words=None)) is None
    assert gopher_check(CHAT, GopherThresholds(min_mean_word_length=None)) is None


# --- repetition rules: at the threshold (kept) and one step above (dropped) --------------------------------------


def unique_words(count: int, letters: str = "abcdefghijklm") -> list[str]:
    """`count` distinct 5-letter words: character fractions then equal word fractions."""
    return ["".join(w) for w in itertools.islice(itertools.product(letters, repeat=5), count)]


def repeated_elements(total: int, repeats: int, separator: str) -> str:
    """`total` lines (or paragraphs) of 3 words, the last `repeats` of them copies of the first."""
    words = unique_words(3 * (total - repeats))
    elements = [" ".join(words[i : i + 3]) for i in range(0, len(words), 3)]
    return separator.join(elements + elements[:1] * repeats)


def repeated_ngram(n: int, copies: int, total: int = 1000) -> str:
    """`total` words: `copies` copies of one n-gram, each followed by a unique word, then unique words."""
    phrase = unique_words(n, letters="nopqrstuvwxyz")
    filler = iter(unique_words(total))
    words = [w for _ in range(copies) for w in [*phrase, next(filler)]]
    return " ".join(words + [next(filler) for _ in range(total - len(words))])


def repeated_span(length: int, total: int = 1000) -> str:
    """`total` words, a run of `length` of them appearing twice: 2 * length / total of the characters repeat."""
    span = unique_words(length, letters="nopqrstuvwxyz")
    filler = unique_words(total - 2 * length)
    return " ".join(span + filler[:1] + span + filler[1:])


ELEMENT_CASES = [
    ("max_dup_line_frac", "\n", 30),
    ("max_dup_para_frac", "\n\n", 30),
    ("max_dup_line_char_frac", "\n", 20),
    ("max_dup_para_char_frac", "\n\n", 20),
]


@pytest.mark.parametrize("rule, separator, repeats", ELEMENT_CASES)
def test_duplicate_line_and_paragraph_boundaries(rule, separator, repeats):
    at, above = repeated_elements(100, repeats, separator), repeated_elements(100, repeats + 1, separator)
    stat = rule.removeprefix("max_")
    assert gopher_stats(at)[stat] == getattr(GopherThresholds(), rule) == repeats / 100
    assert gopher_stats(above)[stat] == (repeats + 1) / 100
    assert gopher_check(at, only(rule)) is None
    assert gopher_check(above, only(rule)) == f"gopher_{rule}"


@pytest.mark.parametrize("n, copies", [(2, 100), (3, 60), (4, 40)])
def test_top_ngram_boundaries(n, copies):
    rule = f"max_top_{n}gram_char_frac"
    at, above = repeated_ngram(n, copies), repeated_ngram(n, copies + 1)
    assert gopher_stats(at)[f"top_{n}gram_char_frac"] == getattr(GopherThresholds(), rule) == n * copies / 1000
    assert gopher_stats(above)[f"top_{n}gram_char_frac"] == n * (copies + 1) / 1000
    assert gopher_check(at, only(rule)) is None
    assert gopher_check(above, only(rule)) == f"gopher_{rule}"


@pytest.mark.parametrize("n, length", [(5, 75), (6, 70), (7, 65), (8, 60), (9, 55), (10, 50)])
def test_duplicate_ngram_boundaries(n, length):
    rule = f"max_dup_{n}gram_char_frac"
    at, above = repeated_span(length), repeated_span(length + 1)
    assert gopher_stats(at)[f"dup_{n}gram_char_frac"] == getattr(GopherThresholds(), rule) == 2 * length / 1000
    assert gopher_stats(above)[f"dup_{n}gram_char_frac"] == 2 * (length + 1) / 1000
    assert gopher_check(at, only(rule)) is None
    assert gopher_check(above, only(rule)) == f"gopher_{rule}"


def test_duplicate_counts_only_later_copies_but_ngrams_count_every_copy():
    # Lines: the first copy is not a duplicate. N-grams: every copy is "inside a duplicate n-gram", and the
    # overlapping 5-grams of a 6-word repeat cover 6 words once, not 2 x 5.
    stats = gopher_stats("aaaaa bbbbb ccccc ddddd eeeee fffff\nggggg\naaaaa bbbbb ccccc ddddd eeeee fffff")
    assert stats["dup_line_frac"] == 1 / 3
    assert stats["dup_5gram_char_frac"] == 60 / 65
    assert stats["dup_7gram_char_frac"] == 0.0


# --- independent reference ---------------------------------------------------------------------------------------


def naive_ngram_frac(text: str, n: int) -> float:
    """The n-gram statistic by brute force (tuples, Counter, a set of covered positions): for n <= 4 the top
    n-gram's character fraction, for n >= 5 the character fraction inside any repeated n-gram."""
    words = re.findall(r"\w+(?:[^\w\s]+\w+)*", text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    if n <= 4:
        top = max((g for g in counts if counts[g] > 1), key=lambda g: (counts[g], sum(map(len, g))), default=None)
        positions = {j for i, g in enumerate(grams) if g == top for j in range(i, i + n)}
    else:
        positions = {j for i, g in enumerate(grams) if counts[g] > 1 for j in range(i, i + n)}
    return sum(len(words[j]) for j in positions) / sum(map(len, words))


def test_ngram_statistics_match_a_naive_recomputation_on_real_documents():
    texts = [doc["text"] for doc in wet_documents()] + [shared_data(HIGH_QUALITY).read_text(encoding="utf-8")]
    nonzero = 0
    for text in texts:
        stats = gopher_stats(text)
        for n in range(2, 11):
            expected = naive_ngram_frac(text, n)
            assert stats[f"top_{n}gram_char_frac" if n <= 4 else f"dup_{n}gram_char_frac"] == expected, (text[:40], n)
            nonzero += expected > 0
    assert nonzero > 50  # the comparison is not between zeros


def test_check_reports_the_first_failing_rule_of_the_full_stats():
    # gopher_check stops early; it must still agree with gopher_stats and the rule order.
    texts = [doc["text"] for doc in wet_documents()] + [CHAT, LINK_FARM, INSTAGRAM, HESITANT, BULLETS, RESULTS]
    for thresholds in (GopherThresholds(), GopherThresholds(min_words=5, max_ellipsis_lines=0.5, min_stop_words=1)):
        for text in texts:
            stats = gopher_stats(text)
            failing = [  # rule[4:] drops "min_" / "max_"
                rule for rule in RULES
                if (limit := getattr(thresholds, rule)) is not None
                and (stats[rule[4:]] < limit if rule.startswith("min_") else stats[rule[4:]] > limit)
            ]  # fmt: skip
            assert gopher_check(text, thresholds) == (f"gopher_{failing[0]}" if failing else None)


# --- pipeline step -----------------------------------------------------------------------------------------------


def test_step_drops_with_reason_and_keeps_otherwise():
    step = GopherQuality()
    kept = Document(id="a", text=PROSE, metadata={"lang": "en"})
    assert step(kept) is kept and kept.metadata == {"lang": "en"}
    dropped = Document(id="b", text=CHAT)
    assert step(dropped) is None
    assert dropped.metadata == {"drop_reason": "gopher_min_mean_word_length"}
    lenient = GopherQuality(thresholds=GopherThresholds(min_mean_word_length=1.5), name="gopher_lenient")
    assert lenient(Document(id="c", text=CHAT)) is not None


def test_step_is_picklable():
    step = GopherQuality(thresholds=GopherThresholds(min_words=10))
    clone = pickle.loads(pickle.dumps(step))
    assert clone == step and clone.name == "gopher_quality"
