"""What one trial does: loss networks, distances, tasks and their data. Knows nothing of Ray or MLflow."""
