"""Multi-view diffusion training (MVDream §3): the loop and Ray Train; the model is in mvforge.models."""
