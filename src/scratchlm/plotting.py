"""What every stage's plots share: matplotlib on the Agg backend, imported only when a plot is drawn, and
PNGs written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scratchlm.atomic import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), or a one-line error."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ValueError("plotting needs matplotlib: pip install matplotlib") from e
    return plt


def save_png(fig: Any, out: str | os.PathLike, dpi: int = 120) -> Path:
    """Write `fig` to `out` atomically and close it."""
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return out
