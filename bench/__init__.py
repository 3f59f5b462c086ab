"""relay's benchmark harness: ``python -m bench`` (or ``make bench``).

See docs/performance.md for what each scenario measures and how to read the figures.
"""
