"""Evaluation of frozen encoders: the kNN monitor (more protocols come with the evaluation suite)."""
