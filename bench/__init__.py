"""Benchmarks of TaskFlow next to raw PyMongo and Redis baselines (`make bench`)."""
