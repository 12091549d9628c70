"""Decoding images into tensors: RGB conversion, the bad-file policy, reproducible augmentation.

The augmentation of a sample is a pure function of ``(seed, epoch, index)``: :class:`ImageDataset` seeds
the random generators from those three numbers around the transform. Data order comes from the
sampler, so neither the number of loader workers nor a resume in the middle of an epoch changes which
crop or flip a sample gets (the exact-resume promise of docs/reliability.md).
"""

from __future__ import annotations

import random
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
from PIL import Image, ImageFile

from ..errors import DataError
from .record import Record
from .table import RecordTable

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is an error, never silently grey


def to_rgb(im: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB, the one conversion every path uses (training, predict, serve): transparency
    composited over white, 16-bit and 32-bit grey scaled to 8 bits, every other mode converted; a new image."""
    if im.mode == "RGBA" or im.mode == "LA" or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    if im.mode.startswith("I;16") or im.mode == "I":
        return im.point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im.copy()


def load_rgb(path, crop_bottom: int = 0) -> Image.Image:
    """Opens an image (a path or a binary file object) fully decoded as 8-bit RGB (:func:`to_rgb`).

    Raises:
        OSError / ValueError / PIL errors for a missing, empty, truncated or non-image file.
    """
    with Image.open(path) as im:
        im.load()
        im = to_rgb(im)
    if crop_bottom:
        im = im.crop((0, 0, im.width, max(1, im.height - crop_bottom)))
    return im


def image_size(path: str, crop_bottom: int = 0) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`load_rgb` returns it, read from the header only."""
    with Image.open(path) as im:
        return im.width, max(1, im.height - crop_bottom) if crop_bottom else im.height


DEAF = {signal.SIGTERM, signal.SIGINT}  # what a batch scheduler or a terminal sends the whole process group


def leave_signals_to_the_main_process(worker_id: int = 0) -> None:
    """``worker_init_fn`` of every fgvc DataLoader: workers ignore SIGTERM and SIGINT.

    A batch scheduler (or ``timeout``, or Ctrl-C in a terminal) signals the whole process group. Workers that
    died of it would make the main process fail with "DataLoader worker ... killed by signal" before it could
    save; ignoring it, they keep serving until the main process has saved and shuts them down.
    """
    for sig in DEAF:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, DEAF)  # blocked by start_workers until now: pending ones drop


def start_workers(loader: Iterable) -> Iterator:
    """``iter(loader)`` with SIGTERM and SIGINT blocked while the workers start.

    A worker forked from this process inherits the block, so a signal to the process group that arrives
    before its ``worker_init_fn`` has run (torch's worker loop first installs a SIGTERM handler that dies of
    a signal from anyone but the parent) stays pending and is then ignored; in this process it is delivered
    to the run's own handler once the block is lifted."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, DEAF)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


class ImageDataset(torch.utils.data.Dataset):
    """Records to ``(image, label, index, bad_index)`` tuples.

    Args:
        records: What to read.
        transform: PIL image to tensor.
        seed: Base seed of the per-sample augmentation.
        bad_data: ``raise`` stops at the first unreadable image, naming it; ``skip`` returns the next
            readable sample instead and reports the bad index in the fourth element (-1 when the sample
            was fine) so the trainer can count and budget them.

    Items are looked up by ``index`` or by ``(index, epoch)`` (the training sampler passes the epoch).
    """

    def __init__(self, records: Sequence[Record], transform: Callable, seed: int = 0, bad_data: str = "raise"):
        # columns, not objects: forked loader workers read them without copying (fgvc/data/table.py)
        self.records = records if isinstance(records, RecordTable) else RecordTable.from_records(records)
        self.transform = transform
        self.seed = seed
        self.bad_data = bad_data

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int, epoch: int) -> torch.Tensor:
        img = load_rgb(self.records.path(index), self.records.crop(index))
        s = sample_seed(self.seed, epoch, index)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):  # keep the caller's generator untouched (num_workers=0)
            torch.manual_seed(s)
            random.seed(s)
            try:
                return self.transform(img)
            finally:
                random.setstate(py_state)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        bad = -1
        for attempt in range(len(self.records)):
            i = (index + attempt) % len(self.records)
            try:
                return self._load(i, epoch), self.records.label(i), i, bad
            except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
                if self.bad_data == "raise":
                    raise DataError(f"cannot read image {self.records.path(i)} (dataset index {i}): "
                                    f"{e.__class__.__name__}: {e}") from None
                if bad < 0:
                    bad = i
        raise DataError("no readable image in the dataset")


def check_images(records: Sequence[Record], workers: int = 8,
                 progress: Optional[Callable[[int], None]] = None) -> list[tuple[int, str, str]]:
    """Decodes every image; returns ``(index, path, reason)`` for each one that cannot be read.

    Grayscale, CMYK and RGBA images are fine (they are converted); empty, truncated and non-image files
    are reported.
    """

    table = records if isinstance(records, RecordTable) else RecordTable.from_records(records)

    def check(i: int) -> Optional[tuple[int, str, str]]:
        try:
            load_rgb(table.path(i), table.crop(i))
            return None
        except Exception as e:  # noqa: BLE001
            return (i, table.path(i), f"{e.__class__.__name__}: {e}")

    bad = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(check, range(len(table)), chunksize=16):
            if progress:
                progress(1)
            if result:
                bad.append(result)
    return bad
