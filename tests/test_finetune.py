"""Fine-tuning modes beside the methods: a linear probe (frozen backbone, statistics included) and LoRA adapters
through peft. Each trains, resumes to the same weights, exports and serves the run's own outputs, with the
adapters merged (no peft in the export)."""

from __future__ import annotations

import shutil

import pytest
import torch

import fgvc
from fgvc.config import load_config
from fgvc.engine import checkpoint as ckpt
from fgvc.engine.trainer import train
from fgvc.errors import ConfigError

from conftest import ROOT, tiny_overrides

SMOKE = ROOT / "fgvc" / "configs" / "smoke"


def run(tmp_path, root, name: str, recipe: str = "baseline", *extra: str):
    cfg = load_config(SMOKE / f"{recipe}.yaml",
                      tiny_overrides(root, tmp_path / name, **{"eval.explain_samples": 0}) + list(extra))
    return train(cfg, progress=False)


def test_a_linear_probe_moves_only_the_head(tmp_path, synth_root):
    result = run(tmp_path, synth_root, "linear", "baseline", "model.finetune=linear", "train.epochs=2")
    state = ckpt.load_checkpoint(result.run_dir / "last.pt")["model"]
    torch.manual_seed(0)  # the engine seeds the model's initialization with train.seed=0
    fresh = fgvc.create_model("baseline", backbone="test_resnet", num_classes=4, img_size=32).state_dict()
    backbone = [k for k in state if k.startswith("backbone.")]
    assert backbone and all(torch.equal(state[k], fresh[k]) for k in backbone)  # batch-norm statistics too
    assert not torch.equal(state["head.weight"], fresh["head.weight"])


@pytest.mark.parametrize("recipe", ["baseline", "transfg"])
def test_lora_trains_resumes_exports_and_serves_the_runs_outputs(recipe, tmp_path, synth_root):
    extra = ["model.finetune=lora", "model.lora.rank=4", "train.epochs=2", "train.ckpt_every=2",
             "train.keep_checkpoints=10"]
    full = run(tmp_path, synth_root, "full", recipe, *extra)
    state = ckpt.load_checkpoint(full.run_dir / "last.pt")
    adapters = [k for k in state["model"] if "lora_B" in k]
    assert adapters and any(state["model"][k].abs().sum() > 0 for k in adapters)  # B starts at 0: it trained
    # resumed from its step-2 checkpoint, the same weights
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(full.run_dir / "step-2.pt", part / "last.pt")
    cfg = load_config(SMOKE / f"{recipe}.yaml", tiny_overrides(synth_root, part, **{"eval.explain_samples": 0})
                      + extra)
    resumed = train(cfg, resume="auto", progress=False)
    again = ckpt.load_checkpoint(resumed.run_dir / "last.pt")
    for key, value in state["model"].items():
        assert torch.equal(value, again["model"][key]), key
    # the run with adapters (not merged), against its merged export and its service
    from fgvc.export import export_run
    from fgvc.run import load_run

    unmerged = load_run(full.run_dir, device="cpu", merge=False)
    merged = load_run(full.run_dir, device="cpu")
    assert unmerged.model.finetune == "lora" and merged.model.finetune == "lora (merged)"
    assert not any("lora" in name for name, _ in merged.model.named_modules())
    # the run's log counts the parameters as served (adapters merged: none added) and those trained (the adapters)
    from fgvc.report.metrics import read_metrics

    model = next(r for r in read_metrics(full.run_dir) if r["kind"] == "model")
    assert model["parameters"] == sum(p.numel() for p in merged.model.parameters())
    assert model["trainable"] == sum(p.numel() for n, p in unmerged.model.named_parameters()
                                     if "lora_" in n or not n.startswith("backbone."))
    size = merged.preprocess.img_size
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = unmerged.model(x)
    assert torch.allclose(merged.model(x), expected, atol=1e-4)
    out = export_run(full.run_dir, tmp_path / "model.pt2")
    program = torch.export.load(str(out.path))
    assert "peft" not in str(program.graph_module.code) and torch.allclose(program.module()(x), expected, atol=1e-4)
    from fgvc.serve import create_app

    service = create_app(full.run_dir, device="cpu").state.service
    assert service.run.model.finetune == "lora (merged)"


def test_lora_without_a_layer_to_adapt_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="model.finetune=lora: test_resnet has no linear layer to adapt"):
        fgvc.create_model("baseline", backbone="test_resnet", num_classes=3, img_size=32, finetune="lora",
                          lora={"targets": "linear"})
