"""The self-play core: the LightningModule, the roles, generation and log-probs, models, step metrics."""
