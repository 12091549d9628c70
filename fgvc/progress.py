"""Progress that reads well on a terminal and in a log file.

On a terminal (stderr a TTY) a command shows tqdm bars; in a pipe or a log file there are no bars (tqdm's own
switch, ``disable=None``), so no carriage-return frames reach the file, and the commands print one plain line per
epoch or stage instead. :func:`say` prints a line without breaking a bar that is being drawn.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional


def on_terminal() -> bool:
    """Whether progress bars are drawn (stderr is a terminal)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def progress_bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, **kwargs: Any):
    """A tqdm bar drawn only on a terminal (and when ``enabled``); elsewhere a bar that draws nothing."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None if enabled else True,
                **kwargs)


def say(message: str, file=None) -> None:
    """Prints ``message`` on a line of its own, above any bar being drawn (stdout by default)."""
    from tqdm import tqdm

    tqdm.write(message, file=file or sys.stdout)
    (file or sys.stdout).flush()


__all__ = ["on_terminal", "progress_bar", "say"]
