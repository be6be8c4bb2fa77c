"""Intervention experiments: force R, measure what changes, with calibrated statistics, a negative
and a positive control, and a norm-washout diagnostic. See docs/intervene.md.

This room: config.py (settings, R levels), apparatus.py (setup, arms, teacher-forced capture),
sampling.py (sampled generations), washout.py (norm-washout profiles), experiment.py (the three
experiments), analysis.py (tests and verdicts), report.py (the files), run.py (the command).
"""
