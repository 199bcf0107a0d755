"""Automatic prefix caching for in-process generation: key/value states kept by token prefix.

After a forward pass, each row's key/value states are stored under its token ids; a later request
reuses the longest stored prefix of its own token ids and only its remaining tokens are encoded.
That makes reuse transparent: the turns of a roll-out (each role's rendering extends its previous
prompt + reply), a rejected branch that shares a history with the chosen one, several samples of one
prompt, prompts that share a system message.

Layout (as vLLM's prefix caching / SGLang's radix cache): a tree of fixed-size token blocks. A full
block (BLOCK tokens) is found from its parent by the dict key `tuple(block tokens)` (a hash lookup,
exact: the dict compares the tokens on a hash match), so finding a prefix of n tokens costs n/BLOCK
lookups, never a token-by-token scan of the stored entries. The last block of a stored sequence may be
partial; at the first block that misses, the children of the last matched node are compared token by
token (at most BLOCK tokens each) so the reused prefix may end inside a block. Sequences that share a
prefix share its blocks (stored once); a partial block that is a prefix of a newer block is dropped
(redundant).

Memory: every block holds a tensor [layers, 2 (key, value), kv_heads, n, head_dim] (its own memory:
evicting it frees it). The store keeps at most `budget_bytes`, evicting least recently used blocks.
Every use touches a block and then all its ancestors, so a parent is always more recent than its
children and the least recently used block is a leaf: eviction never leaves a block without its prefix.
Callers hold references to the tensors they were given, so eviction during a call is safe.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger(__name__)

BLOCK = 16  # tokens per block: a reused prefix loses nothing to block boundaries (partial matches are used)


class _Block:
    __slots__ = ("parent", "tokens", "kv", "children", "partials", "nbytes")

    def __init__(self, parent: "_Block | None", tokens: tuple, kv):
        self.parent = parent
        self.tokens = tokens
        self.kv = kv  # [layers, 2, heads, len(tokens), head_dim] or None for the root
        self.children: dict[tuple, _Block] = {}  # full blocks, by their tokens
        self.partials: list[_Block] = []  # partial (shorter than BLOCK) leaf blocks
        self.nbytes = 0 if kv is None else kv.numel() * kv.element_size()


@dataclass
class Match:
    """The longest stored prefix: `length` tokens, whose states are the concatenation of `segments`."""

    length: int
    segments: list  # tensors [layers, 2, heads, n, head_dim], in order, their n summing to `length`


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of a and b."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixKVStore:
    """Key/value states by token prefix, with a byte budget and LRU eviction (see the module doc)."""

    def __init__(self, budget_bytes: int, block: int = BLOCK):
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.block = block
        self.budget_bytes = int(budget_bytes)
        self.root = _Block(None, (), None)
        self._lru: OrderedDict[int, _Block] = OrderedDict()  # id(block) -> block, least recent first
        self.nbytes = 0
        self.peak_bytes = 0
        self.evicted_blocks = 0

    # --- queries ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._lru)

    @property
    def tokens(self) -> int:
        return sum(len(b.tokens) for b in self._lru.values())

    def stats(self) -> dict:
        return {
            "blocks": len(self),
            "tokens": self.tokens,
            "bytes": self.nbytes,
            "peak_bytes": self.peak_bytes,
            "budget_bytes": self.budget_bytes,
            "evicted_blocks": self.evicted_blocks,
        }

    def lookup(self, tokens: Sequence[int], limit: int | None = None) -> Match:
        """The longest stored prefix of tokens[:limit] (touched as recently used)."""
        tokens = list(tokens[: len(tokens) if limit is None else max(0, limit)])
        node, i, path = self.root, 0, []
        while i + self.block <= len(tokens):
            child = node.children.get(tuple(tokens[i : i + self.block]))
            if child is None:
                break
            path.append((child, self.block))
            node, i = child, i + self.block
        rest = tokens[i : i + self.block]
        if rest:  # the best partial match among the last node's children (each at most `block` tokens)
            best, best_n = None, 0
            for child in (*node.children.values(), *node.partials):
                if child.tokens[0] == rest[0]:
                    n = _common(child.tokens, rest)
                    if n > best_n:
                        best, best_n = child, n
            if best is not None:
                path.append((best, best_n))
                i += best_n
        self._touch([b for b, _ in path])
        return Match(i, [b.kv if n == len(b.tokens) else b.kv[..., :n, :] for b, n in path])

    # --- updates ----------------------------------------------------------------------------------
    def insert(self, tokens: Sequence[int], states: Callable[[int, int], object]) -> int:
        """Store `tokens`; `states(a, b)` gives the states of tokens[a:b]. Returns the tokens newly stored.

        Blocks already stored are kept (not replaced); states are asked for once, for the missing span.
        """
        tokens = list(tokens)
        node, i, path = self.root, 0, []
        while i + self.block <= len(tokens):  # walk the stored full blocks
            child = node.children.get(tuple(tokens[i : i + self.block]))
            if child is None:
                break
            path.append(child)
            node, i = child, i + self.block
        tail = tuple(tokens[i:])
        if not tail or (len(tail) < self.block and self._covered(node, tail, path)):
            self._touch(path)
            return 0
        start = i
        span = states(start, len(tokens))  # [layers, 2, heads, len - start, head_dim]
        while i < len(tokens):
            chunk = tuple(tokens[i : i + self.block])
            kv = span[..., i - start : i - start + len(chunk), :].clone()
            new = _Block(node, chunk, kv)
            # A partial block that is a prefix of the new one is redundant.
            keep = [p for p in node.partials if p.tokens != chunk[: len(p.tokens)]]
            for p in node.partials:
                if p not in keep:
                    self._drop(p)
            node.partials = keep
            if len(chunk) == self.block:
                node.children[chunk] = new
            else:
                node.partials.append(new)
            self._lru[id(new)] = new
            self.nbytes += new.nbytes
            path.append(new)
            node, i = new, i + len(chunk)
        self.peak_bytes = max(self.peak_bytes, self.nbytes)
        self._touch(path)
        self._evict()
        return len(tokens) - start

    def clear(self) -> None:
        self.root = _Block(None, (), None)
        self._lru.clear()
        self.nbytes = 0

    def set_budget(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self._evict()

    # --- internals --------------------------------------------------------------------------------
    def _covered(self, node: _Block, tail: tuple, path: list) -> bool:
        """Is `tail` (shorter than a block) a prefix of a stored child of `node`? (then touch that one)"""
        for child in (*node.children.values(), *node.partials):
            if child.tokens[: len(tail)] == tail:
                path.append(child)
                return True
        return False

    def _touch(self, path: list) -> None:
        for b in reversed(path):  # the deepest first: every ancestor ends up more recent than its children
            self._lru.move_to_end(id(b))

    def _drop(self, b: _Block) -> None:
        """Forget `b` and everything under it (its parent's links are the caller's business)."""
        stack = [b]
        while stack:
            x = stack.pop()
            stack.extend(x.children.values())
            stack.extend(x.partials)
            if self._lru.pop(id(x), None) is not None:
                self.nbytes -= x.nbytes
            x.children, x.partials, x.kv = {}, [], None

    def _evict(self) -> None:
        if self.nbytes > self.budget_bytes and self._lru and not self.evicted_blocks:
            log.warning(
                "key/value store full (%d MB): evicting the least recently used states. A roll-out "
                "cycling over more conversations than fit gets little reuse: raise kv_cache_mb "
                "(outputs do not change, only speed)",
                self.budget_bytes // 2**20,
            )
        while self.nbytes > self.budget_bytes and self._lru:
            b = next(iter(self._lru.values()))  # least recently used: a leaf (see the module doc)
            parent = b.parent
            if parent.children.get(b.tokens) is b:
                del parent.children[b.tokens]
            else:
                parent.partials = [p for p in parent.partials if p is not b]
            self.evicted_blocks += self._count(b)
            self._drop(b)

    @staticmethod
    def _count(b: _Block) -> int:
        n, stack = 0, [b]
        while stack:
            x = stack.pop()
            n += 1
            stack.extend(x.children.values())
            stack.extend(x.partials)
        return n
