"""Residual alignment of tilt views by projection matching (docs/method.md)."""

from .matching import ViewAlignment, match_views

__all__ = ["ViewAlignment", "match_views"]
