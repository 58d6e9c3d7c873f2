"""didr: align one-step diffusion generators with reward models (Diff-Instruct with Diffused Reward)."""

__version__ = "0.1.0"
