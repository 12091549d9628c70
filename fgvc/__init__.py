"""fgvc: fine-grained visual classification methods on one engine.

    import fgvc
    model = fgvc.create_model("transfg", backbone="vit_base_patch16_224", num_classes=200, img_size=448)
    predictor = fgvc.Predictor("runs/cub-transfg")           # a run folder or checkpoint
    predictor.predict(["bird.jpg"], topk=5)
"""

from .version import __version__

__all__ = ["create_model", "list_methods", "register_method", "load_run", "Predictor", "__version__"]


def __getattr__(name):  # keep `import fgvc` light: torch, timm and the methods load on first use
    if name in ("create_model", "list_methods", "register_method"):
        from . import methods

        return getattr(methods, name)
    if name in ("load_run", "Predictor"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(name)
