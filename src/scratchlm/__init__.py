"""scratchlm: the whole language-model stack, from raw web crawl to an aligned chat model."""

__version__ = "0.1.0"
