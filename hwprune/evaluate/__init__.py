"""Evaluation: a model with channels masked, to score a candidate without changing the model for good."""
