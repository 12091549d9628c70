"""The method contract, and the helpers several methods share.

A method is an ``nn.Module`` with three faces:

- ``forward(images) -> logits``: the fixed inference rule, one call, no Python loop over the batch.
  Where the rule averages probabilities (WS-DAN, HERBS) ``forward`` returns their log, so that softmax
  of its output is the prediction.
- ``training_step(images, targets, ctx) -> StepOutput``: the training-time computation (extra passes,
  crops, suppression, auxiliary heads) and its loss. ``ctx.criterion`` is the classification loss the
  run chose (CE, label smoothing, GCE); methods use it wherever the paper uses CE.
- ``explain(images) -> Explanation``: what the method localizes, in input pixel coordinates.

The engine only ever calls these, plus the hooks below; it never branches on a method's name. The
operations several methods share (crop-and-zoom, connected components, class activation maps) live
beside this file in :mod:`fgvc.methods.ops`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from ..backbones import (
    StageFeatures,
    create_backbone,
    create_stage_backbone,
    mean_std,
    stage_info,
)
from .finetune import is_adapter


@dataclass
class ModelSpec:
    """What every method is built from, whatever its own options."""

    backbone: str
    num_classes: int
    img_size: int = 224
    pretrained: bool = False
    pretrained_file: Optional[str] = None
    backbone_args: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float = 0.0
    head_init: str = "torch"  # see ModelConfig.head_init


@dataclass
class StepContext:
    """What a training step may need besides the batch."""

    step: int
    epoch: int
    total_steps: int
    total_epochs: int
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    phase: int = 0  # which of the method's update phases this call is (see Method.update_phases)


@dataclass
class StepOutput:
    """The result of one training step.

    Attributes:
        loss: The scalar to minimize.
        logs: Values to log (detached tensors or floats); averaged over the logging window.
        logits: Logits of the raw images, for the running training accuracy (optional).
    """

    loss: torch.Tensor
    logs: dict[str, Any] = field(default_factory=dict)
    logits: Optional[torch.Tensor] = None

    @staticmethod
    def merge(outputs: list["StepOutput"]) -> "StepOutput":
        """The update phases of one batch as one output (for logging): the losses summed, the logs together,
        the last logits."""
        if len(outputs) == 1:
            return outputs[0]
        logits = next((o.logits for o in reversed(outputs) if o.logits is not None), None)
        return StepOutput(loss=sum(o.loss.detach().float() for o in outputs),
                          logs={k: v for o in outputs for k, v in o.logs.items()}, logits=logits)


@dataclass
class Explanation:
    """What a method localizes for a batch, in the coordinates of its input images.

    Attributes:
        logits: The method's inference output for the batch.
        maps: Named heat maps ``[B, h, w]`` (any resolution; drawn stretched over the image).
        boxes: Named boxes ``[B, 4]`` (or sets of boxes ``[B, n, 4]``) as ``x0, y0, x1, y1`` in input pixels.
        points: Named point sets ``[B, n, 2]`` as ``x, y`` in input pixels (selected tokens, parts).
    """

    logits: torch.Tensor
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    boxes: dict[str, torch.Tensor] = field(default_factory=dict)
    points: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class NoOptions:
    """A method without options of its own."""


class Method(nn.Module):
    """Base class of every fgvc method (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # citation and arXiv link
    code: ClassVar[str] = ""  # official code link (or "none")
    backbones: ClassVar[str] = "any timm model"  # what `fgvc methods` prints
    Config: ClassVar[type] = NoOptions
    lr_hint: ClassVar[str] = ""  # advice a run that does not learn prints (the method's learning-rate range)
    # some parameters get no gradient in some steps (DDP then needs find_unused_parameters)
    leaves_parameters_unused: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, cfg: Any):
        super().__init__()
        self.finetune = "full"  # how the backbone trains (fgvc.methods.finetune sets it)
        self.frozen_backbone = False  # linear: the backbone stays in eval mode while the method trains
        self.spec = spec
        self.cfg = cfg  # the options as the user gave them; resolved choices live on the instance
        self.num_classes = spec.num_classes
        self.notes: list[str] = []  # choices made for this backbone, printed at the start of a run

    # -- construction helpers -------------------------------------------------------------------------

    @classmethod
    def check_backbone(cls, spec: ModelSpec) -> None:
        """Raises :class:`~fgvc.errors.ConfigError` when the method cannot use ``spec.backbone``."""

    @classmethod
    def stages_of(cls, spec: ModelSpec) -> list[dict[str, Any]]:
        """The backbone's stages (``feature_info``), for the methods built on multi-stage features.

        Raises:
            ConfigError: When the backbone declares none.
        """
        from ..errors import ConfigError

        try:
            return stage_info(spec.backbone, img_size=spec.img_size, **spec.backbone_args)
        except ConfigError:
            raise ConfigError(f"model.backbone: {cls.name} cannot use {spec.backbone}: it gives no multi-stage "
                              "features") from None

    @classmethod
    def cnn_stages_of(cls, spec: ModelSpec) -> list[dict[str, Any]]:
        """The stages of a backbone for a method that needs stages at several strides (CAL, PMG): a CNN or a
        hierarchical transformer.

        Raises:
            ConfigError: One line naming what the method needs, for a plain ViT (one token grid, no stages) or
                a model that gives no multi-stage features.
        """
        from ..backbones import is_vit
        from ..errors import ConfigError

        needs = (f"model.backbone: {cls.name} needs a backbone with stages (a CNN or a hierarchical transformer: "
                 f"resnet50, efficientnet_lite0, convnext_tiny, swin_tiny_patch4_window7_224, ...); {spec.backbone}")
        try:
            info = stage_info(spec.backbone, img_size=spec.img_size, **spec.backbone_args)
        except ConfigError:
            raise ConfigError(f"{needs} gives no multi-stage features") from None
        if is_vit(cls.probe_backbone(spec)):
            raise ConfigError(f"{needs} is a plain ViT (one grid of tokens, no stages)")
        return info

    @staticmethod
    def probe_backbone(spec: ModelSpec, **kwargs: Any) -> nn.Module:
        """The backbone built on the meta device (no memory, no weights): for checks before any work."""
        with torch.device("meta"):
            return create_backbone(spec.backbone, img_size=spec.img_size, **{**spec.backbone_args, **kwargs})

    def make_backbone(self, **kwargs: Any) -> nn.Module:
        """The timm backbone of ``self.spec`` (pooled features, no classifier)."""
        s = self.spec
        return create_backbone(s.backbone, pretrained=s.pretrained, pretrained_file=s.pretrained_file,
                               img_size=s.img_size, drop_path_rate=s.drop_path_rate, **{**s.backbone_args, **kwargs})

    def make_stage_backbone(self, indices: list[int]) -> StageFeatures:
        """The timm backbone of ``self.spec`` cut after the last of ``indices``, returning those stages."""
        s = self.spec
        return create_stage_backbone(s.backbone, indices, pretrained=s.pretrained, pretrained_file=s.pretrained_file,
                                     img_size=s.img_size, drop_path_rate=s.drop_path_rate, **s.backbone_args)

    def check_input(self, images: torch.Tensor) -> None:
        """For a method whose token grids are fixed at construction (HERBS and PIM, the ViT methods): images of
        another size are refused in one line rather than deep inside a reshape.

        Raises:
            ValueError: ``images`` are not ``img_size x img_size``.
        """
        size = self.spec.img_size
        if tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"{self.name} was built for {size} x {size} inputs, got {images.shape[-2]} x "
                             f"{images.shape[-1]}; resize and crop images to its size first (what the run's "
                             "preprocessing does)")

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Input normalization of the pretrained backbone."""
        return mean_std(self.backbone)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The backbone's timm pretrained configuration (normalization, interpolation, input size)."""
        return dict(getattr(self.backbone, "pretrained_cfg", None) or {})

    # -- the three faces ----------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_step(self, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> StepOutput:
        """Default: the classification loss of ``forward``."""
        logits = self(images)
        loss = ctx.criterion(logits, targets)
        return StepOutput(loss=loss, logs={"cls": loss.detach()}, logits=logits.detach())

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> Explanation:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- hooks ----------------------------------------------------------------------------------------

    def update_phases(self) -> int:
        """Optimizer updates per batch. 1 for most methods; a method that steps several times on one batch
        (PMG: one update per jigsaw granularity, then one on the whole image) returns their number, and the
        engine calls :meth:`training_step` once per phase (``ctx.phase``), each followed by its own update."""
        return 1

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Called by the engine at the start of every epoch (method schedules such as HERBS's T)."""

    def state_for_checkpoint(self) -> dict[str, Any]:
        """Method state that is not in ``state_dict`` (schedules, counters)."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_for_checkpoint` returned."""

    def is_pretrained_parameter(self, name: str) -> bool:
        """Whether a parameter comes from the pretrained backbone (trained at the base LR); LoRA adapters inside it
        are new layers."""
        return name.startswith("backbone.") and not is_adapter(name)

    def train(self, mode: bool = True) -> "Method":
        """As ``nn.Module.train``; a frozen backbone (``model.finetune=linear``) stays in eval mode."""
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides norms and biases (tokens, embeddings)."""
        backbone = getattr(self, "backbone", None)
        if backbone is not None and hasattr(backbone, "no_weight_decay"):
            return {f"backbone.{n}" for n in backbone.no_weight_decay()}
        return set()

    def param_groups(self, lr: float, head_lr_scale: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: pretrained vs new parameters, with no weight decay on norms, biases and tokens."""
        skip = self.no_weight_decay()
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            decay = p.ndim > 1 and name not in skip
            groups.setdefault((self.is_pretrained_parameter(name), decay), []).append(p)
        out = []
        for (pretrained, decay), params in sorted(groups.items(), reverse=True):
            out.append({"params": params, "lr": lr if pretrained else lr * head_lr_scale,
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{'backbone' if pretrained else 'new'}{'' if decay else '_no_decay'}"})
        return out

    def options(self) -> dict[str, Any]:
        """The method's options as a dict (for reports)."""
        return dataclasses.asdict(self.cfg) if dataclasses.is_dataclass(self.cfg) else {}
