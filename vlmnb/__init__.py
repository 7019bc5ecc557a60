"""Literate, Jupyter-first LoRA and QLoRA fine-tuning of vision-language models.

Nothing heavy is imported here: `vlmnb --help` answers without loading torch or transformers. The public names load
their module on first use (PEP 562): `from vlmnb import train, load_model, tiny_model`. `vlmnb.train` is the training
module, and calling it trains (`train(config)` is `vlmnb.train.train(config)`), so `import vlmnb.train as t` and
`from vlmnb import train` both mean what they say. Importing `vlmnb.load` (which every loading function does) registers
vlmnb's image-only processors with transformers' AutoProcessor, so tiny model folders load with
`AutoProcessor.from_pretrained`."""
__version__ = "0.0.1"

import importlib

_LAZY = {"load_model": "vlmnb.load", "tiny_model": "vlmnb.load"}  # name -> the module that defines it
__all__ = ["train", "load_model", "tiny_model"]


def __getattr__(name: str):
    if name in _LAZY: return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "train": return importlib.import_module("vlmnb.train")  # the module, callable (see its last cell)
    raise AttributeError(f"module 'vlmnb' has no attribute {name!r}")


def __dir__(): return sorted([*globals(), *__all__])
