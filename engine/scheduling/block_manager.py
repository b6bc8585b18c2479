"""Paged KV block bookkeeping with automatic prefix caching. Pure Python: no torch.

Every block is either referenced (ref_count > 0) or in the free queue. A free block may still
hold a cached, hashed prefix: it is reused by a later request that shares that prefix, or evicted
(least recently freed first) when a fresh block is needed. Only full blocks are hashed; a block's
key chains its parent's key, so a key names the whole prefix up to and including that block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

BlockKey = Hashable  # (parent key hash, tuple of the block's token ids)


class BlockOwner(Protocol):
    """What the block manager needs to know about a request."""

    token_ids: list[int]
    block_ids: list[int]
    num_computed_tokens: int
    num_hashed_blocks: int  # leading blocks already registered (or found) in the prefix cache
    hashed_parent: BlockKey | None  # the key of the last of them: the next block's parent


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_keys: list[BlockKey | None] = [None] * num_blocks
        self.cached: dict[BlockKey, int] = {}  # prefix key -> block id holding it
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))

    # --- queries -------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by requests (cached-but-free blocks count as free)."""
        return 1.0 - len(self.free_queue) / self.num_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, token_ids: list[int]) -> list[int]:
        """Block ids holding the longest cached prefix of `token_ids`, in order.

        At most `len(token_ids) - 1` tokens are matched, so at least one token is always computed
        (its logits are needed to sample the next one).
        """
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        parent: BlockKey | None = None
        for index in range((len(token_ids) - 1) // self.block_size):
            start = index * self.block_size
            key = _block_key(parent, token_ids[start:start + self.block_size])
            block_id = self.cached.get(key)
            if block_id is None:
                break
            hits.append(block_id)
            parent = key
        return hits

    def needing_allocation(self, owners: list[BlockOwner], num_new_tokens: list[int]) -> list[int]:
        """Indices of the owners for which allocate(owner, num_new_tokens[i]) has work: a block
        to add, or (prefix caching) a block to register. allocate is a no-op for the others."""
        size = self.block_size
        if not self.enable_prefix_caching:
            return [i for i, (o, n) in enumerate(zip(owners, num_new_tokens))
                    if o.num_computed_tokens + n > len(o.block_ids) * size]
        return [i for i, (o, n) in enumerate(zip(owners, num_new_tokens))
                if o.num_computed_tokens + n > len(o.block_ids) * size
                or min(o.num_computed_tokens + n, len(o.token_ids)) // size > o.num_hashed_blocks]

    # --- mutations ------------------------------------------------------------------------------
    def allocate(self, owner: BlockOwner, num_new_tokens: int, cached_blocks: list[int] = ()) -> bool:
        """Give `owner` blocks for `cached_blocks` (a prefix hit, taken as computed) plus
        `num_new_tokens` more tokens. Returns False, changing nothing, if blocks are short."""
        num_computed = owner.num_computed_tokens + len(cached_blocks) * self.block_size
        num_needed = self.num_blocks_for(num_computed + num_new_tokens) - len(owner.block_ids)
        if num_needed <= 0 and not cached_blocks and not self.enable_prefix_caching:
            return True  # most decode steps: the last block has room, nothing to hash
        num_needed -= len(cached_blocks)
        num_revived = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)  # leave the free queue
        if max(num_needed, 0) + num_revived > len(self.free_queue):
            return False
        for block_id in cached_blocks:
            if self.ref_counts[block_id] == 0:
                del self.free_queue[block_id]
            self.ref_counts[block_id] += 1
        owner.block_ids.extend(cached_blocks)
        for _ in range(max(num_needed, 0)):
            owner.block_ids.append(self._pop_free_block())
        self._cache_full_blocks(owner, num_computed + num_new_tokens)
        return True

    def free(self, owner: BlockOwner) -> None:
        """Drop `owner`'s references. Tail blocks are queued first so they are evicted first,
        keeping the shared head of a prefix cached longest."""
        for block_id in reversed(owner.block_ids):
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self.free_queue[block_id] = None
        owner.block_ids = []
        owner.num_hashed_blocks, owner.hashed_parent = 0, None

    def release_tail(self, owner: BlockOwner, num_tokens: int) -> None:
        """Drop `owner`'s blocks past those `num_tokens` tokens need: the KV of rejected draft tokens.
        Such blocks are never hashed (only blocks full of known tokens are), so never shared."""
        keep = self.num_blocks_for(num_tokens)
        for block_id in owner.block_ids[keep:]:
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self.free_queue[block_id] = None
        del owner.block_ids[keep:]

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (blocks in use keep their data but are no longer shared)."""
        self.cached.clear()
        self.block_keys = [None] * self.num_blocks

    def _pop_free_block(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)  # least recently freed
        key = self.block_keys[block_id]
        if key is not None:  # evict its cached prefix
            del self.cached[key]
            self.block_keys[block_id] = None
        self.ref_counts[block_id] = 1
        return block_id

    def _cache_full_blocks(self, owner: BlockOwner, num_tokens: int) -> None:
        """Register every block of `owner` that `num_tokens` known tokens fill completely, from the
        first not registered yet (a decode step fills at most one)."""
        if not self.enable_prefix_caching:
            return
        num_full = min(num_tokens, len(owner.token_ids)) // self.block_size
        parent = owner.hashed_parent
        for index in range(owner.num_hashed_blocks, num_full):
            block_id = owner.block_ids[index]
            key = self.block_keys[block_id]
            if key is None:
                start = index * self.block_size
                key = _block_key(parent, owner.token_ids[start:start + self.block_size])
                if key not in self.cached:  # a twin computed concurrently keeps the entry
                    self.cached[key] = block_id
                    self.block_keys[block_id] = key
            parent = key
        if num_full > owner.num_hashed_blocks:
            owner.num_hashed_blocks, owner.hashed_parent = num_full, parent

    # --- tests ----------------------------------------------------------------------------------
    def check_invariants(self, owners: list[BlockOwner] = ()) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent. With `owners` (every live
        request), also check that reference counts equal the number of owners of each block."""
        assert len(self.ref_counts) == self.num_blocks
        for block_id, count in enumerate(self.ref_counts):
            assert count >= 0, f"block {block_id} has negative ref count {count}"
            assert (count == 0) == (block_id in self.free_queue), \
                f"block {block_id}: ref count {count} but in free queue: {block_id in self.free_queue}"
        for key, block_id in self.cached.items():
            assert self.block_keys[block_id] == key, f"cached key of block {block_id} mismatched"
        assert sum(k is not None for k in self.block_keys) == len(self.cached), "stray block keys"
        if owners:
            expected = [0] * self.num_blocks
            for owner in owners:
                assert len(set(owner.block_ids)) == len(owner.block_ids), "a request holds a block twice"
                for block_id in owner.block_ids:
                    expected[block_id] += 1
            assert expected == self.ref_counts, "ref counts differ from the owners' block lists"


def _block_key(parent: BlockKey | None, tokens: list[int]) -> BlockKey:
    # Python's int-tuple hash is deterministic; equality on the tuple rules out token collisions.
    return (hash(parent), tuple(tokens))
