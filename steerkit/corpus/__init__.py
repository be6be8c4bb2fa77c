"""The story corpus: format, loader and checks (docs/corpus.md).

Layout of a corpus folder:
    manifest.json                       concepts with cluster, valence, arousal, description, avoid
    stories/<concept>.txt               unpaired stories separated by a line holding only ---
    paired/<scenario>/baseline.txt      one setting told neutrally (a shared negative)
    paired/<scenario>/<concept>.txt     the same setting framed by one concept
    neutral/*.txt                       neutral paragraphs separated by ---
    prompts/                            prompt sets for experiments (ignored here)

Positives of a concept: its unpaired stories plus its framings in every scenario.
Negatives: the positives of all other concepts plus all baselines (texts that are also a
positive of the concept are never its negatives). Identical texts are stored once.
All validation happens here, before any model is loaded.

Modules: model (the dataclasses), manifest (manifest.json), text (splitting, avoid words,
shingles), loader (walks the folder, runs the checks, builds the Corpus).
"""

from .loader import KNOWN_ENTRIES, load
from .manifest import SNAKE
from .model import CheckReport, Concept, Corpus, Source, Text, TextKind
from .text import SEPARATOR, avoid_hits, jaccard_shingles, split_stories

__all__ = [
    "KNOWN_ENTRIES",
    "SEPARATOR",
    "SNAKE",
    "CheckReport",
    "Concept",
    "Corpus",
    "Source",
    "Text",
    "TextKind",
    "avoid_hits",
    "jaccard_shingles",
    "load",
    "split_stories",
]
