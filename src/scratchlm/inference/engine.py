"""Continuous batching: a fixed number of sequence slots in one static KV cache, requests queued, admitted
into free slots as others finish, and decoded together one token per slot per step.

    engine = Engine(model, EngineConfig(max_slots=8), tokenizer=tok)
    rid = engine.add_request(tok.encode("Once upon"), SamplingParams(max_tokens=64, temperature=0.8, seed=1))
    while engine.has_work:
        for out in engine.step():   # StepOutput: this step's tokens, log-probs and text of one request
            ...
    engine.generate([prompt_a, prompt_b], SamplingParams(temperature=0))   # the same, all at once

The cache row of a slot holds token position p at index p (see `KVCache`): a sequence admitted into a freed
slot simply overwrites it from position 0, rows of different lengths decode in one batched forward (each at
its own position), and every shape stays fixed (what CUDA graphs need).

One `step`: 1) admit waiting requests into free slots: prefill all prompt tokens but the last into the slots'
cache rows, many prompts per forward (right-padded to the longest of a group of similar lengths); the last
one is the slot's first decode input, so every token, the first included, is sampled in the same batched
decode step; 2) decode a burst of up to `sync_every` steps on the device, each feeding every slot's previous
token and sampling its next one (`sample_batch`), without reading anything back (on CUDA the whole burst is
one CUDA-graph replay); 3) copy the burst's tokens and log-probabilities to the host once, and hand them to
each sequence: a stop token, a stop string (found on the detokenised text, which only the host has: the
reason for bursts rather than a device-side check) or max_tokens ends it and frees its slot. A burst never
outlasts the shortest remaining max_tokens, so length-limited slots free exactly on time; tokens a slot
decodes after a stop within a burst are discarded (at most sync_every - 1 steps of one slot).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from scratchlm.inference.graphs import GraphCache, compiled
from scratchlm.inference.kv_cache import KVCache
from scratchlm.inference.sampling import check_sampling, load_kernels, mix64, sample_batch
from scratchlm.inference.text import TextStream
from scratchlm.inference.tuning import tune_gemv_tiles
from scratchlm.model.layers import compute_dtype
from scratchlm.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EngineConfig:
    max_slots: int = 8  # sequences decoded together (the decode batch); more requests wait in the queue
    max_len: int | None = None  # cache positions per slot = the longest prompt + max_tokens; None: the context
    sync_every: int = 8  # decode steps between reads to the host (stop checks, streaming granularity)
    prefill_chunk: int = 512  # positions per prefill forward (long prompts go in chunks)
    prefill_tokens: int = 16384  # prompts prefilled together: at most this many (padded) tokens per forward
    cuda_graphs: bool = True  # CUDA: replay each decode burst as one CUDA graph (no per-kernel launch cost)
    # CUDA, with cuda_graphs: also replay prefill chunks as graphs, their lengths padded to powers of two (>= 16)
    # so that few shapes recur (eager prefill is host-bound: H100, 1.3B, time to first token 37 -> 6 ms)
    prefill_graphs: bool = True
    max_cuda_graphs: int = 256  # graphs kept (decode bursts and prefill chunks); the least recently used go
    compile: bool = False  # CUDA: torch.compile the decode step first (fused kernels; minutes of compiling)
    # CUDA, half-precision model: pick the one-row GEMV's tiles by timing a decode step first (inference.tuning)
    tune_gemv: bool = True
    max_top_logprobs: int = 20  # most alternatives a request may ask for (SamplingParams.top_logprobs)

    def __post_init__(self) -> None:
        for name in ("max_slots", "sync_every", "prefill_chunk", "prefill_tokens", "max_cuda_graphs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_top_logprobs < 0:
            raise ValueError(f"max_top_logprobs must be >= 0, got {self.max_top_logprobs}")
        if self.max_len is not None and self.max_len < 2:
            raise ValueError(f"max_len must be >= 2 (a prompt token and a new one), got {self.max_len}")


@dataclass(kw_only=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0  # CTRL-style, over prompt + generated tokens; 1 = off
    stop: tuple[str, ...] = ()  # stop strings (need the engine's tokenizer); cut from the text
    stop_token_ids: tuple[int, ...] = ()  # kept as the last token, not in the text
    seed: int | None = None  # None: drawn from torch's global generator when the request is added
    top_logprobs: int = 0  # also return the N most likely tokens at each position, with their log-probs

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        check_sampling(self.temperature, self.top_k, self.top_p, self.repetition_penalty)
        self.stop, self.stop_token_ids = tuple(self.stop), tuple(self.stop_token_ids)
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


@dataclass
class StepOutput:
    """What one step added to one request. logprobs: the model's (log_softmax of the raw logits at the token);
    sampling_logprobs: under the processed distribution the token was drawn from (0 when greedy);
    top_logprobs: per token, the request's `top_logprobs` most likely (token id, model log-prob), best first."""

    request_id: int
    token_ids: list[int]
    logprobs: list[float]
    sampling_logprobs: list[float]
    text: str  # new text safe to show ("" without a tokenizer)
    finish_reason: str | None = None  # "stop", "length" or "abort" once the request ended
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Completion:
    """A finished request, all of it."""

    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sampling_logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)

    def add(self, out: StepOutput) -> None:
        self.token_ids += out.token_ids
        self.logprobs += out.logprobs
        self.sampling_logprobs += out.sampling_logprobs
        self.top_logprobs += out.top_logprobs
        self.text += out.text
        self.finish_reason = out.finish_reason


@dataclass
class _Sequence:
    """Host-side state of one request."""

    request_id: int
    prompt: list[int]
    params: SamplingParams
    seed: int
    text: TextStream | None
    generated: int = 0


def request_seed(seed: int, index: int) -> int:
    """The seed of request `index` in a batch seeded `seed` (hashed: batches seeded s and s + 1 do not share
    samples, as `seed + index` would)."""
    return int(mix64(mix64(torch.tensor(seed)) + index))


class Engine:
    """Continuous-batching generation on one model (see the module docstring). Not thread-safe: one thread
    calls add_request / abort / step (the server runs it in a worker thread)."""

    def __init__(self, model: nn.Module, config: EngineConfig | None = None, tokenizer: Tokenizer | None = None):
        self.config = config = config or EngineConfig()
        self.model, self.tokenizer = model.eval(), tokenizer
        param = next(model.parameters())
        self.device = param.device
        self.max_len = config.max_len or model.config.context_length
        if self.max_len > model.config.context_length:
            raise ValueError(f"max_len {self.max_len} exceeds the model's context length {model.config.context_length}")
        slots, self.vocab_size = config.max_slots, model.config.vocab_size
        self.cache = KVCache(model.config, slots, self.max_len, device=self.device, dtype=param.dtype)
        # Per-slot decode state, on the device: the token to feed next and its position, the tokens seen so far
        # (repetition penalty), and the request's sampling settings as (slots, 1) columns.
        device, wide = self.device, compute_dtype(param.dtype)
        self.ids = torch.zeros(slots, dtype=torch.long, device=device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)
        self.seen = torch.zeros(slots, self.vocab_size, dtype=torch.bool, device=device)
        self.temperature = torch.ones(slots, 1, dtype=wide, device=device)
        self.top_k = torch.full((slots, 1), self.vocab_size, dtype=torch.long, device=device)
        self.top_p = torch.ones(slots, 1, dtype=wide, device=device)
        self.penalty = torch.ones(slots, 1, dtype=wide, device=device)
        self.seeds = torch.zeros(slots, dtype=torch.long, device=device)
        # a burst's results: token, model log-prob, sampling log-prob per slot and step
        self.out_tokens = torch.zeros(slots, config.sync_every, dtype=torch.long, device=device)
        self.out_logprobs = torch.zeros(slots, config.sync_every, 2, dtype=wide, device=device)
        top = min(config.max_top_logprobs, self.vocab_size)  # alternatives: ids and log-probs
        self.out_top_ids = torch.zeros(slots, config.sync_every, top, dtype=torch.long, device=device)
        self.out_top_logprobs = torch.zeros(slots, config.sync_every, top, dtype=wide, device=device)
        self.slots: list[_Sequence | None] = [None] * slots
        self.waiting: deque[_Sequence] = deque()
        self._next_id = 0
        on_cuda = self.device.type == "cuda"
        load_kernels()
        if config.tune_gemv:
            tune_gemv_tiles(model, max_len=min(self.max_len, 1024))
        if config.compile and not on_cuda:
            log.info("compile: decoding eagerly on %s (compiling the step is for CUDA)", self.device)
        self._decode = compiled(self._decode_step, self.device, config.compile)  # per (rows, sampling features)
        # one graph per decode burst (rows, steps, features) and per prefill chunk (rows, start, length)
        self._graphs = GraphCache(self.device, config.cuda_graphs, config.max_cuda_graphs)
        # Prefill through fixed buffers and padded chunk lengths (what graph replay needs; tests force it on CPU)
        self._pad_prefill = self._graphs.enabled and config.prefill_graphs
        self._prefill_ids = torch.zeros(slots, min(config.prefill_chunk, self.max_len), dtype=torch.long,
                                        device=device)
        self._prefill_slots = torch.zeros(slots, dtype=torch.long, device=device)

    # -- requests -----------------------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return sum(s is not None for s in self.slots)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting) or self.num_running > 0

    def add_request(self, prompt: list[int], params: SamplingParams | None = None) -> int:
        """Queue a request; returns its id. ValueError when it cannot run (empty, unknown token ids, too long)."""
        params = params or SamplingParams()
        if not prompt:
            raise ValueError("the prompt must hold at least one token")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        if len(prompt) + params.max_tokens > self.max_len:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                             f"engine's {self.max_len} positions per sequence")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need an engine with a tokenizer")
        if params.top_logprobs > self.out_top_ids.shape[-1]:
            raise ValueError(f"top_logprobs {params.top_logprobs} exceeds this engine's "
                             f"{self.out_top_ids.shape[-1]} (EngineConfig.max_top_logprobs)")
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()))
        text = TextStream(self.tokenizer.decode_bytes, params.stop) if self.tokenizer is not None else None
        request_id, self._next_id = self._next_id, self._next_id + 1
        self.waiting.append(_Sequence(request_id, list(prompt), params, seed, text))
        return request_id

    def abort(self, request_id: int) -> bool:
        """Drop a waiting or running request (its slot is free at once); False when it is not here."""
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return True
        for i, seq in enumerate(self.slots):
            if seq is not None and seq.request_id == request_id:
                self.slots[i] = None
                return True
        return False

    def stream(self, prompt: list[int], params: SamplingParams | None = None) -> Iterator[StepOutput]:
        """Add one request and step until it ends, yielding its outputs (anything else queued advances too, its
        outputs are dropped: for one conversation at a time). Closing the iterator early, or an exception such as
        KeyboardInterrupt inside it, aborts the request."""
        request_id, finished = self.add_request(prompt, params), False
        try:
            while not finished:
                for out in self.step():
                    if out.request_id == request_id:
                        finished = out.finished
                        yield out
        finally:
            if not finished:
                self.abort(request_id)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[Completion]:
        """Run these prompts to the end (with whatever else is queued) and return their completions in order."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} sampling settings")
        ids: list[int] = []
        try:
            for prompt, sp in zip(prompts, params_list):
                ids.append(self.add_request(prompt, sp))
        except ValueError:  # all or nothing: a bad prompt must not leave the earlier ones queued
            for request_id in ids:
                self.abort(request_id)
            raise
        done = {i: Completion(i, list(p)) for i, p in zip(ids, prompts)}
        remaining = set(ids)
        while remaining:
            for out in self.step():
                if out.request_id in done:
                    done[out.request_id].add(out)
                    if out.finished:
                        remaining.discard(out.request_id)
        return [done[i] for i in ids]

    # -- the step -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> list[StepOutput]:
        """Admit, decode one burst, hand out its tokens (see the module docstring). [] when idle."""
        self._admit()  # 1)
        active = [i for i, seq in enumerate(self.slots) if seq is not None]
        if not active:
            return []
        rows = min(self.config.max_slots, 1 << max(active).bit_length())  # power-of-two prefix of the slots
        seqs = [self.slots[i] for i in active]
        steps = min(self.config.sync_every, *(s.params.max_tokens - s.generated for s in seqs))
        features = (any(s.params.top_k is not None or s.params.top_p is not None for s in seqs),  # filtered
                    any(s.params.temperature > 0 for s in seqs),  # sampled
                    any(s.params.repetition_penalty != 1 for s in seqs),  # penalized
                    any(s.params.top_logprobs > 0 for s in seqs))  # alternatives wanted
        self._decode_burst(rows, steps, features)  # 2)
        tokens = self.out_tokens[:rows, :steps].tolist()  # 3) the read-back of the burst
        logprobs = self.out_logprobs[:rows, :steps].tolist()
        top = None
        if features[3]:
            top = (self.out_top_ids[:rows, :steps].tolist(), self.out_top_logprobs[:rows, :steps].tolist())
        return [self._hand_out(i, tokens[i], logprobs[i], None if top is None else (top[0][i], top[1][i]))
                for i in active]

    def _decode_burst(self, rows: int, steps: int, features: tuple[bool, bool, bool, bool]) -> None:
        """`steps` decode steps of the first `rows` slots into out_tokens / out_logprobs, with no host sync; on
        CUDA one graph replay per burst shape after its first burst (see scratchlm.inference.graphs)."""
        self._graphs.run((rows, steps, features), lambda: self._burst(rows, steps, features))

    def _burst(self, rows: int, steps: int, features: tuple[bool, bool, bool, bool]) -> None:
        for t in range(steps):
            tokens, model_logprob, sampling_logprob, top = self._decode(rows, *features)
            self.out_tokens[:rows, t] = tokens
            self.out_logprobs[:rows, t, 0] = model_logprob
            self.out_logprobs[:rows, t, 1] = sampling_logprob
            if top is not None:
                self.out_top_logprobs[:rows, t], self.out_top_ids[:rows, t] = top

    def _decode_step(self, rows: int, filtered: bool, sampled: bool, penalized: bool,
                     alternatives: bool = False) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """Feed each of the first `rows` slots its next token, sample the following one, advance (the flags: see
        `sample_batch`; `alternatives`: also the top max_top_logprobs model log-probs and their ids). Free slots
        in the prefix decode junk into their own (unused) cache rows; positions are clamped inside the cache."""
        ids, positions = self.ids[:rows], self.positions[:rows]
        logits = self.model(ids[:, None], positions[:, None], kv_cache=self.cache)[:, -1]  # (rows, vocab)
        tokens, model_logprob, sampling_logprob = sample_batch(
            logits, self.seen[:rows], self.temperature[:rows], self.top_k[:rows], self.top_p[:rows],
            self.penalty[:rows], self.seeds[:rows], positions + 1, filtered=filtered, sampled=sampled,
            penalized=penalized)
        top = None
        if alternatives:
            wide_logprobs = torch.log_softmax(logits, dim=-1, dtype=compute_dtype(logits.dtype))
            top = wide_logprobs.topk(self.out_top_ids.shape[-1], dim=-1)
        self.seen[:rows].scatter_(1, tokens[:, None], True)
        ids.copy_(tokens)
        positions.copy_((positions + 1).clamp(max=self.max_len - 1))
        return tokens, model_logprob, sampling_logprob, None if top is None else (top.values, top.indices)

    def _admit(self) -> None:
        """Give waiting requests the free slots (lowest first: the decode batch stays a short prefix), set their
        sampling state, and prefill their prompts, many per forward."""
        admitted: list[tuple[int, _Sequence]] = []
        free = [i for i, seq in enumerate(self.slots) if seq is None]
        for slot in free[:len(self.waiting)]:
            seq = self.slots[slot] = self.waiting.popleft()
            admitted.append((slot, seq))
        if not admitted:
            return
        self._set_slot_state(admitted)
        admitted.sort(key=lambda a: len(a[1].prompt))  # similar lengths together: less padding
        group: list[tuple[int, _Sequence]] = []
        for item in admitted:
            if group and (len(group) + 1) * (len(item[1].prompt) - 1) > self.config.prefill_tokens:
                self._prefill(group)
                group = []
            group.append(item)
        self._prefill(group)

    def _set_slot_state(self, admitted: list[tuple[int, _Sequence]]) -> None:
        """Per-slot decode state of newly admitted requests, a few batched copies to the device."""
        def column(values: list, dtype: torch.dtype) -> Tensor:
            return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

        slots = column([slot for slot, _ in admitted], torch.long)
        seqs = [seq for _, seq in admitted]
        self.ids[slots] = column([seq.prompt[-1] for seq in seqs], torch.long)
        self.positions[slots] = column([len(seq.prompt) - 1 for seq in seqs], torch.long)
        self.seeds[slots] = column([seq.seed for seq in seqs], torch.long)
        params = [seq.params for seq in seqs]
        wide = self.temperature.dtype
        self.temperature[slots] = column([[p.temperature] for p in params], wide)
        self.penalty[slots] = column([[p.repetition_penalty] for p in params], wide)
        self.top_k[slots] = column([[p.top_k or self.vocab_size] for p in params], torch.long)
        self.top_p[slots] = column([[p.top_p if p.top_p is not None else 1.0] for p in params], wide)
        self.seen[slots] = False
        rows = column([i for i, seq in enumerate(seqs) for _ in seq.prompt], torch.long)
        self.seen[slots[rows], column([t for seq in seqs for t in seq.prompt], torch.long)] = True

    def _prefill(self, group: list[tuple[int, _Sequence]]) -> None:
        """Store all prompt tokens but the last (the first decode input) of these slots in their cache rows:
        one forward per chunk of positions over the right-padded prompts. Padding writes junk at positions
        past a prompt's end, which decoding overwrites before any query can see it (a query at position p sees
        positions <= p, and position p is written by the step that reads it)."""
        longest = max(len(seq.prompt) for _, seq in group) - 1
        if longest == 0:
            return
        padded = torch.tensor([seq.prompt[:-1] + [0] * (longest + 1 - len(seq.prompt)) for _, seq in group])
        slots = torch.tensor([slot for slot, _ in group])
        if self._pad_prefill:
            self._prefill_padded(padded, slots)
            return
        tokens, slots = padded.to(self.device, non_blocking=True), slots.to(self.device, non_blocking=True)
        for start in range(0, longest, self.config.prefill_chunk):
            stop = min(start + self.config.prefill_chunk, longest)
            self.model(tokens[:, start:stop], torch.arange(start, stop, device=self.device),
                       kv_cache=self.cache.rows(slots, stop), logits=False)

    def _prefill_padded(self, tokens: Tensor, slots: Tensor) -> None:
        """`_prefill` through the engine's own buffers, each chunk padded to `_chunk_length` (more junk past the
        prompts' ends, harmless as above) and replayed as a CUDA graph per (rows, start, length)."""
        rows, longest = tokens.shape
        self._prefill_slots[:rows].copy_(slots, non_blocking=True)
        for start in range(0, longest, self.config.prefill_chunk):
            n = min(self.config.prefill_chunk, longest - start)
            length = self._chunk_length(start, n)
            self._prefill_ids[:rows, :n].copy_(tokens[:, start:start + n], non_blocking=True)  # the rest: junk
            self._graphs.run(("prefill", rows, start, length), lambda start=start, length=length: self.model(
                self._prefill_ids[:rows, :length], torch.arange(start, start + length, device=self.device),
                kv_cache=self.cache.rows(self._prefill_slots[:rows], start + length), logits=False))

    def _chunk_length(self, start: int, n: int) -> int:
        """Positions a prefill chunk of n tokens at `start` runs: the next power of two >= max(n, 16), within
        the chunk size and the cache."""
        return min(max(16, 1 << (n - 1).bit_length()), self._prefill_ids.shape[1], self.max_len - start)

    def _hand_out(self, slot: int, tokens: list[int], logprobs: list[list[float]],
                  top: tuple[list[list[int]], list[list[float]]] | None) -> StepOutput:
        """Give a slot's burst to its sequence up to where it ends; free the slot if it ended. top: the burst's
        (ids, log-probs) of the alternatives, each (steps, max_top_logprobs), when any slot asked for them."""
        seq = self.slots[slot]
        out = StepOutput(seq.request_id, [], [], [], "")
        n_top = seq.params.top_logprobs
        for step, (token, (model_logprob, sampling_logprob)) in enumerate(zip(tokens, logprobs)):
            seq.generated += 1
            out.token_ids.append(token)
            out.logprobs.append(model_logprob)
            out.sampling_logprobs.append(sampling_logprob)
            if n_top:
                out.top_logprobs.append(list(zip(top[0][step][:n_top], top[1][step][:n_top])))
            if token in seq.params.stop_token_ids or (seq.text is not None and seq.text.push(token)):
                out.finish_reason = "stop"
            elif seq.generated == seq.params.max_tokens:
                out.finish_reason = "length"
            if out.finished:
                break
        if seq.text is not None:
            if out.finished:
                seq.text.finish()  # flushes a split character unless a stop string cut the text
            out.text = seq.text.pop(final=out.finished)
        if out.finished:
            self.slots[slot] = None
        return out
