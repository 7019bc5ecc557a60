"""Literate, Jupyter-first LoRA and QLoRA fine-tuning of vision-language models."""
__version__ = "0.0.1"

# Importing vlmnb registers its image-only processors with transformers' AutoProcessor,
# so folders saved by `vlmnb.load.tiny_model` load with `AutoProcessor.from_pretrained`.
from .load import load_model, tiny_model  # noqa: E402
from .train import train  # noqa: E402  (the function shadows the submodule name: `from vlmnb.train import ...` still works)
