"""PMG: progressive multi-granularity training. Classifiers on the last three stages learn from jigsaw puzzles
of the image at a granularity that suits each stage (8 x 8 pieces for the shallowest, 2 x 2 for the deepest);
a fourth classifier on their concatenation learns from the whole image. One batch makes four updates.

Paper: Du, Chang, Bhunia, Xie, Ma, Song, Guo. "Fine-Grained Visual Classification via Progressive
Multi-Granularity Training of Jigsaw Patches", ECCV 2020, arXiv 2003.03836.
Official code: https://github.com/PRIS-CV/PMG-Progressive-Multi-Granularity-Training (``model.py``,
``train.py``, ``utils.py``), read at f4d9201.

- Stages: the stages at strides 8, 16 and 32 of any CNN with stages (ResNet-50's layer2, layer3 and layer4 in
  the paper), chosen by stride as fgvc's other stage-reading methods do.
- Per stage: a block ``1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU`` (no conv bias, BN momentum 0.01), a
  global max pool, and a classifier ``BN -> Linear -> BN -> ELU -> Linear``; the concatenation of the three
  pooled vectors has a classifier of the same form. Widths: the official 512 (``feature_size``) and 1024 (the
  blocks' output) where they cost at most ``head_budget`` times the backbone's forward (ResNet-50: 1.27x), else
  the widest multiple of 32 (and twice it) that does; the run log names the choice.
- Jigsaw generator: the image cut into ``n x n`` pieces of ``size // n`` pixels, a random order of the pieces
  drawn, then each piece in that order swapped with the top-left one (the official procedure, so the same
  distribution over arrangements); one arrangement for the whole batch; pixels beyond ``n * (size // n)`` stay.
- Training, as the official ``train.py`` steps: for each batch, phase 1-3: the puzzle at 8, 4 and 2 pieces a
  side through the whole network, the CE of stage 1, 2 or 3's classifier, an update; phase 4: the image, twice
  the CE of the concatenated classifier, an update. The engine runs the phases (``update_phases``).
- Inference (``inference``): ``combined`` (default): the sum of the four classifiers' logits, the rule the
  official code picks its checkpoint by; ``concat``: the concatenated classifier alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import torch
from torch import nn

from ..backbones import forward_flops, stage_at_stride
from ..errors import ConfigError
from .base import Explanation, Method, ModelSpec, StepContext, StepOutput
from .registry import register_method

OFFICIAL_WIDTH = 512  # feature_size of the official PMG(net, 512, classes); the blocks give twice it

# The official state dict's names -> fgvc's: the official ResNet-50 is `features` (its unused ImageNet head
# `features.fc` has no counterpart here); the blocks and classifiers keep their names.
OFFICIAL_NAMES = [(r"^features\.(?!fc\.)", "backbone.model.")]


def official_name(key: str) -> Optional[str]:
    """An official PMG parameter name as fgvc names it (``features.layer3.0.conv1.weight`` ->
    ``backbone.model.layer3.0.conv1.weight``); None for the official backbone's unused ``features.fc``."""
    if key.startswith("features.fc."):
        return None
    for pattern, repl in OFFICIAL_NAMES:
        key = re.sub(pattern, repl, key)
    return key


class BasicConv(nn.Sequential):
    """Convolution without bias, BN (momentum 0.01, as the official code) and ReLU; named ``conv``, ``bn``,
    ``relu`` as the official module."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.01)
        self.relu = nn.ReLU()


def head(c_in: int, width: int, num_classes: int) -> nn.Sequential:
    """``BN -> Linear -> BN -> ELU -> Linear``: every PMG classifier."""
    return nn.Sequential(nn.BatchNorm1d(c_in), nn.Linear(c_in, width), nn.BatchNorm1d(width), nn.ELU(inplace=True),
                         nn.Linear(width, num_classes))


def jigsaw_permutation(n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Which piece ends up where: ``perm[c]`` is the piece (row-major index) shown at cell ``c`` after the
    official procedure: a random order of the ``n * n`` cells, each swapped in turn with cell 0.

    Those swaps move the piece at 0 to the first other cell drawn, that cell's piece to the next, ..., and the
    last one's piece to 0: one cycle through every cell in a uniform random order (no piece stays in place).
    Drawn in that closed form, with tensor operations only, so a compiled step neither breaks nor recompiles
    on the draw.
    """
    m = n * n
    cycle = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(m - 1, generator=generator) + 1])
    return torch.empty(m, dtype=torch.long).scatter_(0, cycle, cycle.roll(1))


def jigsaw(images: torch.Tensor, n: int, perm: Optional[torch.Tensor] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The batch as one ``n x n`` puzzle arrangement (batched: one gather, no loop over pieces).

    Args:
        images: ``[B, C, H, W]``.
        n: Pieces per side; a piece is ``H // n`` by ``W // n`` pixels.
        perm: The arrangement (:func:`jigsaw_permutation`); drawn when None.
    """
    if n <= 1:
        return images
    b, c, h, w = images.shape
    ph, pw = h // n, w // n
    perm = jigsaw_permutation(n, generator) if perm is None else perm
    region = images[..., : n * ph, : n * pw].reshape(b, c, n, ph, n, pw).permute(0, 1, 2, 4, 3, 5)
    pieces = region.reshape(b, c, n * n, ph, pw)[:, :, perm.to(images.device)]
    out = pieces.reshape(b, c, n, n, ph, pw).permute(0, 1, 2, 4, 3, 5).reshape(b, c, n * ph, n * pw)
    if n * ph == h and n * pw == w:
        return out
    full = images.clone()
    full[..., : n * ph, : n * pw] = out
    return full


def block_cost(tokens: list[int], channels: list[int], width: int) -> float:
    """Forward FLOPs per image of the three blocks at ``width`` (1x1 conv to it, 3x3 conv to twice it)."""
    return 2.0 * sum(t * (c * width + width * 2 * width * 9) for t, c in zip(tokens, channels))


@register_method
class PMG(Method):
    """Stage classifiers trained on jigsaw puzzles, one update per granularity, and their concatenation."""

    name = "pmg"
    paper = ("Du et al., Fine-Grained Visual Classification via Progressive Multi-Granularity Training of Jigsaw "
             "Patches, ECCV 2020, arXiv 2003.03836")
    code = "https://github.com/PRIS-CV/PMG-Progressive-Multi-Granularity-Training"
    backbones = ("any timm model with three stages at different strides (CNNs and hierarchical transformers: "
                 "ResNet, EfficientNet, ConvNeXt, Swin, MaxViT, CoAtNet, CAFormer, ...): the stages at strides 8, 16 "
                 "and 32; ResNet-50 in the paper")
    leaves_parameters_unused = True  # a phase trains one classifier: the others get no gradient

    @dataclass
    class Config:
        # auto: the stages at strides 8, 16 and 32 (ResNet-50: layer2, layer3, layer4)
        stages: Union[Literal["auto"], list[int]] = "auto"
        granularities: list[int] = field(default_factory=lambda: [8, 4, 2])  # pieces a side, shallowest first
        # auto: the official 512 where the blocks cost at most head_budget x the backbone, else the widest that do
        feature_size: Union[Literal["auto"], int] = "auto"
        head_budget: float = 1.5
        concat_weight: float = 2.0
        inference: Literal["combined", "concat"] = "combined"
        # every phase runs the whole network, as the official code (the BN statistics of every layer then see
        # every phase's images); false: a phase stops after the stage it trains (faster)
        full_forward: bool = True

    @classmethod
    def check_backbone(cls, spec: ModelSpec) -> None:
        info = cls.cnn_stages_of(spec)
        stages = sorted({stage_at_stride(info, r) for r in (8, 16, 32)})
        if len(stages) < 3:
            found = ", ".join(f"{info[i]['module']} (stride {info[i]['reduction']})" for i in stages)
            raise ConfigError(f"model.backbone: pmg needs three stages at different strides for its three "
                              f"granularities; {spec.backbone} gives {len(stages)}: {found}")

    def __init__(self, spec: ModelSpec, cfg: "PMG.Config"):
        super().__init__(spec, cfg)
        info = self.cnn_stages_of(spec)
        if cfg.stages == "auto":
            self.indices = sorted({stage_at_stride(info, r) for r in (8, 16, 32)})
        else:
            self.indices = sorted({int(i) % len(info) for i in cfg.stages})
        n = len(self.indices)
        if len(cfg.granularities) != n:
            raise ConfigError(f"method.granularities needs one entry for each of the {n} stages, got "
                              f"{cfg.granularities}")
        channels = [int(info[i]["num_chs"]) for i in self.indices]
        tokens = [(-(-spec.img_size // int(info[i]["reduction"]))) ** 2 for i in self.indices]
        if cfg.feature_size != "auto":
            width, why = int(cfg.feature_size), "method.feature_size"
        else:
            budget = cfg.head_budget * forward_flops(spec.backbone, spec.img_size, **spec.backbone_args)
            width = OFFICIAL_WIDTH
            while width > 32 and block_cost(tokens, channels, width) > budget:
                width -= 32
            why = ("the official width" if width == OFFICIAL_WIDTH else
                   f"the widest whose blocks cost at most {cfg.head_budget:g}x the backbone's forward")
        self.width = width
        desc = ", ".join(f"{info[i]['module']} (stride {info[i]['reduction']}, {c} channels, {g}x{g} puzzle)"
                         for i, c, g in zip(self.indices, channels, cfg.granularities))
        self.notes.append(f"pmg stages: {desc}; widths {width} / {2 * width} ({why})")
        self.backbone = self.make_stage_backbone(self.indices)
        k = spec.num_classes
        for i, c in enumerate(channels, 1):  # the official names: conv_block1, classifier1, ...
            setattr(self, f"conv_block{i}", nn.Sequential(BasicConv(c, width, 1), BasicConv(width, 2 * width, 3)))
            setattr(self, f"classifier{i}", head(2 * width, width, k))
        self.classifier_concat = head(2 * width * n, width, k)

    # -- the network ----------------------------------------------------------------------------------

    def blocks(self, images: torch.Tensor, upto: Optional[int] = None) -> list[torch.Tensor]:
        """Each stage's block output ``[B, 2 * width, h, w]`` (the first ``upto + 1`` stages with ``upto``)."""
        maps = self.backbone(images, upto=upto)
        return [getattr(self, f"conv_block{i}")(m) for i, m in enumerate(maps, 1)]

    def outputs(self, images: torch.Tensor, upto: Optional[int] = None) -> list[torch.Tensor]:
        """The stage classifiers' logits, then (for the whole network) the concatenated classifier's."""
        pooled = [b.amax((2, 3)) for b in self.blocks(images, upto)]
        logits = [getattr(self, f"classifier{i}")(p) for i, p in enumerate(pooled, 1)]
        if len(pooled) == len(self.indices):
            logits.append(self.classifier_concat(torch.cat(pooled, 1)))
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.outputs(images)
        return out[-1] if self.cfg.inference == "concat" else torch.stack(out).sum(0)

    # -- training -------------------------------------------------------------------------------------

    def update_phases(self) -> int:
        return len(self.indices) + 1

    def training_step(self, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> StepOutput:
        p, n = ctx.phase, len(self.indices)
        if p < n:  # a stage's classifier on the puzzle of its granularity
            g = self.cfg.granularities[p]
            out = self.outputs(jigsaw(images, g), upto=None if self.cfg.full_forward else p)
            loss = ctx.criterion(out[p], targets)
            return StepOutput(loss=loss, logs={f"cls_stage{p + 1}_{g}x{g}": loss.detach()})
        out = self.outputs(images)
        loss = ctx.criterion(out[-1], targets)
        return StepOutput(loss=self.cfg.concat_weight * loss, logs={"cls_concat": loss.detach()},
                          logits=out[-1].detach())

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> Explanation:
        """Each stage's class map: its classifier applied at every position of its block's output (in place of
        the max-pooled vector), for the predicted class."""
        blocks = self.blocks(images)
        pooled = [b.amax((2, 3)) for b in blocks]
        logits = [getattr(self, f"classifier{i}")(p) for i, p in enumerate(pooled, 1)]
        logits.append(self.classifier_concat(torch.cat(pooled, 1)))
        final = logits[-1] if self.cfg.inference == "concat" else torch.stack(logits).sum(0)
        pred = final.argmax(1)
        maps = {}
        for i, (b, g) in enumerate(zip(blocks, self.cfg.granularities), 1):
            bsz, c, h, w = b.shape
            scores = getattr(self, f"classifier{i}")(b.permute(0, 2, 3, 1).reshape(-1, c)).view(bsz, h * w, -1)
            cam = scores.gather(2, pred.view(bsz, 1, 1).expand(bsz, h * w, 1)).view(bsz, h, w)
            maps[f"stage {i} ({g}x{g} puzzle): predicted class per position"] = cam
        return Explanation(logits=final, maps=maps)


__all__ = ["PMG", "jigsaw", "jigsaw_permutation", "official_name"]
