"""Meta-learning engine: pure torch.func, no Flower."""
