"""Models in and out of tubelet, one module per format or direction:

* :mod:`~finetune.interop.sources` — ``load_encoder`` / ``open_source``: anything that holds an
  encoder (run dir, checkpoint, exported dir, fine-tuning run, HF dir, ``.pth``) -> a model;
* :mod:`~finetune.interop.native` — tubelet's own ``config.json`` + ``model.safetensors``
  directories (encoder, pretrainer, classifier); the encoder schema itself is
  :mod:`pretrain.models.pretrained` (``VideoViT.save_pretrained`` / ``from_pretrained``);
* :mod:`~finetune.interop.onnx` — ONNX export, checked against onnxruntime;
* :mod:`~finetune.interop.hf` — Hugging Face VideoMAE: the key mapping, import, export, checks;
* :mod:`~finetune.interop.pth` — original VideoMAE / VideoMAE V2 ``.pth`` import;
* :mod:`~finetune.interop.safe_load` — reading weights without running a pickle;
* :mod:`~finetune.interop.weights` — what they share: ``Source`` (state-dict helpers:
  :mod:`pretrain.models.state_dict`);
* :mod:`~finetune.interop.export_cli`, :mod:`~finetune.interop.import_cli` — ``tubelet export`` /
  ``tubelet import``.

Imports go one way: weights, safe_load <- native <- hf <- pth <- sources <- the commands.
"""
