"""The Ray Train side: the per-worker loop and the driver that builds the TorchTrainer."""
