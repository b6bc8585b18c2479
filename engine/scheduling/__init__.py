"""Requests, paged KV blocks and the continuous-batching scheduler: pure Python, no torch."""
