"""PII masking: a table of formats that must be masked and look-alikes that must not, plus real web text."""

from __future__ import annotations

import gzip
import json
import pickle

import pytest

from scratchlm.data.document import Document
from scratchlm.data.pii import MaskPII, mask_emails, mask_ips, mask_phone_numbers, mask_pii
from tests.conftest import shared_data

EMAIL, PHONE, IP = "|||EMAIL_ADDRESS|||", "|||PHONE_NUMBER|||", "|||IP_ADDRESS|||"

MASKED = [
    # (masker, text, masked text)
    (mask_emails, "Write to john.doe@example.com.", f"Write to {EMAIL}."),
    (mask_emails, "a.b+tag@sub.example.co.uk, first_last@my-site.org", f"{EMAIL}, {EMAIL}"),
    (mask_emails, "Contact: JOHN@EXAMPLE.COM", f"Contact: {EMAIL}"),
    (mask_phone_numbers, "Call (555) 123-4567 today", f"Call {PHONE} today"),
    (mask_phone_numbers, "(555)123-4567", PHONE),
    (mask_phone_numbers, "Tel: 555-123-4567.", f"Tel: {PHONE}."),
    (mask_phone_numbers, "555.123.4567", PHONE),
    (mask_phone_numbers, "555 123 4567", PHONE),
    (mask_phone_numbers, "5551234567", PHONE),
    (mask_phone_numbers, "+1 555 123 4567 ext. 12", f"{PHONE} ext. 12"),
    (mask_phone_numbers, "+1 (555) 123-4567", PHONE),
    (mask_phone_numbers, "toll free 1-800-555-0199", f"toll free {PHONE}"),
    (mask_phone_numbers, "+44 20 7946 0958", PHONE),
    (mask_phone_numbers, "+44 (0)20 7946 0958", PHONE),
    (mask_phone_numbers, "+44 207 946 0958", PHONE),  # not "+44 " + a US-looking 207 946 0958
    (mask_phone_numbers, "+49 30 1234567", PHONE),
    (mask_phone_numbers, "+33 1 23 45 67 89", PHONE),
    (mask_phone_numbers, "+91-98765-43210", PHONE),
    (mask_phone_numbers, "+442079460958", PHONE),
    (mask_ips, "from 192.168.0.1 and 8.8.8.8.", f"from {IP} and {IP}."),
    (mask_ips, "255.255.255.255 0.0.0.0", f"{IP} {IP}"),
    (mask_ips, "listening on 10.0.0.5:8080", f"listening on {IP}:8080"),
]

UNCHANGED = [
    # (masker, text): dates, times, years, prices, plain numbers, versions and other look-alikes
    (mask_emails, "logo@2x.png"),  # a retina image name
    (mask_emails, "follow @scratchlm"),
    (mask_emails, "root@localhost"),
    (mask_phone_numbers, "on 2023-01-15 at 12:30:45"),
    (mask_phone_numbers, "12/31/2023 5:00 PM"),
    (mask_phone_numbers, "between 1999 and 2024"),
    (mask_phone_numbers, "$1,234.56 or 1,000,000 or 1234567"),
    (mask_phone_numbers, "timestamp 1700000000"),  # 10 digits, but area codes never start with 1
    (mask_phone_numbers, "card 4111 1111 1111 1111"),
    (mask_phone_numbers, "ISBN 978-0-306-40615-7"),
    (mask_phone_numbers, "SSN 123-45-6789"),  # not a phone number (and not masked at all: see module docs)
    (mask_phone_numbers, "2024-555-1234"),
    (mask_phone_numbers, "pages 212-345"),
    (mask_phone_numbers, "x +5 3 = 8"),
    (mask_phone_numbers, "555-1234"),  # 7-digit local number: a known gap
    (mask_phone_numbers, "555-123 4567"),  # mixed separators
    (mask_ips, "Python 3.11.4"),
    (mask_ips, "v1.2.3.4"),
    (mask_ips, "build 10.0.19041.1"),
    (mask_ips, "999.1.1.1 and 10.0.0.256"),
    (mask_ips, "1.2.3.4.5"),
    (mask_ips, "01.02.03.04"),
]


@pytest.mark.parametrize("mask, text, expected", MASKED, ids=[t for _, t, _ in MASKED])
def test_masked(mask, text, expected):
    assert mask(text) == (expected, expected.count("|||") // 2)


@pytest.mark.parametrize("mask, text", UNCHANGED, ids=[t for _, t in UNCHANGED])
def test_unchanged(mask, text):
    assert mask(text) == (text, 0)


def test_mask_pii_counts_each_kind():
    text = "Mail jane@corp.com or john@corp.com, call 555-123-4567, server 10.1.2.3 (2023-01-15)"
    assert mask_pii(text) == (
        f"Mail {EMAIL} or {EMAIL}, call {PHONE}, server {IP} (2023-01-15)",
        {"email": 2, "ip": 1, "phone": 1},
    )


def test_digits_inside_an_email_are_not_a_phone_number():
    assert mask_pii("sales.5551234567@example.com") == (EMAIL, {"email": 1, "ip": 0, "phone": 0})


def test_long_digit_runs_take_linear_time():
    # A nested "(?:sep? digits)+" pattern backtracks exponentially here: 30 digits would take minutes.
    text = "+44" + "1" * 5000 + "a " + "+44 " + "12 " * 5000 + "x"
    assert mask_pii(text) == (text, {"email": 0, "ip": 0, "phone": 0})  # far more than E.164's 15 digits


def test_real_article_with_email_and_phone():
    truth = json.loads(shared_data("webcrawl/article_extraction_benchmark/ground-truth.json").read_text())
    wired = truth["d48aeb9cf2f2ff15769a57513249b4a6a669159f3e50b335e741d4206a824e88"]["articleBody"]
    masked, counts = mask_pii(wired)
    assert counts == {"email": 1, "ip": 0, "phone": 1}
    assert f"Email the writer at {EMAIL}. Signal: {PHONE}. WIRED protects" in masked
    books = truth["30b771a40a4e96156d398716c877deef54b05d091770d2717c98e4c6b670010c"]["articleBody"]
    assert f"More info: www.earbooks.net/en | {PHONE}\n" in mask_pii(books)[0]  # +49 (0)40 890 85-433


def test_real_documents_full_of_numbers_are_left_alone():
    # Dates, years, prices, times and section numbers, and no PII: nothing may change.
    texts = [shared_data("webcrawl/html_fixtures/high_quality_wiki_reference.txt").read_text(encoding="utf-8")]
    for path in ("webcrawl/wet_text/cc_en_head-0091.jsonl.gz", "webcrawl/wet_text/cc_en_head-0174.jsonl.gz"):
        texts += [json.loads(line)["text"] for line in gzip.open(shared_data(path), "rt", encoding="utf-8")]
    for text in texts:
        assert mask_pii(text) == (text, {"email": 0, "ip": 0, "phone": 0})


def test_step_masks_and_records_counts():
    doc = Document(id="1", text="Ping admin@example.org at 192.168.1.20", metadata={"lang": "en"})
    assert MaskPII()(doc) is doc
    assert doc.text == f"Ping {EMAIL} at {IP}"
    assert doc.metadata == {"lang": "en", "pii": {"email": 1, "ip": 1, "phone": 0}}
    assert pickle.loads(pickle.dumps(MaskPII())).name == "mask_pii"
