"""What runs and where: the study spec, the Ray Tune driver, MLflow tracking, resume, the CLI."""
