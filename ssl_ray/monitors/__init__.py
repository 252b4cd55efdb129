"""What the training loop watches while it trains, below it in the layers: features of a frozen
encoder over a Ray Data iterator, the weighted kNN classifier, and the collapse monitors. The
evaluation protocols (``ssl_ray.eval``) build on these and run above the training driver."""
