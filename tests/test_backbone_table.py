"""A representative part of ``fgvc bench-backbones`` (the whole table is in docs/methods.md): every method on
small models of families whose shapes once broke methods (MobileNetV3's hidden head, LeViT's two-stride
stages, DINOv2's register tokens). Each pair builds, trains a step, explains and exports, or refuses in
one line."""

from __future__ import annotations

from fgvc.bench.backbones import FAMILIES, backbone_table, table
from fgvc.methods import list_methods

PART = ("MobileNetV3", "LeViT", "DINOv2 + registers")


def test_every_method_on_a_part_of_the_table_runs_or_refuses_in_one_line():
    families = [f for f in FAMILIES if f.name in PART]
    rows = backbone_table(families=families, log=lambda m: None)
    assert len(rows) == len(PART) * len(list_methods())
    failed = [(r["family"], r["method"], r["stage"], r["message"]) for r in rows if r["result"] == "failed"]
    assert not failed, failed
    refused = {(r["family"], r["method"]) for r in rows if r["result"] == "refused"}
    # what each method needs, in words about the backbone
    assert ("DINOv2 + registers", "cal") in refused and ("DINOv2 + registers", "pmg") in refused
    assert ("MobileNetV3", "transfg") in refused and ("LeViT", "pmg") in refused
    assert all("\n" not in r["message"] for r in rows)
    assert ("DINOv2 + registers", "transfg") not in refused and ("MobileNetV3", "baseline") not in refused
    text = table(rows)
    assert text.count("✓") == len(rows) - len(refused) and "pmg needs three stages" in text
