"""Generation: sampling rules, a KV cache, and batched cached generation (full recompute as the reference)."""

from scratchlm.inference.generate import generate_batch
from scratchlm.inference.kv_cache import KVCache
from scratchlm.inference.sampling import generate, sample_next

__all__ = ["KVCache", "generate", "generate_batch", "sample_next"]
