"""Evaluation: a model's answers (cached), reference metrics, pairwise judging, verifiable instructions."""
