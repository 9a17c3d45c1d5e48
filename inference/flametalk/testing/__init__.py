"""Synthetic data for tests, benchmarks and drift checks (FLAME and the training data cannot ship): FLAME-format
files (synthetic_flame.py) and a tiny training dataset (synthetic_dataset.py). Not part of the Blender add-on."""
