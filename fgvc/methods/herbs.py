"""HERBS and its predecessor PIM: a feature pyramid over backbone stages, per-token classifiers, a selector
that keeps the most class-relevant tokens and suppresses the background, and a graph-convolution combiner.

Papers: Chou, Kao, Lin. "Fine-grained Visual Classification with High-temperature Refinement and
Background Suppression" (HERBS), arXiv 2303.06442 (2023). Chou, Lin, Kao. "A Novel Plug-in Module for
Fine-Grained Visual Classification" (PIM), arXiv 2202.03822 (2022).
Official code: https://github.com/chou141253/FGVC-HERBS (read at f3deb47) and
https://github.com/chou141253/FGVC-PIM (read at 348edd9). Both support only their vendored timm's
Swin (and PIM a few CNNs); fgvc runs on any timm backbone with multi-stage features.

One implementation, two registered methods (``herbs`` and ``pim``) whose defaults are the two official
configurations:

- Levels: on Swin, the official layout (after each patch merging, then the last stage); on any other
  backbone, the stages at strides 8, 16 and 32 (the official levels' strides), as token sequences, with
  an FPN width chosen so that the pyramid costs at most ``fpn_budget`` times the backbone's forward. The
  run log names the levels and the width. Per-level projections ``Linear(C, C) -> ReLU -> Linear(C, fpn)``.
- Top-down pyramid (both): ``T4 = P4, T_i = resample(T_{i+1}) + P_i``; per-token classifiers on ``T_i``
  (``Linear -> BN -> ReLU -> Linear``).
- Bottom-up path (HERBS): ``U1 = Q1, U_i = Q_i + resample(U_{i-1})`` with ``Q_i`` a second projection of
  ``T_i``; a second set of per-token classifiers on ``U_i``.
- Selector, without gradient through the ranking: HERBS keeps each image's tokens most probable for its
  predicted class (256/128/64/32), PIM the tokens of highest max-class confidence (2048/512/128/32);
  dropped tokens' logits go to the background loss (tanh, MSE to -1).
- Graph-convolution combiner over the selected tokens: pooling to ``S' // 64`` (PIM: 32) nodes, adaptive
  adjacency (a learned static matrix plus a scaled dynamic ``tanh(q_u - k_v)``), one graph convolution,
  readout and classifier.
- Losses (HERBS): combiner CE x1, background x5, bottom-up layer CE x0.3, and the high-temperature
  refinement x1.375: KL from the detached softmax of the bottom-up logits to the top-down ones at
  temperature ``T = 64 * 0.5^floor(epoch / 10)``, 'mean' over all elements, no T^2 factor.
- Inference: argmax of the summed softmax of the 9 outputs (HERBS: 4 bottom-up, 4 top-down, combiner) or
  the 5 outputs (PIM: 4 levels, combiner), one fixed rule; ``forward`` returns the log of their mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import (
    StageFeatures,
    create_stage_backbone,
    feature_index,
    forward_flops,
    stage_at_stride,
)
from ..errors import ConfigError
from .base import Explanation, Method, ModelSpec, StepContext, StepOutput
from .ops import log_mean_softmax
from .registry import register_method


def _two_layer(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, c_in), nn.ReLU(inplace=True), nn.Linear(c_in, c_out))


class TokenClassifier(nn.Module):
    """Per-token classifier ``Linear -> BN -> ReLU -> Linear`` on ``[B, S, C]`` (the official Conv1d(k=1) form;
    BN statistics over batch and tokens, as BatchNorm1d over ``[B, C, S]``)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        h = self.bn(self.fc1(x).reshape(b * s, c)).reshape(b, s, c)
        return self.fc2(F.relu(h))


class Resample(nn.Module):
    """Moves tokens from one level's grid to another's: bilinear on the spatial grid, or a learned linear map
    over the token axis (the official Swin layers, ``Conv1d`` over tokens)."""

    def __init__(self, src: tuple[int, int], dst: tuple[int, int], mode: str, always_learn: bool = False):
        super().__init__()
        self.src, self.dst, self.mode = src, dst, mode
        self.map = nn.Linear(src[0] * src[1], dst[0] * dst[1]) if mode == "linear" and (src != dst or always_learn) \
            else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.map is not None:
            return self.map(x.transpose(1, 2)).transpose(1, 2)
        if self.src == self.dst:
            return x
        b, _, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, *self.src)
        out = F.interpolate(grid, size=self.dst, mode="bilinear", align_corners=False)
        return out.flatten(2).transpose(1, 2)


class GCNCombiner(nn.Module):
    """The graph-convolution combiner of PIM/HERBS over the selected tokens ``[B, S', C]`` -> ``[B, K]``."""

    def __init__(self, tokens: int, dim: int, num_classes: int, divisor: int, dropout: float = 0.1):
        super().__init__()
        joints = max(1, tokens // divisor)
        self.pool = nn.Linear(tokens, joints)
        self.adjacency = nn.Parameter(torch.eye(joints) / 100 + 1 / 100)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.conv_q = nn.Conv1d(dim, dim // 4, 1)
        self.conv_k = nn.Conv1d(dim, dim // 4, 1)
        self.conv = nn.Conv1d(dim, dim, 1)
        self.bn = nn.BatchNorm1d(dim)
        self.readout = nn.Linear(joints, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.pool(tokens.transpose(1, 2))  # [B, C, J]
        q, k = self.conv_q(h).mean(1), self.conv_k(h).mean(1)  # [B, J]
        adj = self.adjacency + self.alpha * torch.tanh(q[:, :, None] - k[:, None, :])
        h = self.bn(torch.matmul(self.conv(h), adj))
        return self.classifier(self.dropout(self.readout(h).flatten(1)))


def refinement_loss(down: torch.Tensor, up: torch.Tensor, temperature: float) -> torch.Tensor:
    """HERBS's high-temperature refinement: ``KL(softmax(up / T) || softmax(down / T))`` with the target
    detached, averaged over every element (``KLDivLoss`` 'mean', as the official code), no ``T^2``."""
    target = (up.detach().float() / temperature).softmax(-1)
    log_student = (down.float() / temperature).log_softmax(-1)
    return (torch.xlogy(target, target) - target * log_student).mean()  # = F.kl_div(..., reduction="mean")


def background_loss(dropped: torch.Tensor) -> torch.Tensor:
    """``MSE(tanh(z), -1)`` over every (token, class) of the dropped tokens."""
    return (torch.tanh(dropped.float()) + 1).pow(2).mean()


@register_method
class HERBS(Method):
    """Feature pyramid + selector + GCN combiner, with HERBS's bottom-up path and refinement."""

    name = "herbs"
    paper = ("Chou et al., Fine-grained Visual Classification with High-temperature Refinement and Background "
             "Suppression (HERBS), arXiv 2303.06442")
    code = "https://github.com/chou141253/FGVC-HERBS"
    lr_hint = ("the official HERBS and PIM recipes use train.lr=0.0005 (SGD, Nesterov) for every layer over "
               "18,700 (PIM) to 60,000 (HERBS) CUB steps; a short fine-tune learns with a fine-tuning rate "
               "(the finetune recipes: train.lr=0.01, train.head_lr_scale=10, train.clip_grad=5)")
    backbones = "any timm model with multi-stage features (Swin, ResNet, ConvNeXt, EfficientNet, ViT); Swin-L at 384 in the paper"

    @dataclass
    class Config:
        # auto: "merged" on Swin-like backbones (the official layout), "stages" elsewhere
        levels: Literal["auto", "stages", "merged"] = "auto"
        # auto: merged levels read stages -4..-1 (the official four); stage levels take the stages at strides 8,
        # 16 and 32, the strides of the official Swin levels (finer stages cost more than the backbone)
        stages: Union[Literal["auto"], list[int]] = "auto"
        # auto: 1536 on merged Swin levels (official); elsewhere the widest multiple of 32 (at most 1536) whose
        # pyramid costs at most fpn_budget times the backbone's forward FLOPs
        fpn_size: Union[Literal["auto"], int] = "auto"
        fpn_budget: float = 0.75
        num_selects: list[int] = field(default_factory=lambda: [256, 128, 64, 32])  # per level; extra entries unused
        reference_tokens: list[int] = field(default_factory=lambda: [2304, 576, 144, 144])
        joint_divisor: int = 64
        # between levels; auto: "linear" (learned token maps, official Swin) with merged levels, else "bilinear"
        resample: Literal["auto", "bilinear", "linear"] = "auto"
        map_equal_levels: bool = True  # learned resampling also between levels of equal size (official HERBS)
        bottom_up: bool = True  # HERBS's second, bottom-up path and its classifiers (PIM: false)
        selector: Literal["predicted_class", "max_confidence"] = "predicted_class"  # HERBS / PIM ranking
        lambda_layer: float = 0.3  # CE of the level classifiers (the bottom-up ones when there are)
        lambda_select: float = 0.0
        lambda_drop: float = 5.0
        lambda_comb: float = 1.0
        lambda_refine: float = 1.375  # needs bottom_up
        temperature: float = 64.0
        # epochs between halvings; auto: the official ratio to the run's length (10 of 80 epochs: eight halvings)
        temperature_step: Union[float, Literal["auto"]] = 10
        combiner_dropout: float = 0.1

    @classmethod
    def check_backbone(cls, spec: ModelSpec) -> None:
        cls.stages_of(spec)

    def __init__(self, spec: ModelSpec, cfg: "HERBS.Config"):
        super().__init__(spec, cfg)
        info = self.stages_of(spec)
        probe = self.probe_backbone(spec)
        self.levels = cfg.levels if cfg.levels != "auto" else ("merged" if swin_like(probe) else "stages")
        if self.levels == "merged" and not swin_like(probe):
            self.levels = "stages"
            self.notes.append(f"method.levels=merged needs a Swin-like backbone; {spec.backbone} uses its stages")
        if cfg.stages != "auto":
            self.indices = [feature_index(info, s) for s in cfg.stages]
        elif self.levels == "merged":
            self.indices = [feature_index(info, s) for s in (-4, -3, -2, -1)]
        else:
            self.indices = sorted({stage_at_stride(info, r) for r in (8, 16, 32)})
        n_levels = len(self.indices)
        if len(cfg.num_selects) < n_levels or len(cfg.reference_tokens) < n_levels:
            raise ConfigError(f"method.num_selects and method.reference_tokens need an entry for each of the "
                              f"{n_levels} levels")
        self.resample = cfg.resample if cfg.resample != "auto" else ("linear" if self.levels == "merged" else "bilinear")
        backbone_indices = [max(self.indices)] if self.levels == "merged" else self.indices
        with torch.no_grad(), torch.device("meta"):  # shapes only: a meta-device pass costs no compute
            meta_backbone = create_stage_backbone(spec.backbone, backbone_indices, img_size=spec.img_size,
                                                  **spec.backbone_args).eval()  # batch norm of one 1x1 map
            meta = torch.empty(1, 3, spec.img_size, spec.img_size)
            probed = level_maps(meta_backbone, meta, self.indices, self.levels)
        shapes = [tuple(f.shape[-2:]) for f in probed]
        channels = [int(f.shape[1]) for f in probed]
        self.backbone = self.make_stage_backbone(backbone_indices)
        if self.levels == "merged":
            keep_merged_outputs(self.backbone.model, self.indices)
        self.shapes = shapes
        tokens = [h * w for h, w in shapes]
        self.selects = [select_count(n, ref, t) for n, ref, t in zip(cfg.num_selects, cfg.reference_tokens, tokens)]
        k = spec.num_classes
        if cfg.fpn_size != "auto":
            d, why = int(cfg.fpn_size), "method.fpn_size"
        elif self.levels == "merged":
            d, why = 1536, "the official width"
        else:
            d = fpn_width(tokens, channels, k, cfg.bottom_up, forward_flops(spec.backbone, spec.img_size,
                                                                           **spec.backbone_args), cfg.fpn_budget)
            why = f"the widest whose pyramid costs at most {cfg.fpn_budget:g}x the backbone's forward"
        self.fpn_size = d
        desc = ", ".join(f"{info[i]['module']} {h}x{w}x{c}" for i, (h, w), c in zip(self.indices, shapes, channels))
        self.notes.append(f"{self.name} levels ({self.levels}): {desc}; FPN width {d} ({why}); keeps "
                          f"{'/'.join(map(str, self.selects))} tokens; {self.resample} resampling between levels")
        self.proj = nn.ModuleList(_two_layer(c, d) for c in channels)
        self.up = nn.ModuleList(Resample(shapes[i + 1], shapes[i], self.resample, cfg.map_equal_levels)
                                for i in range(n_levels - 1))
        self.cls_down = nn.ModuleList(TokenClassifier(d, k) for _ in range(n_levels))
        if cfg.bottom_up:
            self.proj_up = nn.ModuleList(_two_layer(d, d) for _ in range(n_levels))
            self.down = nn.ModuleList(Resample(shapes[i], shapes[i + 1], self.resample, True)
                                      for i in range(n_levels - 1))
            self.cls_up = nn.ModuleList(TokenClassifier(d, k) for _ in range(n_levels))
        elif cfg.lambda_refine:
            raise ConfigError("method.lambda_refine needs method.bottom_up=true (it distills the bottom-up outputs)")
        self.combiner = GCNCombiner(sum(self.selects), d, k, cfg.joint_divisor, cfg.combiner_dropout)
        self.temperature = cfg.temperature

    # -- schedule and state ---------------------------------------------------------------------------

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        step = self.cfg.temperature_step
        step = max(total_epochs, 1) / 8 if step == "auto" else float(step)
        self.temperature = self.cfg.temperature * 0.5 ** math.floor(epoch / step)

    def state_for_checkpoint(self) -> dict:
        return {"temperature": self.temperature}

    def load_checkpoint_state(self, state: dict) -> None:
        self.temperature = state.get("temperature", self.cfg.temperature)

    # -- the computation ------------------------------------------------------------------------------

    def pyramid(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Level features and per-token logits: ``down``/``up`` logits ``[B, S_i, K]`` and the features the
        selector reads (bottom-up ``U_i`` with the bottom-up path, else top-down ``T_i``)."""
        maps = level_maps(self.backbone, images, self.indices, self.levels)
        feats = [p(m.flatten(2).transpose(1, 2)) for p, m in zip(self.proj, maps)]  # P_i: [B, S_i, D]
        top = [None] * len(feats)
        top[-1] = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            top[i] = self.up[i](top[i + 1]) + feats[i]
        down = [c(t) for c, t in zip(self.cls_down, top)]
        if not self.cfg.bottom_up:
            return {"down": down, "up": down, "features": top}
        bottom = [q(t) for q, t in zip(self.proj_up, top)]
        for i in range(1, len(bottom)):
            bottom[i] = bottom[i] + self.down[i - 1](bottom[i - 1])
        up = [c(u) for c, u in zip(self.cls_up, bottom)]
        return {"down": down, "up": up, "features": bottom}

    def rank(self, logits: torch.Tensor) -> torch.Tensor:
        """Token order ``[B, S]``, most selected first: by the probability of the image's predicted class
        (HERBS), or by the max-class confidence (PIM). No gradient flows through the ranking."""
        logits = logits.detach()
        probs = logits.float().softmax(-1)
        if self.cfg.selector == "predicted_class":
            predicted = logits.float().mean(1).argmax(-1)
            score = probs.gather(2, predicted[:, None, None].expand(-1, probs.shape[1], 1))[..., 0]
        else:
            score = probs.max(-1).values
        return score.argsort(dim=1, descending=True)

    def select(self, out: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
        """Selected features, selected logits and dropped logits per level."""
        chosen, kept, dropped, orders = [], [], [], []
        for n, logits, feats in zip(self.selects, out["up"], out["features"]):
            order = self.rank(logits)
            sel, rest = order[:, :n], order[:, n:]
            chosen.append(feats.gather(1, sel[..., None].expand(-1, -1, feats.shape[-1])))
            kept.append(logits.gather(1, sel[..., None].expand(-1, -1, logits.shape[-1])))
            dropped.append(logits.gather(1, rest[..., None].expand(-1, -1, logits.shape[-1])))
            orders.append(order)
        return {"features": chosen, "selected": kept, "dropped": dropped, "order": orders}

    def outputs(self, images: torch.Tensor) -> dict[str, object]:
        self.check_input(images)
        out = self.pyramid(images)
        sel = self.select(out)
        comb = self.combiner(torch.cat(sel["features"], 1))
        return {**out, **{f"sel_{k}": v for k, v in sel.items()}, "comb": comb}

    def combined_log_probabilities(self, out: dict[str, object]) -> torch.Tensor:
        """The fixed inference rule: the log of the mean of the softmax of the level outputs (token-averaged) and the
        combiner (HERBS: bottom-up and top-down levels; PIM: the one set of levels)."""
        levels = list(out["up"]) + (list(out["down"]) if self.cfg.bottom_up else [])
        return log_mean_softmax([l.mean(1) for l in levels] + [out["comb"]])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.combined_log_probabilities(self.outputs(images))

    def training_step(self, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> StepOutput:
        c = self.cfg
        out = self.outputs(images)
        level_ce = sum(ctx.criterion(l.mean(1), targets) for l in out["up"])
        drop = sum(background_loss(d) for d in out["sel_dropped"] if d.shape[1] > 0)
        comb = ctx.criterion(out["comb"], targets)
        loss = c.lambda_layer * level_ce + c.lambda_drop * drop + c.lambda_comb * comb
        logs = {"layers": level_ce.detach(), "background": torch.as_tensor(drop).detach(), "combiner": comb.detach()}
        if c.lambda_select:
            sel = sum(ctx.criterion(s.flatten(0, 1), targets.repeat_interleave(s.shape[1])) for s in out["sel_selected"])
            loss = loss + c.lambda_select * sel
            logs["selected"] = sel.detach()
        if c.lambda_refine:
            ref = sum(refinement_loss(d, u, self.temperature) for d, u in zip(out["down"], out["up"]))
            loss = loss + c.lambda_refine * ref
            logs["refinement"] = ref.detach()
            logs["temperature"] = float(self.temperature)
        with torch.no_grad():
            logits = self.combined_log_probabilities(out)
        return StepOutput(loss=loss, logs=logs, logits=logits)

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> Explanation:
        out = self.outputs(images)
        maps = {}
        for i, (order, n, (h, w)) in enumerate(zip(out["sel_order"], self.selects, self.shapes)):
            picked = torch.zeros(order.shape, device=order.device)
            picked.scatter_(1, order[:, :n], 1.0)
            maps[f"level {i + 1}: {n} selected of {h * w}"] = picked.reshape(-1, h, w)
        return Explanation(logits=self.combined_log_probabilities(out), maps=maps)


def swin_like(backbone: nn.Module) -> bool:
    """Token stages in NHWC that each start with a downsample (patch merging) layer: timm's Swin family."""
    stages = getattr(backbone, "layers", None)
    return getattr(backbone, "output_fmt", "NCHW") == "NHWC" and stages is not None and \
        all(hasattr(st, "downsample") for st in stages)


def level_maps(backbone: StageFeatures, images: torch.Tensor, indices: list[int], levels: str) -> list[torch.Tensor]:
    """The pyramid's input maps (NCHW). ``stages``: the stage outputs. ``merged``: for every stage but the last,
    the output of the next stage's downsampling layer (patch merging), kept by a hook registered once
    (:func:`keep_merged_outputs`): the layout of the old timm Swin the official code vendors (Swin-L at 384:
    48x48x384, 24x24x768, 12x12x1536, then the last stage's 12x12x1536). ``backbone`` returns the stages
    ``indices`` (``stages``) or the last one (``merged``)."""
    if levels == "stages":
        return backbone(images)
    stages = getattr(backbone.model, "layers", None)
    if backbone.via != "intermediates" or stages is None or not all(hasattr(st, "downsample") for st in stages):
        raise ConfigError("method.levels=merged needs a backbone whose stages start with a downsample layer (Swin)")
    keep_merged_outputs(backbone.model, indices)  # registered at construction; here for a backbone built apart
    last = backbone(images)[-1]
    out = []
    for i in indices:
        if i + 1 < len(stages):
            m = stages[i + 1].downsample
            out.append(m.fgvc_output.permute(0, 3, 1, 2) if backbone.nhwc else m.fgvc_output)
            m.fgvc_output = None  # let go of it
        else:
            out.append(last)
    return out


def _keep_output(module: nn.Module, args, output: torch.Tensor) -> None:
    module.fgvc_output = output


def keep_merged_outputs(model: nn.Module, indices: list[int]) -> None:
    """Registers, once per module, the hooks that keep the patch-merging outputs the merged levels read (on the
    module that computed them, so compiled steps and copies of the model see their own)."""
    stages = model.layers
    for i in indices:
        if i + 1 < len(stages):
            m = stages[i + 1].downsample
            if not getattr(m, "fgvc_keeping", False):
                m.register_forward_hook(_keep_output)
                m.fgvc_keeping = True


def select_count(wanted: int, reference: int, tokens: int) -> int:
    """Tokens to keep at a level: ``wanted`` as configured for ``reference`` tokens, scaled down
    proportionally when the level has fewer tokens (small inputs), and always leaving one token dropped."""
    n = wanted if tokens >= reference else max(1, round(wanted * tokens / reference))
    return max(1, min(n, tokens - 1)) if tokens > 1 else 1


def fpn_width(tokens: list[int], channels: list[int], num_classes: int, bottom_up: bool, budget_flops: float,
              fraction: float, step: int = 32, widest: int = 1536) -> int:
    """The widest FPN (a multiple of ``step``, at most ``widest``) whose per-token layers cost at most
    ``fraction * budget_flops`` forward FLOPs per image: projections ``C^2 + C d``, classifiers ``d^2 + d K``
    (twice, and the ``2 d^2`` bottom-up projection, with the bottom-up path)."""

    def cost(d: int) -> float:
        per_d = (4 if bottom_up else 1) * d * d + (2 if bottom_up else 1) * d * num_classes
        return 2.0 * sum(n * (c * c + c * d + per_d) for n, c in zip(tokens, channels))

    d = widest
    while d > step and cost(d) > fraction * budget_flops:
        d -= step
    return d


@register_method
class PIM(HERBS):
    """PIM: HERBS's predecessor; top-down pyramid only, max-confidence selector, no refinement."""

    name = "pim"
    paper = "Chou et al., A Novel Plug-in Module for Fine-Grained Visual Classification (PIM), arXiv 2202.03822"
    code = "https://github.com/chou141253/FGVC-PIM"

    @dataclass
    class Config(HERBS.Config):
        num_selects: list[int] = field(default_factory=lambda: [2048, 512, 128, 32])
        joint_divisor: int = 32
        map_equal_levels: bool = False
        bottom_up: bool = False
        selector: Literal["predicted_class", "max_confidence"] = "max_confidence"
        lambda_layer: float = 0.5
        lambda_refine: float = 0.0
