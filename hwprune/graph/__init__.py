"""Capture a model and find the channels that must be pruned together."""
