"""`Document`: the unit every data-pipeline step reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One document: a stable id (unique within a run), its text, where it came from, and metadata that
    steps add to (language and score, filter decisions, PII counts, ...).

    A web page read from a WARC file arrives undecoded: `html` holds the HTTP body bytes (content type and
    charset in metadata) and `text` is empty until the extraction step (scratchlm.data.extract) fills it."""

    id: str
    text: str
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    html: bytes | None = None
