"""The SynthWorld evaluator: scores videos against their prompts (docs/EVAL.md).

parse (prompt -> expected content), measure (video -> palette components), metrics (per-video
pass / fail with raw values), report (accuracy table with bootstrap intervals, JSON, HTML), cli
(``videodit eval``).
"""
