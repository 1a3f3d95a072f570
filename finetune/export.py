"""Old import path, kept for users: ``from finetune.export import load_encoder`` (and the other
names this module documented). The code lives in :mod:`finetune.interop`; new code imports
``tubelet.load_encoder`` or from there."""

from finetune.interop.hf import export_hf
from finetune.interop.native import save_encoder
from finetune.interop.onnx import export_onnx
from finetune.interop.sources import load_encoder

__all__ = ["load_encoder", "save_encoder", "export_onnx", "export_hf"]
