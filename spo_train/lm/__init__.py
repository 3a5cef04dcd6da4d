"""The language model: loading, prompts, sampling, log-probs, step options. No lake."""
