"""``digits-cnn``: the embedded digits classifier as a torch-fidelity feature extractor.

Features: ``features`` (the 128-d penultimate layer, the FID/KID/PRC default) and ``logits`` (ISC). Input:
uint8 images B x C x H x W with C = 1 or 3 (averaged to grey), resized to 8x8 if needed.
"""

from __future__ import annotations

import torch

from ..optional import require

try:
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.helpers import vassert
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
except ImportError:
    require("torch_fidelity", "the digits-cnn FID feature extractor")  # clear error if torch-fidelity is missing
    raise

from ..models.digits.classifier import load_classifier

NAME = "digits-cnn"


class FeatureExtractorDigitsCNN(FeatureExtractorBase):
    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        from ..models.digits import CLASSIFIER_PATH

        self.model = load_classifier(feature_extractor_weights_path or CLASSIFIER_PATH).requires_grad_(False)

    def forward(self, x):
        vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting images as torch.Tensor with dtype=uint8")
        vassert(x.dim() == 4 and x.shape[1] in (1, 3), f"Input is not Bx1xHxW or Bx3xHxW: {tuple(x.shape)}")
        x = x.float().mean(dim=1, keepdim=True) / 127.5 - 1.0
        if x.shape[-2:] != (8, 8):
            x = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
        feats = self.model.features(x)
        out = {"features": feats, "logits": self.model.head(feats)}
        return tuple(out[name].float() for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return True

    @staticmethod
    def get_dummy_input_for_compile():
        return (torch.rand([1, 1, 8, 8]) * 255).to(torch.uint8)


def register() -> None:
    """Register ``digits-cnn`` with torch-fidelity (idempotent)."""
    if NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(NAME, FeatureExtractorDigitsCNN)
