"""Compact tokenizer: count token frequencies, merge, prune a SentencePiece model."""
