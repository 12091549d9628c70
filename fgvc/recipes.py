"""The recipes that ship with fgvc (``fgvc/configs/``): finding them by name and listing them.

A recipe is named ``METHOD/DATASET`` (``transfg/cub``, ``smoke/wsdan``) and lives in
``fgvc/configs/METHOD/DATASET.yaml`` inside the installed package, so a wheel install has them all.
Files whose name starts with ``_`` are shared bases (``_base_:``), not recipes.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Optional

from .errors import ConfigError

RECIPES = Path(__file__).resolve().parent / "configs"
DEMO = RECIPES / "demo.yaml"


def list_recipes(method: Optional[str] = None) -> dict[str, list[str]]:
    """Recipe datasets per folder (method, or ``smoke``): ``{"transfg": ["cars", "cub", ...], ...}``."""
    out = {}
    for folder in sorted(p for p in RECIPES.iterdir() if p.is_dir()):
        if method is None or folder.name == method:
            names = sorted(p.stem for p in folder.glob("[!_]*.yaml"))
            if names:
                out[folder.name] = names
    return out


def recipe_path(method: str, dataset: str) -> Path:
    """The packaged recipe ``METHOD/DATASET``.

    Raises:
        ConfigError: One line naming the recipes that exist (for an unknown method, dataset or pair).
    """
    path = RECIPES / method / f"{dataset}.yaml"
    if path.is_file() and not dataset.startswith("_"):
        return path
    recipes = list_recipes()
    if method not in recipes:
        near = difflib.get_close_matches(method, list(recipes), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"no recipes for method '{method}'{hint}; recipes exist for: {', '.join(recipes)}")
    near = difflib.get_close_matches(dataset, recipes[method], n=1)
    hint = f"did you mean {method}/{near[0]}? " if near else ""
    raise ConfigError(f"no recipe {method}/{dataset}; {hint}{method} has recipes for: {', '.join(recipes[method])} "
                      f"(another dataset: start from one of them and set data.dataset=...)")


def resolve_recipe(arg: str) -> Path:
    """A config argument as a file: an existing YAML path, or a packaged recipe name (``transfg/cub``; the
    form ``configs/transfg/cub.yaml`` of a source checkout works too)."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    name = arg.removeprefix("fgvc/").removeprefix("configs/").removesuffix(".yaml").removesuffix(".yml")
    if name.count("/") == 1:
        return recipe_path(*name.split("/"))
    raise ConfigError(f"config file not found: {arg} (a packaged recipe is named METHOD/DATASET, e.g. transfg/cub; "
                      "fgvc methods lists them)")


def paper_recipe(method: str) -> Path:
    """The recipe of a method's paper setting (its CUB-200-2011 recipe), for defaults such as ``fgvc bench``'s."""
    return recipe_path(method, "cub")


__all__ = ["RECIPES", "DEMO", "list_recipes", "recipe_path", "resolve_recipe", "paper_recipe"]
