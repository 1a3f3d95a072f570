"""Models: VideoViT and MViTv2 encoders, VideoMAE and MaskFeat pretrainers, by name.

    from pretrain.models import create_model, list_models
    mae = create_model("videomae_small", num_frames=16, img_size=224, decoder_mask_ratio=0.5)
    loss, aux = mae(video)                     # video: (B, 3, T, H, W) normalised
    enc = create_model("vit_small", num_classes=0)
    tokens = enc.forward_features(video)       # (B, N, D); enc(video) -> (B, D)

Importing this package registers every model (``list_models()`` shows them).
"""

from .registry import create_model, is_model, list_models, register_model
from .vit import VideoViT
from .mae import MaskedAutoencoder
from .mvit import MViT
from .maskfeat import MaskFeat

__all__ = ["create_model", "is_model", "list_models", "register_model", "VideoViT", "MaskedAutoencoder", "MViT",
           "MaskFeat"]
