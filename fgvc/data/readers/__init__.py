"""Dataset readers: one module per official format, all returning a :class:`~fgvc.data.index.DatasetIndex`.

Importing this package registers the built-in readers (:mod:`.registry` holds the registry and
``open_dataset``, the single entry point).
"""

from . import aircraft, cars, cub, dogs, flowers, folder, inat, pets  # noqa: F401  (registers them)
from .detect import detect_dataset
from .registry import DataError, list_datasets, open_dataset, register_reader

__all__ = ["open_dataset", "register_reader", "list_datasets", "detect_dataset", "DataError"]
