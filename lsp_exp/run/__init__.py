"""Running an experiment: config schemas and checks, launch, checkpoints, MLflow tracking, sweeps, chaining."""
