"""Generation: sampling rules, a KV cache, batched cached generation (full recompute as the reference) and
speculative decoding."""

from scratchlm.inference.generate import generate_batch
from scratchlm.inference.kv_cache import KVCache
from scratchlm.inference.sampling import generate, sample_next
from scratchlm.inference.speculative import speculative_generate

__all__ = ["KVCache", "generate", "generate_batch", "sample_next", "speculative_generate"]
