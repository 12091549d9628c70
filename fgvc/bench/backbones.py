"""``fgvc bench-backbones``: which method runs on which timm family, checked, not claimed.

Every method against one model of each of twenty-odd timm families, random weights, a small input: built, one
training step (every update phase, backward included), ``explain``, and a ``torch.export`` program whose output
equals the model's. A method that cannot use a backbone must refuse it in one line (a :class:`ConfigError`); any
other exception is a failure, named with the stage it happened in. The table in docs/methods.md is this
command's output.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..report.tables import markdown_table


@dataclass(frozen=True)
class Family:
    """One timm family: its name, the model that stands for it and the input size it is checked at."""

    name: str
    model: str
    size: int = 64


FAMILIES = [
    Family("ResNet", "resnet18"), Family("EfficientNet", "efficientnet_b0"),
    Family("MobileNetV3", "mobilenetv3_small_100"), Family("ConvNeXt", "convnext_atto"),
    Family("RegNet", "regnetx_002"), Family("DenseNet", "densenet121"), Family("Inception-V3", "inception_v3", 96),
    Family("FastViT", "fastvit_t8"), Family("EfficientViT (MIT)", "efficientvit_b0"),
    Family("EfficientViT (MSRA)", "efficientvit_m0"), Family("LeViT", "levit_128s"),
    Family("CoAtNet", "coatnet_0_rw_224", 224), Family("MaxViT", "maxvit_tiny_rw_224", 224),
    Family("CAFormer", "caformer_s18"), Family("Swin", "swin_tiny_patch4_window7_224", 224),
    Family("Swin-V2", "swinv2_tiny_window8_256", 256), Family("ViT", "vit_tiny_patch16_224"),
    Family("DeiT", "deit_tiny_patch16_224"), Family("DINOv2", "vit_small_patch14_dinov2"),
    Family("DINOv2 + registers", "vit_small_patch14_reg4_dinov2"), Family("DINOv3", "vit_small_patch16_dinov3"),
    Family("EVA-02", "eva02_tiny_patch14_224"), Family("CLIP ViT", "vit_base_patch16_clip_224"),
]


def check_cell(method: str, family: Family, num_classes: int = 3, batch: int = 2) -> dict[str, Any]:
    """One method on one family: ``{"result": "ok" | "refused" | "failed", "stage", "message", "seconds"}``."""
    from ..methods import StepContext, create_model

    t0 = time.perf_counter()
    stage = "build"
    try:
        torch.manual_seed(0)
        model = create_model(method, backbone=family.model, num_classes=num_classes, img_size=family.size)
        x = torch.randn(batch, 3, family.size, family.size)
        y = torch.arange(batch) % num_classes
        stage = "training step"
        model.train()
        for phase in range(model.update_phases()):
            out = model.training_step(x, y, StepContext(0, 0, 10, 1, F.cross_entropy, phase=phase))
            out.loss.backward()
            if not torch.isfinite(out.loss.detach()):
                raise RuntimeError(f"non-finite loss {float(out.loss.detach())}")
        stage = "explain"
        model.eval()
        with torch.no_grad():
            model.explain(x)
            logits = model(x)
        stage = "export"
        program = torch.export.export(model, (x,))
        difference = float((program.module()(x) - logits).abs().max().detach())
        if difference > 1e-3:
            raise RuntimeError(f"the exported program differs from the model by {difference:.2g}")
        return {"result": "ok", "stage": "", "message": "", "seconds": time.perf_counter() - t0}
    except ConfigError as e:
        if stage != "build":  # a refusal after the model was built is no refusal
            return {"result": "failed", "stage": stage, "message": f"ConfigError: {e}",
                    "seconds": time.perf_counter() - t0}
        message = str(e)
        one_line = "\n" not in message
        return {"result": "refused" if one_line else "failed", "stage": stage, "message": message,
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - what the table reports
        where = traceback.extract_tb(e.__traceback__)[-1]
        return {"result": "failed", "stage": stage, "seconds": time.perf_counter() - t0,
                "message": f"{e.__class__.__name__}: {str(e).splitlines()[0][:200] if str(e) else ''} "
                           f"({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"}


def backbone_table(methods: Optional[list[str]] = None, families: Optional[list[Family]] = None,
                   log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every method on every family: one record per pair (see :func:`check_cell`)."""
    from ..methods import list_methods

    rows = []
    for family in families or FAMILIES:
        for method in methods or list_methods():
            record = {"family": family.name, "model": family.model, "size": family.size, "method": method,
                      **check_cell(method, family)}
            rows.append(record)
            log(f"{family.name} ({family.model}, {family.size} px), {method}: {record['result']}"
                + (f" at {record['stage']}: {record['message']}" if record["result"] == "failed" else "")
                + (f": {record['message']}" if record["result"] == "refused" else ""))
    return rows


SYMBOL = {"ok": "✓", "refused": "refused", "failed": "✗"}


def table(rows: list[dict[str, Any]]) -> str:
    """Families down, methods across: ✓ (built, trained a step, explained, exported), refused (in one line: the
    reasons follow the table) or ✗ (the stage that failed)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = []
    for family in dict.fromkeys((r["family"], r["model"], r["size"]) for r in rows):
        cells = {r["method"]: r for r in rows if (r["family"], r["model"], r["size"]) == family}
        lines.append([f"{family[0]} (`{family[1]}`, {family[2]} px)"]
                     + [SYMBOL[cells[m]["result"]] + (f" ({cells[m]['stage']})" if cells[m]["result"] == "failed"
                                                       else "") for m in methods])
    text = markdown_table(["family (model, input)"] + methods, lines)
    reasons: dict[tuple[str, str], list[str]] = {}  # (method, what it said, the model named generically) -> families
    for r in rows:
        if r["result"] != "ok":
            said = r["message"].removeprefix("model.backbone: ").replace(r["model"], "the backbone")
            reasons.setdefault((r["method"], f"{r['stage']}: {said}" if r["result"] == "failed" else said),
                               []).append(r["family"])
    return text + "".join(f"\n- {method}, {', '.join(families)}: {said}"
                          for (method, said), families in sorted(reasons.items())) + ("\n" if reasons else "")


__all__ = ["FAMILIES", "Family", "check_cell", "backbone_table", "table"]
