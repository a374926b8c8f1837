"""Mask personal data (e-mail addresses, phone numbers, IPv4 addresses) in web text with fixed placeholders.

A model that never sees a real address or number cannot regurgitate one; the placeholders keep the sentence
shape, so the text still reads as text. Patterns are precise-over-complete regexes: a missed number is a small
privacy leak, but a masked date or price damages every document that has one, and those are far more common.

Caught:
- e-mail: ASCII local part (letters, digits, ._%+-) @ a dotted domain with a 2+ letter TLD (not an image
  extension: "logo@2x.png" is a retina image name).
- US/NANP phone: (555) 123-4567, 555-123-4567, 555.123.4567, 555 123 4567, 5551234567, with an optional
  country code +1 / 1 (+1 555 123 4567, 1-800-555-0199, +1 (555) 123-4567). The area code must start
  with 2-9 (so 10-digit Unix timestamps, which start with 1, are left alone); the two separators must agree.
- international: "+", a country code (2-9, 1-3 digits), an optional (0), then digit groups split by single
  spaces, dots or hyphens, 8-15 digits in all as E.164 allows: +44 20 7946 0958, +49 30 1234567, +33 1 23 45 67 89.
- IPv4: four dot-separated octets 0-255 without leading zeros, not inside a longer dotted run.

Not caught (on purpose, as false positives): dates (2023-01-15, 01/15/2023), times (12:30:45), years, prices
($1,234.56), ordinary and grouped numbers (1,000,000; 1234567), version strings (1.2.3, v1.2.3.4, 10.0.19041.1),
card-like 4-4-4-4 groups, US SSNs (123-45-6789). Not caught (gaps): 7-digit local numbers (555-1234), mixed
separators (555 123-4567), vanity numbers (1-800-FLOWERS; an extension after a number stays: "ext. 12"),
international numbers without "+" (0044 ..., 020 7946 0958), obfuscated e-mails ("name at example dot com"), non-ASCII addresses, IPv6, street addresses and
names. Known false positives: a bare 10-digit number starting with 2-9 (an order id 2345678901) reads as a phone
number, and a 4-part version number of small parts after a space ("version 1.2.3.4") as an IP address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scratchlm.data.document import Document

EMAIL_TOKEN = "|||EMAIL_ADDRESS|||"
PHONE_TOKEN = "|||PHONE_NUMBER|||"
IP_TOKEN = "|||IP_ADDRESS|||"

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
    r"(?!(?:png|jpe?g|gif|svg|webp)\b)[A-Za-z]{2,}\b"  # the TLD; not "logo@2x.png", a retina image name
)

# Not glued to a word, a "+", or the end of a digit run chained by "-" or "." (dates, versions, card numbers).
_PHONE_START = r"(?<![\w+])(?<!\d[-.])"
_PHONE_END = r"(?!\w)(?![-.]\d)"
_US_PHONE = re.compile(
    _PHONE_START
    + r"(?:\+?1[-. ]?)?"  # country code
    + r"(?:\([2-9]\d\d\)[-. ]?\d{3}[-. ]?|[2-9]\d\d(?P<sep>[-. ]?)\d{3}(?P=sep))"  # (555) 123- or 555-123-
    + r"\d{4}"
    + _PHONE_END
)
# Digit groups after the first need a separator: "(?:[-. ]?\d+)+" would backtrack exponentially on long digit runs.
_INTL_PHONE = re.compile(_PHONE_START + r"\+[2-9]\d{0,2}(?:[-. ]?\(0\))?[-. ]?\d+(?:[-. ]\d+)*" + _PHONE_END)
_INTL_DIGITS = range(8, 16)  # E.164: at most 15 digits with the country code; 8 keeps out "+5 3" arithmetic

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")


def mask_emails(text: str) -> tuple[str, int]:
    """Replace e-mail addresses with |||EMAIL_ADDRESS|||; returns (masked text, how many)."""
    return _EMAIL.subn(EMAIL_TOKEN, text)


def mask_phone_numbers(text: str) -> tuple[str, int]:
    """Replace US and "+"-prefixed international phone numbers with |||PHONE_NUMBER|||; returns (text, how many).
    International first: "+44 207 946 0958" must not lose only its last ten digits to the US pattern."""
    intl = 0

    def mask_intl(match: re.Match[str]) -> str:
        nonlocal intl
        if sum(c.isdigit() for c in match[0]) not in _INTL_DIGITS:
            return match[0]
        intl += 1
        return PHONE_TOKEN

    text = _INTL_PHONE.sub(mask_intl, text)
    text, us = _US_PHONE.subn(PHONE_TOKEN, text)
    return text, intl + us


def mask_ips(text: str) -> tuple[str, int]:
    """Replace IPv4 addresses with |||IP_ADDRESS|||; returns (masked text, how many)."""
    return _IPV4.subn(IP_TOKEN, text)


def mask_pii(text: str) -> tuple[str, dict[str, int]]:
    """All three maskers; e-mails first, so that digits inside an address are never taken for a phone number."""
    counts = {}
    for kind, mask in (("email", mask_emails), ("ip", mask_ips), ("phone", mask_phone_numbers)):
        text, counts[kind] = mask(text)
    return text, counts


@dataclass(frozen=True)
class MaskPII:
    """Pipeline step: masks PII in place and records {"email": n, "ip": n, "phone": n} in metadata["pii"].
    Never drops a document."""

    name: str = "mask_pii"

    def __call__(self, doc: Document) -> Document:
        doc.text, doc.metadata["pii"] = mask_pii(doc.text)
        return doc
