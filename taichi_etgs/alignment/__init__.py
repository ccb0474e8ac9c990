"""Residual alignment of tilt views: matching each view to the other views, and projection
matching to a prediction (docs/method.md, "Alignment refinement")."""

from .matching import ViewAlignment, match_views, without_gauge
from .other_views import match_to_other_views

__all__ = ["ViewAlignment", "match_to_other_views", "match_views", "without_gauge"]
