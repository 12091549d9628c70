"""Exporting a run's inference rule for use outside fgvc: a ``torch.export`` program (``.pt2``) or an ONNX
model (``.onnx``), each with a JSON sidecar that holds everything a program needs besides the model.

The batch dimension is dynamic in both. The sidecar names the method and backbone, the class names and
ids, the output (logits or log-probabilities: softmax gives the method's prediction either way) and the
whole preprocessing (resize mode and size, interpolation, crop, mean, std), so ``model.onnx`` plus its sidecar
``model.onnx.json`` are enough to classify an image with onnxruntime and PIL alone (the sidecar is named after the
whole file name, so an ``.onnx`` and a ``.pt2`` export share a folder without overwriting each other's). Every export is loaded back
and compared with the run's own model on batches of 1 and 3 before the command reports success.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from .arrays import as_numpy
from .errors import FgvcError
from .run import Run, load_run

FORMATS = {".pt2": "torch.export", ".onnx": "onnx"}


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    max_abs_diff: float  # exported vs. the run's model, over the check batches


def _dynamic_batch() -> dict[str, Any]:
    return {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}


def export_program(run: Run, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The run's ``forward`` as a ``torch.export`` program with a dynamic batch dimension."""
    return torch.export.export(run.model, (example,), dynamic_shapes=_dynamic_batch())


def sidecar(run: Run, fmt: str) -> dict[str, Any]:
    """What a program outside fgvc needs to use the exported model."""
    size = run.preprocess.img_size
    return {"format": fmt, "method": run.method, "backbone": run.cfg.model.backbone,
            "checkpoint": str(run.checkpoint), "step": run.step,
            "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW, RGB"},
            "output": {"shape": ["batch", len(run.class_names)],
                       "meaning": "logits or log-probabilities; softmax over the last axis gives the method's "
                                  "class probabilities"},
            "preprocessing": run.preprocess.describe(),
            "class_names": run.class_names, "class_ids": run.class_ids}


def sidecar_path(out: Path) -> Path:
    """The sidecar of an exported file: its whole name plus ``.json`` (``model.onnx.json``)."""
    return out.with_name(out.name + ".json")


def export_run(path: Union[str, Path, Run], out: Union[str, Path], opset: int = 18,
               device: str = "cpu") -> ExportResult:
    """Exports a run (folder, checkpoint or loaded :class:`Run`) to ``out`` (``.pt2`` or ``.onnx``) and writes its
    sidecar ``out`` + ``.json`` beside it; checks the export against the model at batches 1 and 3.

    ``device``: where the program is traced and checked. The CPU (default) gives a portable ``.pt2``; a
    ``.pt2`` traced on CUDA runs on CUDA. ONNX models are always traced on the CPU."""
    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise FgvcError(f"export: unknown format '{out.suffix}' for {out}; use .pt2 (torch.export) or .onnx")
    dev = torch.device("cpu" if fmt == "onnx" else device)
    run = path if isinstance(path, Run) else load_run(path, device=str(dev))
    run.model.to(dev).eval()
    run.device = dev
    size = run.preprocess.img_size
    example = torch.randn(2, 3, size, size, device=dev)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torch.export":
        with torch.no_grad():
            torch.export.save(export_program(run, example), str(out))
        loaded = torch.export.load(str(out)).module()

        def call(x: torch.Tensor) -> np.ndarray:
            return as_numpy(loaded(x))
    else:
        call = _export_onnx(run, example, out, opset)
    diff = 0.0
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        x = torch.randn(batch, 3, size, size, generator=generator).to(dev)
        with torch.no_grad():
            ref = as_numpy(run.model(x))
        got = call(x)
        if got.shape != ref.shape:
            raise FgvcError(f"export check failed: output {got.shape} for batch {batch}, expected {ref.shape}")
        diff = max(diff, float(np.abs(got - ref).max()))
    meta = sidecar(run, fmt)
    meta["traced_on"] = dev.type
    meta["check"] = {"batches": [1, 3], "max_abs_diff": diff}
    side = sidecar_path(out)
    side.write_text(json.dumps(meta, indent=1))
    return ExportResult(out, side, diff)


def _export_onnx(run: Run, example: torch.Tensor, out: Path, opset: int):
    try:
        import onnxruntime as ort
    except ImportError:
        raise FgvcError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'fgvc[onnx]'") from None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(run.model, (example,), str(out), dynamo=True, dynamic_shapes=_dynamic_batch(),
                          input_names=["images"], output_names=["logits"], opset_version=opset,
                          external_data=False, verbose=False)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def call(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {session.get_inputs()[0].name: as_numpy(x)})[0]

    return call


__all__ = ["export_run", "ExportResult", "sidecar", "sidecar_path", "FORMATS"]
