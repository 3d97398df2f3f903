"""Synthetic data, patch preparation, metrics, inference and visualisation."""
