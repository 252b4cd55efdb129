"""Shared network pieces: backbones, heads, losses, schedules. No Ray or MLflow in here."""
