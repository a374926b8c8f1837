"""`Document`: the unit every data-pipeline step reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One document: a stable id (unique within a run), its text, where it came from, and metadata that
    steps add to (language and score, filter decisions, PII counts, ...)."""

    id: str
    text: str
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
