"""Multi-round training: batch losses, softmax sampling without replacement, dataset writing."""
