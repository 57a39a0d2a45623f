"""Readers of on-disk data formats (no Lightning, no generation)."""
