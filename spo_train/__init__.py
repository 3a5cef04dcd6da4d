"""spo_train: models, log-probs, losses, generation, sandboxed judge, training and evaluation."""
