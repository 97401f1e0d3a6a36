"""The student engine: runtime policy, the training loop and its losses, evaluation, executors."""
