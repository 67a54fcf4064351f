"""speechdistill: knowledge distillation for speech recognisers."""

__version__ = "0.1.0"
