"""Literate, Jupyter-first LoRA and QLoRA fine-tuning of vision-language models."""
__version__ = "0.0.1"
