"""Weights from volumes: self-supervised training, fine-tune jobs, evaluation and regions."""
