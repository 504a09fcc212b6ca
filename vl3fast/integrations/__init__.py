"""Swap-ins that put vl3fast ops into models built by other libraries (transformers)."""
