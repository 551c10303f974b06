"""Datasets, synthetic phantoms, training, evaluation and model bundle export."""
