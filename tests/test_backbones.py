"""The timm adapter: names, offline pretrained files (timm checkpoint, safetensors, Google .npz), features."""

from __future__ import annotations

import socket

import pytest
import timm
import torch
from safetensors.torch import save_file

from fgvc.backbones import create_backbone, create_stage_backbone, stage_info, to_nchw
from fgvc.errors import ConfigError, FgvcError

from fakes import write_google_vit_npz


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_unknown_backbone_suggests_names():
    with pytest.raises(ConfigError, match=r"'resnet5O' is not a timm model \(did you mean .*resnet50"):
        create_backbone("resnet5O")


def test_timm_checkpoint_and_safetensors_load_offline(tmp_path, no_network):
    torch.manual_seed(0)
    src = timm.create_model("test_vit", pretrained=False, num_classes=7, img_size=64)
    sd = src.state_dict()
    torch.save(sd, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    for name in ("w.pth", "w.safetensors"):
        # At another input size: timm resizes the position embedding; the 7-class head is dropped.
        m = create_backbone("test_vit", pretrained_file=str(tmp_path / name), img_size=96)
        assert torch.equal(m.blocks[2].attn.qkv.weight, src.blocks[2].attn.qkv.weight)
        assert m.pos_embed.shape[1] == 1 + 36 and m.num_classes == 0


def test_google_npz_loads_with_transposes_and_resized_grid(tmp_path, no_network):
    ref = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=64)
    w = write_google_vit_npz(tmp_path / "ViT-B_16.npz", ref, grid=7)
    m = create_backbone("test_vit", pretrained_file=str(tmp_path / "ViT-B_16.npz"), img_size=64)
    assert torch.allclose(m.patch_embed.proj.weight, torch.from_numpy(w["embedding/kernel"]).permute(3, 2, 0, 1))
    q = torch.from_numpy(w["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"])
    assert torch.allclose(m.blocks[1].attn.qkv.weight[: m.embed_dim], q.flatten(1).T)
    assert torch.allclose(m.blocks[0].norm2.weight, torch.from_numpy(w["Transformer/encoderblock_0/LayerNorm_2/scale"]))
    assert torch.allclose(m.norm.weight, torch.from_numpy(w["Transformer/encoder_norm/scale"]))
    assert m.pos_embed.shape == (1, 1 + 16, m.embed_dim)  # 7x7 grid resized to 4x4
    pe = torch.from_numpy(w["Transformer/posembed_input/pos_embedding"])
    assert torch.allclose(m.pos_embed[0, 0], pe[0, 0])  # the class-token slot is kept as is


def test_missing_or_mismatched_weight_file(tmp_path):
    with pytest.raises(FgvcError, match="pretrained weight file not found"):
        create_backbone("test_resnet", pretrained_file=str(tmp_path / "nope.pth"))
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(FgvcError, match="cannot load pretrained weights for test_vit"):
        create_backbone("test_vit", pretrained_file=str(tmp_path / "resnet.pth"), img_size=64)


@pytest.mark.parametrize("name,kwargs", [
    ("test_resnet", {}), ("test_convnext", {}), ("test_vit", {}),
    ("swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=2)),
])
def test_spatial_and_stage_features(name, kwargs):
    m = create_backbone(name, img_size=64, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    fmap = to_nchw(m, m.forward_features(x))
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, m.num_features)
    n = len(stage_info(name, img_size=64, **kwargs))
    staged = create_stage_backbone(name, [n - 2, n - 1], img_size=64, **kwargs)
    stages = staged(x)
    assert len(stages) == 2 and all(s.ndim == 4 and s.shape[0] == 2 for s in stages)


def test_stage_features_without_forward_intermediates_use_features_only(monkeypatch):
    """Older timm versions lack forward_intermediates on some models (Inception-V3 before 1.0.31): the stage
    path then uses timm's features_only wrapper and gives the same maps."""
    from timm.models.resnet import ResNet

    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    modern = create_stage_backbone("test_resnet", [2, 3], img_size=64).eval()
    with torch.no_grad():
        expected = modern(x)
    monkeypatch.delattr(ResNet, "forward_intermediates")
    torch.manual_seed(0)
    old = create_stage_backbone("test_resnet", [2, 3], img_size=64).eval()
    assert modern.via == "intermediates" and old.via == "features_only"
    with torch.no_grad():
        got = old(x)
    assert len(got) == 2
    for a, b in zip(expected, got):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
