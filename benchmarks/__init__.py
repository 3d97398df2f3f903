"""Benchmarks of training, inference and the demo (see ``python -m benchmarks.run_all --help``)."""
