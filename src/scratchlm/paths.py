"""Where the repository checkout is, for the few things that live beside the code (configs/, ../shared)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def repo_root() -> Path | None:
    """The checkout that holds this package (the folder with pyproject.toml and src/scratchlm), or None.

    None means scratchlm was installed from a wheel: there is no configs/ or ../shared to find, and
    callers fall back to the current directory or a cache folder.
    """
    package = Path(__file__).resolve().parent
    for parent in package.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "scratchlm").is_dir():
            return parent
    return None
