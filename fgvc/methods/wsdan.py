"""WS-DAN: attention maps pool part features (bilinear attention pooling) and guide data augmentation.

Paper: Hu, Qi, Huang, Lu. "See Better Before Looking Closer: Weakly Supervised Data Augmentation Network
for Fine-Grained Visual Classification", arXiv 1901.09891 (2019).
Official code (TensorFlow): https://github.com/tau-yihouxiang/WS_DAN, read at 199fa5e. The widely used
PyTorch port: https://github.com/GuYuc/WS-DAN.PyTorch (third party), read at 8777912.

- Features: one stage of any timm backbone (Inception-V3 ``Mixed_6e`` in the paper: 26 x 26 at 448);
  the layers after it are pruned away. ``feature_layer: auto`` (and a layer name the backbone does not
  have, such as ``Mixed_6e`` on a ResNet) takes the stage at stride 16, where ``Mixed_6e`` sits.
- Attention maps: M = 32, from a new 1x1 conv + BN + ReLU (default, as the PyTorch port), or the first M
  channels of a pretrained backbone layer applied to the features (the official TensorFlow design:
  ``Mixed_7a``'s first 1x1 branch), or of the features themselves (the official Stanford Dogs setting).
- Bilinear attention pooling: part features averaged over positions, signed square root, L2 over the
  flattened ``M * C`` vector; the classifier sees 100 times that vector.
- Center loss against L2-normalized class centers (beta = 0.05; duplicate labels accumulate as in the
  official code; synchronized over processes); the centers are a buffer, saved in checkpoints.
- Attention-guided augmentation from detached maps, vectorized over the batch: one map per image sampled
  with probability proportional to the square root of its mean (independently for crop and drop); crop
  above ``theta_c ~ U(0.4, 0.6)`` of its maximum, the box padded by 10 % and clamped, resized bilinearly to
  the input size; drop below ``theta_d ~ U(0.2, 0.5)``. Loss ``(CE_raw + CE_crop + CE_drop) / 3 + L_center``.
- Inference: the average of the probabilities of the raw image and of the crop around the mean attention
  map (threshold 0.1, padding 0.05); option: raw only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..backbones import feature_index, stage_at_stride, stage_info
from ..errors import ConfigError
from .base import Explanation, Method, ModelSpec, StepContext, StepOutput
from .ops import crop_and_zoom, log_mean_softmax, mask_box, upsample_maps
from .registry import register_method


def bilinear_attention_pooling(features: torch.Tensor, attention: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The WS-DAN embedding: ``[B, M * C]``, signed square root, L2-normalized over the whole vector.

    Args:
        features: ``[B, C, H, W]``.
        attention: ``[B, M, H, W]``.
        eps: Added under the square root (the PyTorch port: 1e-12; CAL's code: 1e-6).
    """
    b, _, h, w = features.shape
    parts = torch.einsum("bmhw,bchw->bmc", attention.float(), features.float()) / (h * w)
    parts = torch.sign(parts) * torch.sqrt(parts.abs() + eps)
    return F.normalize(parts.reshape(b, -1), dim=-1)


def boxes_from_maps(maps: torch.Tensor, theta: torch.Tensor, padding: float) -> torch.Tensor:
    """Pixel boxes ``[B, 4]`` (x0, y0, x1, y1) around the cells of ``maps [B, H, W]`` at or above ``theta``
    times each map's maximum, padded by ``padding`` of the size on every side and clamped to the map."""
    b, h, w = maps.shape
    mask = maps >= theta.view(b, 1, 1) * maps.amax((1, 2), keepdim=True)
    box = mask_box(mask).float()
    pad = box.new_tensor([-padding * w, -padding * h, padding * w, padding * h])
    limit = box.new_tensor([w - 1.0, h - 1.0, w - 1.0, h - 1.0])
    return torch.minimum((box + pad).clamp_min(0), limit)


@register_method
class WSDAN(Method):
    """Attention maps + bilinear attention pooling + center loss + attention cropping and dropping."""

    name = "wsdan"
    paper = "Hu et al., See Better Before Looking Closer: Weakly Supervised Data Augmentation Network, arXiv 1901.09891"
    code = "https://github.com/tau-yihouxiang/WS_DAN (TensorFlow); PyTorch port: https://github.com/GuYuc/WS-DAN.PyTorch"
    lr_hint = ("WS-DAN's classifier sees 100x its normalized feature, so its head moves 10^4 times faster than the "
               "learning rate suggests; its recipes use train.lr=0.001 with train.head_lr_scale=1")
    backbones = "any timm model with multi-stage features (CNNs, Swin, ConvNeXt, ViT); Inception-V3 Mixed_6e in the paper"
    # what CAL's code (built on this one) does differently is set by these three
    fc_bias: ClassVar[bool] = True
    bap_eps: ClassVar[float] = 1e-12
    center_update: ClassVar[str] = "accumulate"  # a label twice in a batch: both updates (TF code) / the last

    @dataclass
    class Config:
        # a stage index or name (Mixed_6e, layer3, ...); auto: the stage at stride 16 (Mixed_6e's)
        feature_layer: Union[int, str] = "auto"
        num_maps: int = 32
        attention: Literal["conv", "layer", "features"] = "conv"
        attention_layer: str = "Mixed_7a.branch3x3_1"  # with attention=layer: a pretrained module on the features
        center_beta: float = 0.05
        center_weight: float = 1.0
        crop_theta: list[float] = field(default_factory=lambda: [0.4, 0.6])
        crop_padding: float = 0.1
        drop_theta: list[float] = field(default_factory=lambda: [0.2, 0.5])
        inference: Literal["refine", "raw"] = "refine"
        refine_theta: float = 0.1
        refine_padding: float = 0.05
        joint_augmented_pass: bool = False  # one pass over [crop; drop] (fewer launches) instead of two

    @classmethod
    def check_backbone(cls, spec: ModelSpec) -> None:
        cls.stages_of(spec)

    def __init__(self, spec: ModelSpec, cfg: "WSDAN.Config"):
        super().__init__(spec, cfg)
        info = self.stages_of(spec)
        self.index = choose_feature_stage(info, cfg.feature_layer, spec.backbone, self.notes)
        channels = int(info[self.index]["num_chs"])
        m = cfg.num_maps
        if cfg.attention == "layer":
            full = self.make_backbone()  # the attention layer is a pretrained module beyond the feature stage
            try:
                layer = copy.deepcopy(full.get_submodule(cfg.attention_layer))
            except AttributeError:
                raise ConfigError(f"method.attention_layer: {spec.backbone} has no module '{cfg.attention_layer}'") from None
            del full
            self.attention = layer  # pretrained: trained at the backbone's LR
        elif cfg.attention == "conv":
            self.attention = nn.Sequential(nn.Conv2d(channels, m, 1, bias=False), nn.BatchNorm2d(m, eps=1e-3),
                                           nn.ReLU(inplace=True))
        else:
            self.attention = nn.Identity()
            if channels < m:
                raise ConfigError(f"method.num_maps={m} exceeds the {channels} feature channels")
        self.backbone = self.make_stage_backbone([self.index])
        self.fc = nn.Linear(m * channels, spec.num_classes, bias=self.fc_bias)
        self.register_buffer("centers", torch.zeros(spec.num_classes, m * channels))

    def is_pretrained_parameter(self, name: str) -> bool:
        return super().is_pretrained_parameter(name) or (name.startswith("attention.") and
                                                         self.cfg.attention == "layer")

    # -- the network ----------------------------------------------------------------------------------

    def maps_and_embedding(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feature map ``[B, C, h, w]``, attention maps ``[B, M, h, w]`` and the BAP embedding ``[B, M * C]``."""
        feats = self.backbone(images)[0]
        att = self.attention(feats)[:, : self.cfg.num_maps]
        return feats, att, bilinear_attention_pooling(feats, att, self.bap_eps)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(100.0 * embedding.to(self.fc.weight.dtype))

    def refine_boxes(self, att: torch.Tensor, size: tuple[int, int], theta: Optional[float] = None,
                     padding: Optional[float] = None) -> torch.Tensor:
        """The test-time crop: around the mean attention map (at ``theta`` of its maximum, padded by ``padding``;
        the configured ``refine_theta`` and ``refine_padding`` by default)."""
        mean = upsample_maps(att.mean(1), size)
        theta = att.new_full((att.shape[0],), self.cfg.refine_theta if theta is None else theta, dtype=torch.float32)
        return boxes_from_maps(mean, theta, self.cfg.refine_padding if padding is None else padding)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, att, emb = self.maps_and_embedding(images)
        logits = self.classify(emb)
        if self.cfg.inference == "raw":
            return logits
        crop = crop_and_zoom(images, self.refine_boxes(att, images.shape[-2:]))
        logits2 = self.classify(self.maps_and_embedding(crop)[2])
        return log_mean_softmax([logits, logits2])

    # -- training -------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_maps(self, att: torch.Tensor, size: tuple[int, int],
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """One map per image, drawn with probability proportional to sqrt(mean), upsampled: ``[B, H, W]``."""
        weight = att.float().mean((2, 3)).clamp_min(0).sqrt()
        weight = torch.where(weight.sum(1, keepdim=True) > 0, weight, torch.ones_like(weight))
        k = torch.multinomial(weight, 1, generator=generator)[:, 0]
        picked = att[torch.arange(att.shape[0], device=att.device), k]
        return upsample_maps(picked, size)

    @torch.no_grad()
    def augment(self, images: torch.Tensor, att: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Attention cropping and dropping, batched. Returns the crops, the dropped images and the boxes/masks."""
        b, size, dev = images.shape[0], images.shape[-2:], images.device

        def uniform(lo_hi):
            return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(b, device=dev, generator=generator)

        crop_map = self.sample_maps(att, size, generator)
        boxes = boxes_from_maps(crop_map, uniform(self.cfg.crop_theta), self.cfg.crop_padding)
        crops = crop_and_zoom(images, boxes)
        drop_map = self.sample_maps(att, size, generator)
        keep = drop_map < uniform(self.cfg.drop_theta).view(b, 1, 1) * drop_map.amax((1, 2), keepdim=True)
        dropped = images * keep[:, None].to(images.dtype)
        return crops, dropped, {"boxes": boxes, "keep": keep}

    def center_loss(self, embedding: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``mean_i ||f_i - c_{y_i} / ||c_{y_i}||||^2``, then (training) ``c_y += beta * (f - c_hat)``."""
        centers = F.normalize(self.centers[targets], dim=-1)  # the pre-update centers, as the official code
        loss = (embedding - centers).pow(2).sum(1).mean()
        if self.training:
            with torch.no_grad():
                f, y, c = embedding.detach(), targets, centers
                if dist.is_available() and dist.is_initialized():  # every process applies every update
                    f, y, c = (_all_gather(t) for t in (f, y, c))
                step = self.cfg.center_beta * (f - c).to(self.centers.dtype)
                if self.center_update == "accumulate":
                    self.centers.index_add_(0, y, step)
                else:  # `centers[y] += step`: a label seen twice keeps its last image's update
                    order = torch.arange(len(y), device=y.device)
                    last = torch.full((self.centers.shape[0],), -1, dtype=order.dtype, device=y.device)
                    last = last.scatter_reduce(0, y, order, "amax")
                    # every class at once (no boolean selection: a compiled step keeps one graph)
                    seen = (last >= 0).unsqueeze(1)
                    self.centers.copy_(torch.where(seen, self.centers + step[last.clamp(min=0)], self.centers))
        return loss

    def training_step(self, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> StepOutput:
        _, att, emb = self.maps_and_embedding(images)
        logits = self.classify(emb)
        crops, dropped, _ = self.augment(images, att.detach())
        if self.cfg.joint_augmented_pass:
            both = self.classify(self.maps_and_embedding(torch.cat([crops, dropped]))[2])
            logits_crop, logits_drop = both.chunk(2)
        else:
            logits_crop = self.classify(self.maps_and_embedding(crops)[2])
            logits_drop = self.classify(self.maps_and_embedding(dropped)[2])
        ce_raw, ce_crop, ce_drop = (ctx.criterion(x, targets) for x in (logits, logits_crop, logits_drop))
        center = self.center_loss(emb, targets)
        loss = (ce_raw + ce_crop + ce_drop) / 3 + self.cfg.center_weight * center
        return StepOutput(loss=loss, logs={"cls_raw": ce_raw.detach(), "cls_crop": ce_crop.detach(),
                                           "cls_drop": ce_drop.detach(), "center": center.detach()},
                          logits=logits.detach())

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> Explanation:
        _, att, _ = self.maps_and_embedding(images)
        size = images.shape[-2:]
        fixed = torch.Generator(device=images.device).manual_seed(0)
        _, _, aug = self.augment(images, att, generator=fixed)
        strongest = att.float().mean((2, 3)).argmax(1)
        maps = {"mean attention": upsample_maps(att.mean(1), size),
                "strongest map": upsample_maps(att[torch.arange(att.shape[0], device=att.device), strongest], size),
                "dropped (one draw)": (~aug["keep"]).float()}
        boxes = {"test-time crop": self.refine_boxes(att, size), "training crop (one draw)": aug["boxes"]}
        return Explanation(logits=self.forward(images), maps=maps, boxes=boxes)


def choose_feature_stage(info: list[dict], layer: Union[int, str], backbone: str, notes: list[str]) -> int:
    """The stage WS-DAN reads: ``layer`` where this backbone has it; for ``auto``, or a layer name of another
    family (``Mixed_6e`` on a ResNet), the stage at the same stride (the name's stride in Inception-V3, the
    paper's backbone; 16 for ``auto``). The choice is added to ``notes``."""
    names = [f["module"] for f in info]
    inception_strides = {f["module"]: f["reduction"] for f in stage_info("inception_v3")}  # the paper's backbone
    if layer == "auto" or (isinstance(layer, str) and layer not in names and layer in inception_strides):
        stride = inception_strides.get(layer, 16)
        index = stage_at_stride(info, stride)
        why = (f"auto: the stage at stride {stride}, as the paper's Mixed_6e" if layer == "auto" else
               f"method.feature_layer '{layer}' is not a stage of {backbone}; the stage at its stride ({stride}) "
               "instead")
    else:
        index, why = feature_index(info, layer), f"method.feature_layer={layer}"
    f = info[index]
    notes.append(f"wsdan features: {f['module']} (stride {f['reduction']}, {f['num_chs']} channels; {why})")
    return index


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)
