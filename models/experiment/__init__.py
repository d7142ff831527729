"""The balancing experiment (paper 000's protocol, extended): every strategy x N seeds as independent
units, evaluated on the untouched ``test`` split, then aggregated into report.md, results.json, roc.png.

``config`` (YAML), ``prepare`` (split, synthesizer, balanced manifest), ``units`` (one classifier per
strategy and seed; one process each; a finished unit is skipped on rerun), ``aggregate`` (metrics and the
paired comparison against ``none``), ``report`` (markdown and plots), ``runner`` (the whole pipeline).
"""
