"""Plain fine-tuning: a timm backbone's pooled features and a new linear head.

The reference point of every fine-grained method: the same backbone, resolution and recipe with no
method-specific part. ``explain`` gives the class activation map (Zhou et al., CVPR 2016,
arXiv 1512.04150) of the predicted class, computed from the last feature map and the head weights;
for a ViT with class-token pooling it is an approximation read off the patch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones import num_features, to_nchw
from .base import Explanation, Method, ModelSpec
from .ops import class_activation_maps, classifier
from .registry import register_method


@register_method
class Baseline(Method):
    """Backbone -> pooled features -> dropout -> linear head."""

    name = "baseline"
    paper = "Plain fine-tuning of a timm backbone (the reference point of every recipe)"
    code = "none"
    backbones = "any timm model"

    @dataclass
    class Config:
        dropout: float = 0.0  # before the head

    def __init__(self, spec: ModelSpec, cfg: "Baseline.Config"):
        super().__init__(spec, cfg)
        self.backbone = self.make_backbone()
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = classifier(num_features(self.backbone), spec.num_classes, spec.head_init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(images)))

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> Explanation:
        feats = self.backbone.forward_features(images)
        logits = self.head(self.backbone.forward_head(feats, pre_logits=True))
        predicted = logits.argmax(1)
        if num_features(self.backbone) == self.backbone.num_features or feats.ndim != 4:
            cam = class_activation_maps(to_nchw(self.backbone, feats), self.head.weight, predicted)
            return Explanation(logits=logits, maps={"CAM (predicted class)": cam})
        return Explanation(logits=logits, maps={"class score per location (predicted class)":
                                                self.scores_per_location(feats, predicted)})

    def scores_per_location(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """A class activation map through a hidden head (MobileNetV3's ``conv_head``, EfficientViT's): each location
        of the feature map pooled alone through the model's head, then the classifier; ``[B, h, w]``."""
        nhwc = getattr(self.backbone, "output_fmt", "NCHW") == "NHWC"
        b, h, w = (feats.shape[0], *feats.shape[1:3]) if nhwc else (feats.shape[0], *feats.shape[2:])
        cells = feats.reshape(b * h * w, 1, 1, -1) if nhwc else \
            feats.permute(0, 2, 3, 1).reshape(b * h * w, -1, 1, 1)
        scores = self.head(self.backbone.forward_head(cells, pre_logits=True)).reshape(b, h * w, -1)
        return scores.gather(2, classes.view(b, 1, 1).expand(b, h * w, 1)).reshape(b, h, w)
