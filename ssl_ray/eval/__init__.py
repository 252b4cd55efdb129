"""Evaluation protocols on trained encoders (kNN, linear probe, few-label fine-tuning,
diagnostics), above the training driver: fine-tuning runs the pretraining loop."""
