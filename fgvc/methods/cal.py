"""CAL: counterfactual attention learning on top of WS-DAN. The attention maps are trained by the effect they
have on the prediction: the logits with the learned maps minus the logits with random (counterfactual) maps.

Paper: Rao, Chen, Lu, Zhou. "Counterfactual Attention Learning for Fine-Grained Visual Categorization and
Re-identification", ICCV 2021, arXiv 2108.08728.
Official code: https://github.com/raoyongming/CAL (``fgvc/models/cal.py``, ``fgvc/train_distributed.py``,
``fgvc/infer.py``), read at 63123b2; it is built on the WS-DAN PyTorch port, and so is this file: CAL is a
subclass of :class:`fgvc.methods.wsdan.WSDAN` and shares its attention maps, bilinear attention pooling, center
loss and attention cropping and dropping.

- Features: one stage of any timm backbone with stages (``feature_layer: auto``: the stage at stride 16, as
  WS-DAN). The official ResNet-101 runs its last stage at stride 16 (``layer4`` with stride 1, no dilation):
  ``feature_layer: layer4, unstride: true`` (the paper recipes).
- Attention: 32 maps from a new 1x1 conv + BN + ReLU; BAP with the signed square root taken of
  ``|x| + 1e-6``; a classifier without bias on 100 times the embedding.
- Counterfactual: the same pooling with random maps, ``U(0, 2)`` per element in training (all ones at test);
  the effect is ``fc(100 f) - fc(100 f_cf)``.
- Loss (the official training script): ``CE(raw) / 3 + CE([crop; drop]) * 2 / 3 + CE([effect_raw; effect_crop;
  effect_drop]) + L_center``, each CE a mean over the images it names; crop and drop go through the network in
  one pass, as in the official code. The centers are updated as ``c[y] += beta (f - c_hat[y])`` (a label seen
  twice in a batch keeps its last image's update).
- Inference (``inference``): ``multicrop`` (default, ``infer.py``): the logits of the image and of three crops
  around the mean attention map (at 0.3, 0.2 and 0.1 of its maximum, padded by 0.1, 0.1 and 0.05), and the same
  for the horizontally flipped image, averaged (8 views); ``refine``: the image and the crop at 0.1 (the
  training script's validation); ``raw``: the image alone. Logits are averaged, not probabilities, as the
  official code does.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..backbones import create_stage_backbone, remove_stage_stride
from ..errors import ConfigError
from .base import Explanation, ModelSpec, StepContext, StepOutput
from .ops import crop_and_zoom, upsample_maps
from .registry import register_method
from .wsdan import WSDAN, bilinear_attention_pooling

# (theta, padding) of the test-time crops around the mean attention map
MULTICROP = ((0.3, 0.1), (0.2, 0.1), (0.1, 0.05))
REFINE = ((0.1, 0.05),)

# The official state dict's names (ResNet backbones) -> fgvc's; the centers are saved apart there
# ('feature_center'), here as the buffer 'centers'.
OFFICIAL_NAMES = [(r"^features\.0\.", "backbone.model.conv1."), (r"^features\.1\.", "backbone.model.bn1."),
                  (r"^features\.([4-7])\.", lambda m: f"backbone.model.layer{int(m.group(1)) - 3}."),
                  (r"^attentions\.conv\.", "attention.0."), (r"^attentions\.bn\.", "attention.1."),
                  (r"^fc\.", "fc.")]


def official_name(key: str) -> str:
    """An official CAL (ResNet) parameter name as fgvc names it (``features.7.2.conv3.weight`` ->
    ``backbone.model.layer4.2.conv3.weight``); unknown names come back unchanged."""
    for pattern, repl in OFFICIAL_NAMES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


@register_method
class CAL(WSDAN):
    """WS-DAN with counterfactual attention: its effect on the logits is trained, the maps are judged by it."""

    name = "cal"
    paper = ("Rao et al., Counterfactual Attention Learning for Fine-Grained Visual Categorization and "
             "Re-identification, ICCV 2021, arXiv 2108.08728")
    code = "https://github.com/raoyongming/CAL"
    backbones = ("any timm model with stages (CNNs and hierarchical transformers: ResNet, EfficientNet, ConvNeXt, "
                 "Swin, MaxViT, CoAtNet, ...), not a plain ViT: the stage at stride 16; ResNet-101 with its last stage "
                 "at stride 16 in the paper")
    fc_bias = False
    bap_eps = 1e-6
    center_update = "assign"

    @dataclass
    class Config(WSDAN.Config):
        # multicrop: the official infer.py (8 views); refine: the training script's validation (2); raw: 1
        inference: Literal["multicrop", "refine", "raw"] = "multicrop"
        joint_augmented_pass: bool = True  # crop and drop in one pass (the official code)
        counterfactual: list[float] = field(default_factory=lambda: [0.0, 2.0])  # U(lo, hi) maps in training
        effect_weight: float = 1.0
        unstride: bool = False  # the feature stage's stride-2 convolutions set to 1 (official ResNet-101 layer4)

    @classmethod
    def check_backbone(cls, spec: ModelSpec) -> None:
        cls.cnn_stages_of(spec)

    def __init__(self, spec: ModelSpec, cfg: "CAL.Config"):
        names = [f["module"] for f in self.stages_of(spec)]
        moved = None
        if cfg.unstride and isinstance(cfg.feature_layer, str) and cfg.feature_layer not in names + ["auto"]:
            # the recipes' layer4 at stride 16, on a backbone that has no layer4: its stage at stride 16
            moved = (f"cal: method.feature_layer '{cfg.feature_layer}' is not a stage of {spec.backbone}; the stage "
                     "at stride 16 instead (the official layer4's stride)")
            cfg = dataclasses.replace(cfg, feature_layer="auto", unstride=False)
        super().__init__(spec, cfg)
        if moved:
            self.notes.append(moved)
        if cfg.unstride:
            module = self.stages_of(spec)[self.index]["module"]
            size = spec.img_size
            with torch.no_grad(), torch.device("meta"):  # the resolution it gives, checked without weights
                probe = create_stage_backbone(spec.backbone, [self.index], img_size=size, **spec.backbone_args).eval()
                before = probe(torch.empty(1, 3, size, size))[0].shape[-1]
                changed = remove_stage_stride(probe.model, module)
                try:
                    after = probe(torch.empty(1, 3, size, size))[0].shape[-1] if changed else before
                except RuntimeError:  # a shortcut that still downsamples (average pooling): shapes disagree
                    after = None
            if after != 2 * before:
                raise ConfigError(f"method.unstride: the stage {module} of {spec.backbone} does not downsample by "
                                  "stride-2 convolutions of its own; use method.unstride=false")
            remove_stage_stride(self.backbone.model, module)
            self.notes.append(f"cal: {module} keeps its input's resolution (stride-2 convolutions set to 1: "
                              f"{', '.join(changed)}), as the official ResNet-101")

    # -- the network ----------------------------------------------------------------------------------

    def counterfactual_logits(self, feats: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """The classifier on the pooling with counterfactual maps: random ``U(lo, hi)`` in training, ones at
        test (then every part feature is the plain average of the feature map)."""
        if self.training:
            lo, hi = self.cfg.counterfactual
            fake = torch.empty(att.shape, device=att.device, dtype=torch.float32).uniform_(lo, hi)
        else:
            fake = torch.ones(att.shape, device=att.device, dtype=torch.float32)
        return self.classify(bilinear_attention_pooling(feats, fake, self.bap_eps))

    def views(self, images: torch.Tensor, att: torch.Tensor, crops) -> torch.Tensor:
        """The test-time crops of ``images`` around their mean attention ``att``: ``[len(crops) * B, C, H, W]``."""
        size = images.shape[-2:]
        return torch.cat([crop_and_zoom(images, self.refine_boxes(att, size, t, p)) for t, p in crops])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, att, emb = self.maps_and_embedding(images)
        logits = self.classify(emb).float()
        if self.cfg.inference == "raw":
            return logits
        crops = MULTICROP if self.cfg.inference == "multicrop" else REFINE
        b = images.shape[0]
        total = logits + self.classify(self.maps_and_embedding(self.views(images, att, crops))[2]).float() \
            .view(len(crops), b, -1).sum(0)
        count = 1 + len(crops)
        if self.cfg.inference == "multicrop":  # the same four views of the mirrored image
            flipped = images.flip(3)
            _, att_m, emb_m = self.maps_and_embedding(flipped)
            total = total + self.classify(emb_m).float() + self.classify(
                self.maps_and_embedding(self.views(flipped, att_m, crops))[2]).float().view(len(crops), b, -1).sum(0)
            count *= 2
        return total / count

    # -- training -------------------------------------------------------------------------------------

    def training_step(self, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> StepOutput:
        feats, att, emb = self.maps_and_embedding(images)
        logits = self.classify(emb)
        effect = logits - self.counterfactual_logits(feats, att)
        crops, dropped, _ = self.augment(images, att.detach())
        if self.cfg.joint_augmented_pass:
            feats_a, att_a, emb_a = self.maps_and_embedding(torch.cat([crops, dropped]))
            logits_a = self.classify(emb_a)
            effect_a = logits_a - self.counterfactual_logits(feats_a, att_a)
        else:
            parts = [self.maps_and_embedding(x) for x in (crops, dropped)]
            logits_a = torch.cat([self.classify(p[2]) for p in parts])
            effect_a = logits_a - torch.cat([self.counterfactual_logits(p[0], p[1]) for p in parts])
        y2, y3 = targets.repeat(2), targets.repeat(3)
        ce_raw = ctx.criterion(logits, targets)
        ce_aug = ctx.criterion(logits_a, y2)
        ce_effect = ctx.criterion(torch.cat([effect, effect_a]), y3)
        center = self.center_loss(emb, targets)
        loss = ce_raw / 3 + ce_aug * 2 / 3 + self.cfg.effect_weight * ce_effect + self.cfg.center_weight * center
        return StepOutput(loss=loss, logs={"cls_raw": ce_raw.detach(), "cls_aug": ce_aug.detach(),
                                           "effect": ce_effect.detach(), "center": center.detach()},
                          logits=logits.detach())

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> Explanation:
        e = super().explain(images)  # mean and strongest attention, the dropped region, the training crop
        _, att, _ = self.maps_and_embedding(images)
        size = images.shape[-2:]
        e.maps["max attention (official visualization)"] = upsample_maps(att.amax(1), size).clamp_min(0).sqrt()
        crops = MULTICROP if self.cfg.inference == "multicrop" else REFINE
        if self.cfg.inference != "raw":
            e.boxes.pop("test-time crop", None)
            e.boxes["test-time crops"] = torch.stack([self.refine_boxes(att, size, t, p) for t, p in crops], 1)
        return e


__all__ = ["CAL", "official_name", "MULTICROP", "REFINE"]
