"""The shipped Hydra configs, installed as the package ``crossdistill.conf`` (docs/configs.md)."""
