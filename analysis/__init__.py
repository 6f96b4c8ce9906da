"""Reads a study's results back from MLflow and tests the transfer-learning conventions on them."""
