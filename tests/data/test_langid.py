"""Language ID on real multilingual text (the UDHR in many languages) and on the Common Crawl sample."""

from __future__ import annotations

import zipfile
from collections import Counter

import pytest

from scratchlm.data.document import Document
from scratchlm.data.extract import Extract, decode_html
from scratchlm.data.langid import LanguageFilter, identify
from scratchlm.data.readers import ReadStats, read_documents
from tests.conftest import shared_data

UDHR = {
    "English-Latin1": "en", "German_Deutsch-Latin1": "de", "French_Francais-Latin1": "fr", "Spanish-Latin1": "es",
    "Chinese_Mandarin-UTF8": "zh", "Japanese_Nihongo-UTF8": "ja", "Russian-UTF8": "ru", "Korean_Hankuko-UTF8": "ko",
    "Italian-Latin1": "it", "Portuguese_Portugues-Latin1": "pt", "Dutch_Nederlands-Latin1": "nl",
    "Polish-Latin2": "pl", "Greek_Ellinika-UTF8": "el", "Arabic_Alarabia-Arabic": "ar", "Hindi-UTF8": "hi",
    "Turkish_Turkce-UTF8": "tr",
}


@pytest.fixture(scope="module")
def udhr() -> dict[str, str]:
    with zipfile.ZipFile(shared_data("langid/udhr.zip")) as z:
        return {name: decode_html(z.read(f"udhr/{name}")) for name in UDHR}


@pytest.mark.parametrize("name", UDHR)
def test_udhr_languages(udhr, name):
    language, score = identify(udhr[name])
    assert language == UDHR[name] and score > 0.95


def test_one_paragraph_is_enough(udhr):
    for name in ("English-Latin1", "German_Deutsch-Latin1", "Russian-UTF8"):
        paragraph = max(udhr[name].split("\n\n")[1:6], key=len)  # one article of the declaration
        assert identify(paragraph)[0] == UDHR[name]


def test_no_letters_is_unknown():
    assert identify("12 34 -- 56 !!") == ("unknown", 0.0)
    assert identify("") == ("unknown", 0.0)


def test_common_crawl_sample_languages():
    docs = read_documents(shared_data("webcrawl/warc/CC-MAIN-2020-34-sample.warc.gz"), "warc", ReadStats())
    languages = Counter(identify(Extract()(doc).text)[0] for doc in docs)
    # MANIFEST.md, fastText lid.176 on the same pages: zh 10, de 2, en/ru/nl/ja 1 each; the page fastText calls
    # ja is a Chinese page in our main-content extraction
    assert languages == Counter({"zh": 11, "de": 2, "en": 1, "ru": 1, "nl": 1})


def test_language_filter_reasons(udhr):
    keep = LanguageFilter(languages=("en",), threshold=0.9)
    en = Document(id="en", text=udhr["English-Latin1"])
    assert keep(en) is en and en.metadata["language"] == "en" and en.metadata["language_score"] > 0.99
    de = Document(id="de", text=udhr["German_Deutsch-Latin1"])
    assert keep(de) is None and de.metadata["drop_reason"] == "langid_language"
    unsure = Document(id="u", text="ok ok")
    assert LanguageFilter(languages=(), threshold=0.99)(unsure) is None
    assert unsure.metadata["drop_reason"] == "langid_low_score"
    with pytest.raises(ValueError, match="threshold"):
        LanguageFilter(threshold=1.5)
