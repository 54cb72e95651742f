"""A small continuous-batching server over a paged KV cache, shared by the example models.

A model gives two jitted steps over shape buckets:
  prefill(params, cache, tokens [B, S], lengths [B], block_tables [B, M]) -> (logits [B, V], cache)
      runs each prompt (right-padded to S) and writes its keys and values into its pages;
      the logits are those at each prompt's last token.
  decode(params, cache, tokens [N], positions [N], block_tables [N, M]) -> (logits [N, V], cache)
      one token per slot at `positions` (its context before this token); a slot with
      position -1 is idle (its writes go to the scratch page, its output is ignored).
Page 0 of the cache is scratch: padded tokens and idle slots write there, and no block
table of a live request names it.

Requests arrive at given steps, are admitted into free decode slots (their prompts
prefilled together, in the smallest prefill bucket that holds them), decode one token per
step, and leave when they have produced their tokens, freeing their pages.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Request:
    rid: int
    prompt: list[int]
    max_new_tokens: int
    arrival_step: int = 0
    output: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Buckets:
    prefill_batch: tuple[int, ...]      # B of the prefill steps
    prefill_seq: tuple[int, ...]        # S of the prefill steps
    decode_slots: tuple[int, ...]       # N of the decode steps
    max_blocks: int                     # pages a sequence may hold (M)
    page_size: int
    total_pages: int                    # page 0 included

    def prefill_shapes(self):
        return [(b, s) for b in self.prefill_batch for s in self.prefill_seq]

    @staticmethod
    def fit(sizes, n: int) -> int:
        """The smallest bucket size >= n."""
        i = bisect.bisect_left(sizes, n)
        if i == len(sizes):
            raise ValueError(f"{n} exceeds the largest bucket {sizes[-1]}")
        return sizes[i]


class PagePool:
    def __init__(self, total_pages: int):
        self.free = list(range(total_pages - 1, 0, -1))   # page 0 is scratch

    def take(self, n: int) -> list[int]:
        if n > len(self.free):
            raise RuntimeError(f"out of KV pages: need {n}, {len(self.free)} free")
        return [self.free.pop() for _ in range(n)]

    def give(self, pages: list[int]) -> None:
        self.free.extend(reversed(pages))


class Server:
    """Greedy decoding of many requests through a model's prefill and decode steps."""

    def __init__(self, model, params, buckets: Buckets):
        self.model, self.params, self.b = model, params, buckets
        self.cache = model.init_cache(buckets)
        self.pool = PagePool(buckets.total_pages)
        self.slots: list[Request | None] = [None] * max(buckets.decode_slots)
        self.decode_tokens = 0
        self.decode_seconds = 0.0

    def _table(self, pages: list[int]) -> np.ndarray:
        row = np.zeros(self.b.max_blocks, np.int32)
        row[:len(pages)] = pages
        return row

    def _admit(self, new: list[Request]) -> None:
        """Prefills `new` (in prefill-bucket groups) and puts each in a free slot."""
        bp = self.b.prefill_batch
        while new:
            group, new = new[:bp[-1]], new[bp[-1]:]
            B = Buckets.fit(bp, len(group))
            S = Buckets.fit(self.b.prefill_seq, max(len(r.prompt) for r in group))
            tokens = np.zeros((B, S), np.int32)
            lengths = np.zeros(B, np.int32)
            tables = np.zeros((B, self.b.max_blocks), np.int32)
            for i, r in enumerate(group):
                need = -(-(len(r.prompt) + r.max_new_tokens) // self.b.page_size)
                if need > self.b.max_blocks:
                    raise ValueError(f"request {r.rid} needs {need} pages; a sequence holds {self.b.max_blocks}")
                r.pages = self.pool.take(need)
                tokens[i, :len(r.prompt)] = r.prompt
                lengths[i] = len(r.prompt)
                tables[i] = self._table(r.pages)
            logits, self.cache = self.model.prefill(self.params, self.cache, tokens, lengths, tables)
            first = np.asarray(logits).argmax(-1)
            for i, r in enumerate(group):
                r.output.append(int(first[i]))
                self.slots[self.slots.index(None)] = r

    def _decode(self) -> None:
        live = [i for i, r in enumerate(self.slots) if r is not None]
        N = Buckets.fit(self.b.decode_slots, max(live) + 1)
        tokens = np.zeros(N, np.int32)
        positions = np.full(N, -1, np.int32)
        tables = np.zeros((N, self.b.max_blocks), np.int32)
        for i in live:
            r = self.slots[i]
            tokens[i] = r.output[-1]
            positions[i] = len(r.prompt) + len(r.output) - 1
            tables[i] = self._table(r.pages)
        t0 = time.perf_counter()
        logits, self.cache = self.model.decode(self.params, self.cache, tokens, positions, tables)
        nxt = np.asarray(logits).argmax(-1)
        self.decode_seconds += time.perf_counter() - t0
        self.decode_tokens += len(live)
        for i in live:
            self.slots[i].output.append(int(nxt[i]))

    def run(self, requests: list[Request]) -> dict[int, list[int]]:
        """Serves every request to completion; returns each one's generated tokens."""
        waiting = sorted(requests, key=lambda r: (r.arrival_step, r.rid))
        done: dict[int, list[int]] = {}
        step = 0
        while waiting or any(self.slots):
            free = self.slots.count(None)
            ready = [r for r in waiting if r.arrival_step <= step][:free]
            if ready:
                waiting = [r for r in waiting if r not in ready]
                self._admit(ready)
            for i, r in enumerate(self.slots):       # finished after prefill or last decode
                if r is not None and len(r.output) >= r.max_new_tokens:
                    done[r.rid] = r.output
                    self.pool.give(r.pages)
                    self.slots[i] = None
            if any(self.slots):
                self._decode()
            step += 1
        return done


def make_requests(vocab: int, prompt_lengths, new_tokens, seed: int = 0) -> list[Request]:
    """Requests of different lengths arriving over the first steps (fixed seed)."""
    rng = np.random.default_rng(seed)
    return [Request(i, rng.integers(1, vocab, n).tolist(), m, arrival_step=2 * i // 3)
            for i, (n, m) in enumerate(zip(prompt_lengths, new_tokens))]


def reference_logits(forward, params, seq: list[int]) -> np.ndarray:
    """The reference's logits [len(seq), vocab] from one causal forward pass; the sequence is
    right-padded to a power of two (causal: padding changes no earlier logit), so a whole
    generation compiles the reference only a few times."""
    n = max(32, 1 << (len(seq) - 1).bit_length())
    tokens = np.zeros((1, n), np.int32)
    tokens[0, :len(seq)] = seq
    return np.asarray(forward(params, tokens))[0, :len(seq)]


def greedy_reference(forward, params, prompt: list[int], n_new: int) -> list[int]:
    """Greedy tokens from a full forward pass over the whole sequence at every step."""
    seq = list(prompt)
    for _ in range(n_new):
        seq.append(int(reference_logits(forward, params, seq)[-1].argmax()))
    return seq[len(prompt):]


def teacher_forced(forward, params, prompt: list[int], served: list[int], tie: float) -> dict:
    """Each served token against the reference's choice given the same (served) prefix, from
    one reference pass: agreements, near ties (the reference's best logit exceeds the served
    token's by at most `tie` of the largest logit: a choice rounding can flip), and real
    disagreements."""
    seq = list(prompt) + served
    logits = reference_logits(forward, params, seq[:-1])
    out = {"agree": 0, "near_tie": 0, "disagree": 0}
    for j, token in enumerate(served):
        ref = logits[len(prompt) - 1 + j]
        if token == int(ref.argmax()):
            out["agree"] += 1
        elif (ref.max() - ref[token]) <= tie * np.abs(ref).max():
            out["near_tie"] += 1
        else:
            out["disagree"] += 1
    return out


def divergence(forward, params, prompt: list[int], served: list[int], reference: list[int]) -> dict:
    """Where a served generation first leaves the reference's, and by how much the
    reference preferred its own token there (its logit minus the served token's, over the
    largest logit): a margin at the scale of the dtype's rounding is a near tie."""
    i = next(i for i, (a, b) in enumerate(zip(served, reference)) if a != b)
    logits = reference_logits(forward, params, list(prompt) + served[:i])[-1]
    margin = (logits[reference[i]] - logits[served[i]]) / np.abs(logits).max()
    return {"position": i, "relative_margin": float(margin)}


class StoredSteps:
    """A model whose prefill and decode steps are served whole from an ejaot store
    (bundle.call of "<package>.prefill_step" / "<package>.decode_step"): eager calls of
    the compiled tier, no trace and no compile; the cache argument is donated."""

    def __init__(self, jitted, bundle, package: str, **static):
        self.model, self.bundle, self.static = jitted, bundle, static
        self.prefill_name, self.decode_name = f"{package}.prefill_step", f"{package}.decode_step"

    def init_cache(self, buckets):
        return self.model.init_cache(buckets)

    def forward_reference(self, params, tokens):
        return self.model.forward_reference(params, tokens)

    def prefill(self, params, cache, tokens, lengths, block_tables):
        return self.bundle.call(self.prefill_name, params, cache, tokens, lengths, block_tables, **self.static)

    def decode(self, params, cache, tokens, positions, block_tables):
        return self.bundle.call(self.decode_name, params, cache, tokens, positions, block_tables, **self.static)


def make_ready(model, params, buckets) -> None:
    """Makes every prefill and decode bucket runnable without a compile: for jitted steps,
    lowers and compiles each bucket (jax.jit reuses those executables on the first call);
    for stored steps, verifies and deserializes each bucket's compiled tier."""
    import jax
    if isinstance(model, StoredSteps):
        model.bundle.warmup(kernels=[model.prefill_name, model.decode_name])
        return
    cache = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                                   model.init_cache(buckets))      # committed, as the cache it serves

    def i32(*shape):
        return jax.ShapeDtypeStruct(shape, np.int32)
    for b, s in buckets.prefill_shapes():
        model.prefill.lower(params, cache, i32(b, s), i32(b), i32(b, buckets.max_blocks)).compile()
    for n in buckets.decode_slots:
        model.decode.lower(params, cache, i32(n), i32(n), i32(n, buckets.max_blocks)).compile()


def decode_rate(model, params, buckets, steps: int = 100) -> float:
    """Steady decode steps per second with every slot of the largest bucket live."""
    n = max(buckets.decode_slots)
    cache = model.init_cache(buckets)
    tokens = np.ones(n, np.int32)
    positions = np.full(n, buckets.page_size * 2, np.int32)
    tables = (1 + np.arange(n * buckets.max_blocks, dtype=np.int32) % (buckets.total_pages - 1)
              ).reshape(n, buckets.max_blocks)
    for _ in range(3):
        logits, cache = model.decode(params, cache, tokens, positions, tables)
    logits.block_until_ready()
    t0 = time.perf_counter()
    for _ in range(steps):
        logits, cache = model.decode(params, cache, tokens, positions, tables)
    logits.block_until_ready()
    return steps / (time.perf_counter() - t0)
