"""HTML extraction on real pages, encoding detection on real legacy-encoded text, None for binary junk."""

from __future__ import annotations

import gzip
import json
import random
import re
import tarfile
import zipfile
from collections import Counter

import pytest
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

from scratchlm.data.document import Document
from scratchlm.data.extract import (
    MAIN_SKIP,
    Extract,
    control_fraction,
    decode_html,
    drop_boilerplate_lines,
    extract_text,
    html_to_text,
)
from scratchlm.data.readers import ReadStats, read_documents
from tests.conftest import shared_data

BENCH = "webcrawl/article_extraction_benchmark"
WSJ = "042bb7b5fedab6eac7db576522b89b93904c237d344bcbe14a6a5ab7f7335856"  # a WSJ article with a long site menu
CHRON = "db6b0816c612296c7f1f001c6df874214fcca0da0fc86fb3aea9358c7f681754"  # AP story with an 8-photo gallery
REALDEAL = "bc13ff87b2630ffbebc33bc37b11178b14f03109055e1d17bf644f804b63d98a"  # share bar, related-article list


def bench_page(key: str) -> tuple[bytes, str]:
    html = gzip.decompress(shared_data(f"{BENCH}/html/{key}.html.gz").read_bytes())
    gold = json.loads(shared_data(f"{BENCH}/ground-truth.json").read_text(encoding="utf-8"))[key]["articleBody"]
    return html, gold


def test_main_content_keeps_the_article_and_drops_the_menu():
    html, gold = bench_page(WSJ)
    main, full = extract_text(html, None, "main"), extract_text(html, None, "full")
    assert main.startswith("Google Stadia, Microsoft xCloud, Apple Arcade: So Many Ways to Play…and Pay\n")
    assert main.endswith(gold)  # the gold text exactly, after the title (the byline, post metadata, is dropped)
    assert full.startswith("Dow Jones, a News Corp company\n")  # the site menu: in full mode only
    assert "Dow Jones" not in main and len(full) > 10 * len(main)


def words(text: str) -> Counter:
    return Counter(re.findall(r"\w+", text.lower()))


def test_main_content_drops_the_photo_gallery_but_no_article_word():
    html, gold = bench_page(CHRON)
    main, full = extract_text(html, None, "main"), extract_text(html, None, "full")
    for furniture in ("Image 1 of 8", "Photo: Hau Dinh, AP", "Caption"):  # gallery captions, credits, counter
        assert furniture in full and furniture not in main
    assert words(main) >= words(gold)  # every word of the article, as often as in the gold text


def test_main_content_cuts_share_bar_and_related_articles():
    html, gold = bench_page(REALDEAL)
    main, full = extract_text(html, None, "main"), extract_text(html, None, "full")
    related = "Wendy Silverstein, co-head of WeWork’s real-estate fund, is out"  # a headline of the list after the text
    assert related in full and related not in main and "Share on Facebook" not in main
    assert main.endswith(gold[-200:]) and words(main) >= words(gold)


def test_boilerplate_lines_from_real_pages_are_dropped():
    prose = "The merger of the big newspaper chains Gannett and GateHouse Media became final Tuesday."
    furniture = [  # lines of latimes.com, therealdeal.com, chron.com, theverge.com, phys.org and thehill.com pages
        "Advertisement",
        "ADVERTISEMENT",
        "Share on FacebookShare on TwitterShare on LinkedinShare via Email Share via Shortlink",
        "Image 1 of / 8",
        "Photo: Hau Dinh, AP",
        "  • 445 shares",
        "By choosing I Accept, you consent to our use of cookies and other tracking technologies.",
        "This site uses cookies to assist with navigation, analyse your use of our services, and provide content "
        "from third parties. By using our site, you acknowledge that you have read and understand our Privacy "
        "Policy and Terms of Use.",
    ]
    assert drop_boilerplate_lines("\n\n".join([prose, *furniture, prose])) == f"{prose}\n\n{prose}"
    # "Related articles" starts the link list only after half of the text; earlier it is just a dropped line
    tail = "Related Articles\nWeWork’s side businesses are fizzling\nAnother head rolls at WeWork"
    assert drop_boilerplate_lines(f"{prose}\n{prose}\n{tail}") == f"{prose}\n{prose}"
    assert drop_boilerplate_lines(f"{tail}\n{prose}\n{prose}") == "\n".join([*tail.split("\n")[1:], prose, prose])


@pytest.mark.parametrize("page", ["library/http.cookiejar.html", "license.html", "library/email.html"])
def test_documentation_keeps_lines_about_cookies_copyright_and_email(page):
    """Sentences about cookies, licence lines ("Copyright © 1991 - 1995, Stichting Mathematisch Centrum
    Amsterdam, The", "All rights reserved.") and one-word headings ("email") are text, not page furniture: the line
    filter keeps every line of these pages (so it has no rule for copyright lines)."""
    with tarfile.open(shared_data("webcrawl/python311_docs_html.tar.xz")) as tar:
        html = tar.extractfile(f"./{page}").read().decode("utf-8")
    plain = extract_plain_text(HTMLTree.parse(html), preserve_formatting=True, main_content=True, alt_texts=False,
                               noscript=False, comments=False, post_meta=False, skip_elements=list(MAIN_SKIP))
    assert len(plain) > 5000 and html_to_text(html) == drop_boilerplate_lines(plain.strip()) == plain.strip()


def test_class_rules_fall_back_when_they_would_remove_the_article():
    article = ("<article><h1>Spiced Honey Pear Jam</h1><p>" + "Pears, honey and cinnamon make a jam of autumn. " * 5
               + '</p><div class="caption">Jane pours the jam into jars.</div><p>'
               + "Cook the fruit slowly until it thickens. " * 5 + "</p></article>")
    plain = html_to_text(f"<html><body>{article}</body></html>")
    assert "Jane pours" not in plain and "Cook the fruit" in plain  # the caption goes
    # a wrapper whose class contains "photo": skipping it would empty the page, so the class rules are not used
    wrapped = html_to_text(f'<html><body><div class="photo-story">{article}</div></body></html>')
    assert "Jane pours" in wrapped and wrapped.replace("\n\nJane pours the jam into jars.", "") == plain


def test_paragraphs_and_list_bullets_survive():
    text = html_to_text("<html><body><h1>Title</h1><p>One.</p><p>Two.</p><ul><li>a</li><li>b</li></ul>"
                        "<script>var x = 1;</script></body></html>", "full")
    assert text == "Title\n\nOne.\n\nTwo.\n\n  • a\n  • b"
    with pytest.raises(ValueError, match="extraction mode"):
        html_to_text("<p>x</p>", "article")


@pytest.mark.parametrize("legacy, utf8", [
    ("Russian-Cyrillic", "Russian-UTF8"),             # windows-1251
    ("Japanese_Nihongo-SJIS", "Japanese_Nihongo-UTF8"),
    ("Japanese_Nihongo-EUC", "Japanese_Nihongo-UTF8"),
    ("Chinese_Mandarin-GB2312", "Chinese_Mandarin-UTF8"),
    ("Greek_Ellinika-Greek", "Greek_Ellinika-UTF8"),  # iso-8859-7
])
def test_detected_encoding_gives_the_same_text_as_utf8(legacy, utf8):
    with zipfile.ZipFile(shared_data("langid/udhr.zip")) as z:
        data, reference = z.read(f"udhr/{legacy}"), z.read(f"udhr/{utf8}").decode("utf-8-sig", errors="ignore")
    text = decode_html(data)  # no charset declared: uchardet decides
    # the files are cut at ~10 KB (the UTF-8 one mid-character), so compare the first 2,000 characters
    assert text[:2000] == reference[:2000]


def test_wrong_declared_charset_falls_back_to_detection():
    with zipfile.ZipFile(shared_data("langid/udhr.zip")) as z:
        data, reference = z.read("udhr/Russian-Cyrillic"), z.read("udhr/Russian-UTF8").decode("utf-8-sig")
    assert decode_html(data, "utf-8")[:2000] == reference[:2000]  # cp1251 bytes are not valid UTF-8
    assert decode_html(data, "no-such-charset")[:2000] == reference[:2000]


def test_binary_is_undecodable():
    junk = random.Random(0).randbytes(4000)
    assert control_fraction(junk.decode("latin-1")) > 0.1
    assert decode_html(junk) is None and extract_text(junk) is None
    assert decode_html(gzip.compress(b"<html>compressed page</html>" * 50)) is None
    assert decode_html(b"") is None


def test_extract_step_on_the_cc_sample():
    docs = list(read_documents(shared_data("webcrawl/warc/CC-MAIN-2020-34-sample.warc.gz"), "warc", ReadStats()))
    step = Extract()
    out = [step(doc) for doc in docs]
    assert all(d is not None and d.text and d.html is None for d in out)
    # page 2 is declared windows-1251 and is Russian
    assert sum(map(str.isalpha, out[1].text)) > 100 and any("\u0400" <= c <= "\u04ff" for c in out[1].text)


def test_extract_step_drop_reasons():
    step = Extract(mode="full")
    junk = Document(id="j", text="", html=random.Random(0).randbytes(2000))
    assert step(junk) is None and junk.metadata["drop_reason"] == "extract_undecodable"
    empty = Document(id="e", text="", html=b"<html><script>only()</script></html>")
    assert step(empty) is None and empty.metadata["drop_reason"] == "extract_empty"
    text = Document(id="t", text="already text")
    assert step(text) is text
    with pytest.raises(ValueError, match="extract.mode"):
        Extract(mode="article")
