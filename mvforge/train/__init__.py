"""Multi-view diffusion training (MVDream §3): the model, the tiny test model maker, the loop, the sampler."""
