"""Generation: sampling rules and (for now) full-recompute generation."""

from scratchlm.inference.sampling import generate, sample_next

__all__ = ["generate", "sample_next"]
