"""MLflow: one run per pretraining; only the driver and rank 0 talk to it."""
