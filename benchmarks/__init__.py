"""fastconv's benchmarks: the asv suite (``bench_*.py``) and, in ``pytest_suite/``, pytest-benchmark.

The shapes are defined once, in :mod:`fastconv._bench_shapes`.
"""
