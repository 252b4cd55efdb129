"""ssl-ray: self-supervised visual representation learning on Ray Data, Ray Train and MLflow."""

__version__ = "0.1.0"
