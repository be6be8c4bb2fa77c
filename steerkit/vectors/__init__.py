"""Concept vectors: methods (pure functions), the readout file format, extraction."""

from .readout import FORMAT_VERSION, ConceptVectors

__all__ = ["FORMAT_VERSION", "ConceptVectors"]
