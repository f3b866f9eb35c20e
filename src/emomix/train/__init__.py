"""Training: losses, the in-memory training loop and (later) the Lightning trainer."""
