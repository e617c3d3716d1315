"""The detector interface shared by SPAIR and the baselines, and the registry behind ``--method``.

A detector turns images into boxes with confidence scores. Every method implements
:class:`Detector`; ``spair detect --method NAME`` builds one with :func:`get_detector`. Methods
register themselves with :func:`register_detector`; the built-in ones are imported on first use,
so asking for ``"conncomp"`` does not load torch.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from ..errors import ConfigError


@dataclass
class Detections:
    """The detections of one image.

    Attributes:
        boxes: float32 ``(k, 4)`` boxes ``(x0, y0, x1, y1)`` in continuous pixel coordinates
            (pixel column ``j`` covers ``[j, j + 1)``).
        scores: float32 ``(k,)`` confidence of each box, higher is more confident.
        objective: how badly the detector's model explains the image with these objects (lower is
            better; SPAIR: :func:`spair.models.split.image_objective`), or None where the detector
            has no such measure. Views of one image compare by it (:mod:`spair.models.shifts`).
    """

    boxes: np.ndarray
    scores: np.ndarray
    objective: float | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.scores) != len(self.boxes):
            raise ValueError(f"Detections: {len(self.scores)} scores for {len(self.boxes)} boxes")

    def __len__(self) -> int:
        return len(self.boxes)


@runtime_checkable
class Detector(Protocol):
    """Anything that detects objects in images.

    ``detect`` takes ``uint8`` RGB images ``(H, W, 3)`` of any sizes and, optionally, the
    background colour of each image (``uint8`` ``(3,)``) when it is known; it returns one
    :class:`Detections` per image, in the same order.
    """

    name: str

    def detect(self, images: Sequence[np.ndarray], backgrounds: Sequence[np.ndarray] | None = None
               ) -> list[Detections]:
        ...


DetectorFactory = Callable[..., Detector]
F = TypeVar("F", bound=DetectorFactory)

_REGISTRY: dict[str, DetectorFactory] = {}

# Built-in methods, imported on first use; importing the module registers the method.
_BUILTIN_MODULES: dict[str, str] = {
    "conncomp": "spair.models.conncomp",
    "spair": "spair.models.spair_detector",
    "air": "spair.models.air",
}


def register_detector(name: str) -> Callable[[F], F]:
    """Class (or factory function) decorator: make ``get_detector(name, **options)`` build it.

    Registering a second, different factory under a taken name is a programming error
    (``ValueError``); re-registering the same one (a module imported twice) is allowed.
    """
    def decorate(factory: F) -> F:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != factory.__qualname__:
            raise ValueError(f"detector name '{name}' is already registered by {existing.__qualname__}")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_detectors() -> list[str]:
    """Names :func:`get_detector` accepts: the registered methods and the built-in ones."""
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def get_detector(name: str, **options: object) -> Detector:
    """Build the detector registered as ``name`` with keyword ``options``.

    Raises :class:`ConfigError` for an unknown name (listing the known ones), for a built-in
    method whose module is not installed, and for options the method does not take.
    """
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        module = _BUILTIN_MODULES[name]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and module.startswith(e.name):
                raise ConfigError(f"method '{name}' is not available (module {module} is missing)") from None
            raise
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown detection method '{name}' (known: {', '.join(available_detectors())})")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as e:
        raise ConfigError(f"method '{name}': {e}") from None
    return factory(**options)
