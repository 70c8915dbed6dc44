"""Measuring quality: perplexity, bits per byte and KL divergence on the shipped corpora, the llama.cpp scorer, the
importance matrix, the quality store."""
