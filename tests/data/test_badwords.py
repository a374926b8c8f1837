"""C4 bad-words rule: the shipped list, whole-word matching, real documents, and the trie regex against a plain one."""

from __future__ import annotations

import gzip
import json
import pickle
import re

import pytest

from scratchlm.data.badwords import BadWordsFilter, find_badword, load_badwords
from scratchlm.data.document import Document
from tests.conftest import shared_data

WET_FILES = ("webcrawl/wet_text/cc_en_head-0091.jsonl.gz", "webcrawl/wet_text/cc_en_head-0174.jsonl.gz")


def wet_documents() -> list[dict]:
    return [json.loads(line) for path in WET_FILES for line in gzip.open(shared_data(path), "rt", encoding="utf-8")]


def test_list_ships_as_package_data():
    words = load_badwords("en")
    assert len(words) == 377  # the LDNOOBW revision C4 uses (25e679f)
    assert {"2 girls 1 cup", "s&m", "g-spot", "🖕", "xxx"} <= words
    assert all(w == w.strip().lower() and w for w in words)


def test_unknown_language_names_the_available_ones():
    with pytest.raises(ValueError, match=r"no bad-words list for language 'xx'; available: \['en'\]"):
        load_badwords("xx")


@pytest.mark.parametrize(
    "text, found",
    [
        ("What the FUCK is this", "fuck"),
        ("It is all bullshit!", "bullshit"),
        ("(porn)", "porn"),
        ("the cocks crowed", "cocks"),  # the longest entry at a position, not "cock"
        ("sexually explicit", None),  # "sex" is listed, but only as a whole word
        ("two girls one cup", "two girls one cup"),
        ("Two Girls One Cup", "two girls one cup"),
        ("an s&m club", "s&m"),
        ("the g-spot", "g-spot"),
        ("so 🖕 to you", "🖕"),
        ("Vice President Dick Cheney", "dick"),  # C4's rule is blunt: a first name drops the page
        ("Read the class notes and assess the bass section.", None),  # ass inside words
        ("Scunthorpe United won at home", None),
        ("a sexton and a cocktail", None),
        ("two  girls one cup", None),  # phrases need single spaces, as listed
        ("two girls\none cup", None),
        ("fucks_given", None),  # "_" is a word character
    ],
)
def test_find_badword(text, found):
    assert find_badword(text) == found


def test_real_documents():
    found = {doc["id"]: find_badword(doc["text"]) for doc in wet_documents()}
    assert {url: word for url, word in found.items() if word} == {
        "http://911blogger.com/news/2006-11-02/pentagon-video-doubletree-be-released-within-week": "dick",  # Cheney
        "http://cempaka-tourist.blogspot.com/2012/01/": "erotic",  # "(some erotic, many others homemade)"
    }
    assert find_badword(shared_data("webcrawl/html_fixtures/low_quality_cc.txt").read_text(encoding="utf-8")) is None
    wiki = shared_data("webcrawl/html_fixtures/high_quality_wiki_reference.txt").read_text(encoding="utf-8")
    assert find_badword(wiki) == "domination"  # the encyclopedia article on anarchism is dropped too


def test_trie_regex_finds_what_a_plain_alternation_finds():
    plain = re.compile(
        r"(?<!\w)(" + "|".join(map(re.escape, sorted(load_badwords(), key=len, reverse=True))) + r")(?!\w)"
    )
    texts = [doc["text"] for doc in wet_documents()]
    texts.append(shared_data("webcrawl/html_fixtures/high_quality_wiki_reference.txt").read_text(encoding="utf-8"))
    texts.append(" ".join(sorted(load_badwords())) + " sexy sexcam sexo sexual sexually sexuality cocks xx xxx")
    for text in texts:
        match = plain.search(text.lower())
        assert find_badword(text) == (match[1] if match else None)


def test_step_drops_with_reason_and_word():
    step = BadWordsFilter()
    clean = Document(id="1", text="A quiet walk along the river.", metadata={"lang": "en"})
    assert step(clean) is clean and clean.metadata == {"lang": "en"}
    dirty = Document(id="2", text="Hot singles and XXX videos")
    assert step(dirty) is None
    assert dirty.metadata == {"drop_reason": "c4_badwords", "badword": "xxx"}
    assert pickle.loads(pickle.dumps(step)) == step and step.name == "c4_badwords"
