"""Evaluation: held-out accuracy and pass@k, win rate, perplexity, overlap and diversity metrics."""
