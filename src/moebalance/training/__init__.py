"""Training: the loop shared by pretraining and SFT (trainer.py), its batch sources,
checkpoints and telemetry, and the pretrain stage (pretrain.py)."""
