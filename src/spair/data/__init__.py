"""Data for spair: digit pools, scene generators, crops, the dataset cache and downloads.

- :mod:`spair.data.digits`: the digit files (embedded, or fetched into the cache) and
  :func:`load_digits`, which resizes and splits them;
- :mod:`spair.data.scenes`: :class:`SceneConfig`, :func:`generate_scenes`, :func:`random_crops`;
- :mod:`spair.data.datasets`: dataset folders (``scenes.npz`` + ``manifest.json``) and the cache
  keyed by the dataset specification (:func:`get_dataset`);
- :mod:`spair.data.fetch`: the download of the official MNIST files;
- :mod:`spair.data.images`: reading image folders.

See ``docs/data.md``.
"""

from .datasets import (CropConfig, DatasetSpec, build_dataset, default_cache_dir, get_dataset,
                       load_dataset, save_dataset)
from .digits import INK_THRESHOLD, DigitPool, load_digits
from .scenes import SceneConfig, Scenes, generate_scenes, random_crops

__all__ = [
    "INK_THRESHOLD", "DigitPool", "load_digits",
    "SceneConfig", "Scenes", "generate_scenes", "random_crops",
    "CropConfig", "DatasetSpec", "build_dataset", "save_dataset", "load_dataset", "get_dataset",
    "default_cache_dir",
]
