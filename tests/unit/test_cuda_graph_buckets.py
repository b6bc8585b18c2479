"""Decode CUDA-graph bucket sizes (the graphs themselves are tested under `pytest -m gpu`)."""

from __future__ import annotations

from engine.runner.cuda_graphs import bucket_sizes


def test_buckets_double_then_step_by_eight_up_to_the_largest_batch():
    assert bucket_sizes(128) == [1, 2, 4, *range(8, 129, 8)]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert bucket_sizes(5) == [1, 2, 4, 5]
    assert bucket_sizes(1) == [1]


def test_every_batch_size_has_a_bucket_no_more_than_eight_rows_larger():
    buckets = bucket_sizes(100)
    for size in range(1, 101):
        bucket = next(b for b in buckets if b >= size)
        assert bucket - size < 8
