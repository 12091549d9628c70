"""The training engine: the loop (trainer), its optimizer, precision, state, logging and learning check,
checkpoints, distributed set-up, sampling, evaluation and metrics."""
