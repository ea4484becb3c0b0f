"""Models: architectures, weights, losses, the training engine, checkpoints and model cards, the predictor."""
