"""Benchmarks of ccsync beside a bare baseline and a naive Celery implementation.

``python -m bench`` runs the comparison and writes BENCHMARKS.md; ``python -m bench soak`` runs one
worker through many events and reports how its memory grows. See bench/README.md.
"""
