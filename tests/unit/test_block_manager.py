"""BlockManager: exact block ids, reference counts, prefix hits and eviction order."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.scheduling.block_manager import BlockManager

BLOCK = 4


@dataclass
class Owner:
    token_ids: list[int]
    block_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_hashed_blocks: int = 0
    hashed_parent: object = None


def admit(bm: BlockManager, owner: Owner) -> bool:
    """Prefix lookup + allocation for the whole prompt, as the scheduler admits a request."""
    cached = bm.find_cached_prefix(owner.token_ids)
    num_computed = len(cached) * BLOCK
    if not bm.allocate(owner, len(owner.token_ids) - num_computed, cached):
        return False
    owner.num_computed_tokens = len(owner.token_ids)
    return True


def test_fresh_allocation_takes_lowest_ids_in_order():
    bm = BlockManager(num_blocks=8, block_size=BLOCK)
    a = Owner(list(range(10)))  # 10 tokens -> 3 blocks
    assert admit(bm, a)
    assert a.block_ids == [0, 1, 2]
    assert bm.ref_counts[:4] == [1, 1, 1, 0]
    assert bm.num_free_blocks == 5
    bm.check_invariants([a])


def test_growing_by_decode_adds_a_block_only_at_the_boundary():
    bm = BlockManager(num_blocks=8, block_size=BLOCK)
    a = Owner(list(range(8)))
    assert admit(bm, a) and a.block_ids == [0, 1]
    a.token_ids.append(100)  # a sampled token; computing it needs slot 8 -> a third block
    assert bm.allocate(a, 1) and a.block_ids == [0, 1, 2]
    a.num_computed_tokens = 9
    a.token_ids.append(101)
    assert bm.allocate(a, 1) and a.block_ids == [0, 1, 2]  # slot 9 fits in block 2
    bm.check_invariants([a])


def test_shared_prefix_is_reused_with_reference_counts():
    bm = BlockManager(num_blocks=8, block_size=BLOCK)
    a = Owner(list(range(10)))
    b = Owner(list(range(8)) + [50, 51, 52])  # shares two full blocks with a
    assert admit(bm, a) and admit(bm, b)
    assert a.block_ids == [0, 1, 2]
    assert b.block_ids == [0, 1, 3]
    assert bm.ref_counts[:4] == [2, 2, 1, 1]
    bm.check_invariants([a, b])


def test_last_token_is_never_served_from_cache():
    bm = BlockManager(num_blocks=8, block_size=BLOCK)
    a = Owner(list(range(8)))
    assert admit(bm, a)
    bm.free(a)
    assert len(bm.find_cached_prefix(list(range(8)))) == 1  # 8 tokens: only the first block may hit
    assert len(bm.find_cached_prefix(list(range(9)))) == 2


def test_freed_blocks_stay_cached_and_revive():
    bm = BlockManager(num_blocks=8, block_size=BLOCK)
    a = Owner(list(range(10)))
    assert admit(bm, a)
    bm.free(a)
    assert bm.ref_counts == [0] * 8 and bm.num_free_blocks == 8
    assert list(bm.free_queue)[-3:] == [2, 1, 0]  # tail first: evicted first
    b = Owner(list(range(9)))
    assert admit(bm, b)
    assert b.block_ids == [0, 1, 3]  # two revived from cache, one fresh (block 3, the oldest free)
    assert bm.ref_counts[:4] == [1, 1, 0, 1]
    bm.check_invariants([b])


def test_eviction_order_is_least_recently_freed():
    bm = BlockManager(num_blocks=4, block_size=BLOCK)
    a, b = Owner(list(range(8))), Owner(list(range(100, 108)))
    assert admit(bm, a) and admit(bm, b)
    assert (a.block_ids, b.block_ids) == ([0, 1], [2, 3])
    bm.free(a)  # queue: 1, 0
    bm.free(b)  # queue: 1, 0, 3, 2
    assert list(bm.free_queue) == [1, 0, 3, 2]
    c = Owner(list(range(200, 208)))
    assert admit(bm, c)
    assert c.block_ids == [1, 0]  # a's blocks evicted; b's prefix survives
    assert bm.find_cached_prefix(list(range(100, 109))) == [2, 3]
    assert bm.find_cached_prefix(list(range(9))) == []
    bm.check_invariants([c])


def test_allocation_failure_changes_nothing():
    bm = BlockManager(num_blocks=3, block_size=BLOCK)
    a = Owner(list(range(8)))
    assert admit(bm, a)
    before = (list(bm.ref_counts), list(bm.free_queue), dict(bm.cached))
    big = Owner(list(range(50, 62)))  # needs 3 blocks, 1 free
    assert not bm.allocate(big, 12)
    assert big.block_ids == []
    assert (list(bm.ref_counts), list(bm.free_queue), dict(bm.cached)) == before
    bm.check_invariants([a])


def test_prefix_caching_off_never_hits():
    bm = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=False)
    a = Owner(list(range(10)))
    assert admit(bm, a)
    bm.free(a)
    assert bm.find_cached_prefix(list(range(10))) == [] and not bm.cached


def test_blocks_filled_by_decoding_are_cached_one_at_a_time():
    bm = BlockManager(num_blocks=8, block_size=BLOCK)
    a = Owner(list(range(6)))
    assert admit(bm, a) and a.num_hashed_blocks == 1  # tokens 0-3 fill block 0
    for token in range(6, 13):  # decode: each step computes the previous last token
        a.token_ids.append(token)
        assert bm.allocate(a, 1)
        a.num_computed_tokens += 1
    assert a.num_hashed_blocks == 3  # tokens 0-11 known and computed: three full blocks
    assert bm.find_cached_prefix(list(range(13))) == a.block_ids[:3]
    bm.free(a)  # (a preemption) the owner's hashing starts over with its next blocks
    assert (a.num_hashed_blocks, a.hashed_parent) == (0, None)


operations = st.lists(st.tuples(st.sampled_from(["admit", "grow", "free"]), st.integers(0, 5),
                                st.integers(1, 14)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_random_operations_keep_invariants(ops):
    bm = BlockManager(num_blocks=10, block_size=BLOCK)
    live: list[Owner] = []
    for kind, pick, size in ops:
        if kind == "admit":
            prefix = [pick] * (size // 2)  # a few shared prefixes
            owner = Owner(prefix + list(range(1000 + len(live) * 20, 1000 + len(live) * 20 + size)))
            if admit(bm, owner):
                live.append(owner)
            else:
                assert owner.block_ids == []
        elif kind == "grow" and live:
            owner = live[pick % len(live)]
            owner.token_ids.append(size)
            idle = not bm.needing_allocation([owner], [1])
            before = (list(owner.block_ids), dict(bm.cached), list(bm.ref_counts), owner.num_hashed_blocks)
            if bm.allocate(owner, 1):
                owner.num_computed_tokens += 1
            else:
                owner.token_ids.pop()
            if idle:  # the scheduler skips these: allocate must have had nothing to do
                assert (owner.block_ids, bm.cached, bm.ref_counts, owner.num_hashed_blocks) == before
        elif kind == "free" and live:
            bm.free(live.pop(pick % len(live)))
        bm.check_invariants(live)
        for owner in live:
            assert len(owner.block_ids) * BLOCK >= owner.num_computed_tokens
