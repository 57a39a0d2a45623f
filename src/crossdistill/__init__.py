"""crossdistill: cross-modal knowledge distillation with Hydra and PyTorch Lightning."""

__version__ = "0.1.0"
