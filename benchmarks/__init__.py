"""fastconv's benchmarks: the asv suite (``bench_*.py``), the pytest-benchmark suite
(``pytest_suite/``), and measurement scripts run by hand (``python benchmarks/NAME.py``).

The cases are defined once, in :mod:`fastconv.bench.cases`; ``write_benchmarks_md.py`` puts a
``fastconv bench --json`` run into BENCHMARKS.md. asv imports every module here: only the
``bench_*.py`` modules hold benchmarks.
"""
