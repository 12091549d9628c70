"""One annotated image: what readers build and what :class:`~fgvc.data.table.RecordTable` gives back on demand.

Apart from :mod:`fgvc.data.index` so that the table (which makes records) and the index (which holds a
table) need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class Record:
    """One annotated image.

    Attributes:
        path: The image file.
        label: Contiguous class index in ``0..K-1``.
        split: The official split it belongs to (``train``, ``val``, ``test``, ...).
        box: Object box ``(x, y, w, h)`` in pixels of the original image, where the dataset has one.
        parts: ``[P, 3]`` array of ``(x, y, visible)`` part locations in pixels, where the dataset has them.
        crop_bottom: Pixels to cut from the bottom when decoding (FGVC-Aircraft's copyright banner).
        extra: Other per-image annotations (hierarchy levels, species, image id).
    """

    path: str
    label: int
    split: str
    box: Optional[tuple[float, float, float, float]] = None
    parts: Optional[np.ndarray] = None
    crop_bottom: int = 0
    extra: dict = field(default_factory=dict)


__all__ = ["Record"]
