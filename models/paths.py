"""Where the real models live, for tests and benchmarks.

The models are fetched by ``python models/fetch.py`` into a cache outside the repository:
``$ONNXOPT_MODELS`` if set, else ``~/.cache/onnxopt/models``. This module only looks; it never
downloads. Names are the keys of ``models/registry.json`` (``ppocrv4_det``, ``ppocrv4_rec``,
``ppocr_cls``, ``all_minilm_l6_v2``, ``resnet50``, ``keras_mobilenetv2``). The real photos for
the image models (``image_files``) are fetched into the same cache.

Stdlib only, so it can be imported anywhere.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

__all__ = [
    "DEMO_DIR",
    "REGISTRY_PATH",
    "asset_path",
    "available",
    "cache_dir",
    "image_dir",
    "image_files",
    "images_available",
    "model_names",
    "model_path",
    "registry",
]

MODELS_DIR = Path(__file__).resolve().parent
REGISTRY_PATH = MODELS_DIR / "registry.json"
DEMO_DIR = MODELS_DIR / "demo"
ENV_VAR = "ONNXOPT_MODELS"


def cache_dir() -> Path:
    """The model cache: ``$ONNXOPT_MODELS`` or ``~/.cache/onnxopt/models`` (may not exist)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "onnxopt" / "models"


@lru_cache(maxsize=1)
def registry() -> dict:
    """The parsed ``models/registry.json``."""
    with open(REGISTRY_PATH, encoding="utf-8") as f:
        return json.load(f)


def model_names() -> list[str]:
    return sorted(registry()["models"])


def _entry(name: str) -> dict:
    models = registry()["models"]
    if name not in models:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(models))}")
    return models[name]


def model_path(name: str) -> Path:
    """Path of the model's ONNX file in the cache (whether or not it is there)."""
    return cache_dir() / _entry(name)["file"]


def asset_path(name: str, asset: str) -> Path:
    """Path of a side file of a model, e.g. ``asset_path("ppocrv4_rec", "keys")`` (the CTC
    character list) or ``asset_path("all_minilm_l6_v2", "tokenizer_dir")``."""
    assets = _entry(name).get("assets", {})
    if asset not in assets:
        raise KeyError(f"model {name!r} has no asset {asset!r}; it has: {', '.join(assets) or 'none'}")
    return cache_dir() / assets[asset]


IMAGE_SPLITS = ("calib", "eval", "all")


def image_dir() -> Path:
    """Directory of the real photos (``registry()["images"]``) in the cache."""
    return cache_dir() / registry()["images"]["dir"]


def image_files(split: str = "all") -> list[Path]:
    """The photos of one split, in registry order: ``"calib"`` and ``"eval"`` are disjoint
    sets of photos (calibrate on one, measure on the other); ``"all"`` is both."""
    if split not in IMAGE_SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(IMAGE_SPLITS)}")
    files = registry()["images"]["files"]
    return [image_dir() / name for name, e in files.items() if split in ("all", e["split"])]


def images_available() -> bool:
    """True when every photo is in the cache (existence only)."""
    return all(p.is_file() for p in image_files())


def available(name: str) -> bool:
    """True when the model file and its side files are in the cache.

    Cheap (existence and size only); ``python models/fetch.py --verify`` checks hashes.
    """
    entry = _entry(name)
    path = model_path(name)
    if not path.is_file():
        return False
    size = entry.get("size")
    if size is not None and path.stat().st_size != size:
        return False
    if entry.get("exported") and not path.with_name(path.stem + ".export.json").is_file():
        return False  # an export that did not finish its check
    for asset in entry.get("assets", {}):
        if not asset_path(name, asset).exists():
            return False
    if entry.get("needs_images") and not images_available():
        return False
    return True
