"""Training engine: device and precision, run directories, checkpoints, the training loop."""
