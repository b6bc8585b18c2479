"""Constrained output: grammars compiled into token matchers beside the engine loop, and each
step's allowed-token bitmask (the sampler applies it; the scheduler advances the matchers)."""
