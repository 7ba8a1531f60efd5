"""Benchmarks of the twin (``make bench``): they print figures, they never assert speed.

Run everything with ``python -m tests.benchmarks [--quick] [--out FILE]`` or one
benchmark with ``python -m tests.benchmarks.bench_<name> [--quick]``. Files are named
``bench_*.py`` so pytest never collects them; ``tests/test_benchmarks_smoke.py`` only
proves each one runs and prints its figures in ``--quick`` mode.
"""
