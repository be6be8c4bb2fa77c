"""Concept-vector quality: pure metric functions, per-head analysis, report assembly."""
