"""Benchmarks of the streaming path (python -m bench.run): real daphne, worker, Redis, fake LLM.

See bench/RESULTS.md for the committed figures and how to run them.
"""
