"""Engine work inside a stage process: the harness, KFP executor output, Key Vault, MLflow,
promotion and model registries. Stage images carry it; the engines compile against it."""
