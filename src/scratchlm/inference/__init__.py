"""Generation: the continuous-batching engine (static KV cache, per-request sampling settings and seeds,
log-probabilities, stop strings), batched generation on it, full recomputation as the reference, and
speculative decoding."""

from scratchlm.inference.engine import Completion, Engine, EngineConfig, SamplingParams, StepOutput
from scratchlm.inference.generate import generate_batch
from scratchlm.inference.kv_cache import KVCache
from scratchlm.inference.sampling import generate, sample_next
from scratchlm.inference.speculative import SpeculativeDecoder, speculative_generate

__all__ = ["Completion", "Engine", "EngineConfig", "KVCache", "SamplingParams", "SpeculativeDecoder", "StepOutput",
           "generate", "generate_batch", "sample_next", "speculative_generate"]
