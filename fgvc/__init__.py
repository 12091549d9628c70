"""fgvc: fine-grained visual classification methods on one engine.

    import fgvc
    model = fgvc.create_model("transfg", backbone="vit_base_patch16_224", num_classes=200, img_size=448)
    predictor = fgvc.Predictor("runs/cub-transfg")           # a run folder or checkpoint
    predictor.predict(["bird.jpg"], topk=5)
"""

__version__ = "0.1.0"

from .registry import create_model, list_methods, register_method  # noqa: E402

__all__ = ["create_model", "list_methods", "register_method", "load_run", "Predictor", "__version__"]


def __getattr__(name):  # keep `import fgvc` light: inference helpers load on first use
    if name in ("load_run", "Predictor"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(name)
