"""Evaluation: a model's answers to an instruction set (cached), and reference metrics on them."""
