"""The model mechanics below the orchestration: one role's loss over micro-batches, generation and
log-probs, models, precision, sharding."""
