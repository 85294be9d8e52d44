"""Training (torch): the ALGD learner, its networks, the trainer, checkpoints, fine-tuning."""
