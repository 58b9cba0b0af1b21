"""Parameter inheritance: prune a large checkpoint into a small model's starting weights."""
