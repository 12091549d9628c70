"""Reading the arrays of a large COCO-like JSON file (iNaturalist) item by item, in bounded memory.

``json.loads`` of iNaturalist 2021's training file holds every image as a Python dict at once (about 5 GiB at
2.7M images). :func:`iter_arrays` reads the file in chunks and decodes one array item at a time with the
standard library's C decoder (``json.JSONDecoder.raw_decode``), so memory stays at a chunk plus what the caller
keeps of each item. Top-level values that are not asked for are decoded and dropped one by one too.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ...errors import DataError

CHUNK = 8 << 20  # bytes read at a time
MAX_VALUE = 256 << 20  # characters: a longer single value is taken as malformed
_WS = " \t\n\r"


class _Stream:
    """A text window over a file: ``buf[pos:]`` is what has not been consumed yet."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = open(path, "rb")
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof = "", 0, False
        self.consumed = 0  # characters before buf[0]

    def fill(self, need: int = 1) -> bool:
        """At least ``need`` characters ahead (unless the file ends); False when none are left."""
        while len(self.buf) - self.pos < need and not self.eof:
            data = self.fh.read(CHUNK)
            self.eof = not data
            self.consumed += self.pos
            self.buf = self.buf[self.pos:] + self.decoder.decode(data, final=self.eof)
            self.pos = 0
        return self.pos < len(self.buf)

    def skip_ws(self) -> str:
        """The next character that is not white space (consumed up to it), '' at the end."""
        while True:
            if not self.fill():
                return ""
            buf, pos = self.buf, self.pos
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            self.pos = pos
            if pos < len(buf):
                return buf[pos]

    def expect(self, chars: str) -> str:
        c = self.skip_ws()
        if not c or c not in chars:
            raise self.error(f"expected {' or '.join(repr(x) for x in chars)}, found {c or 'the end of the file'!r}")
        self.pos += 1
        return c

    def value(self, decoder: json.JSONDecoder) -> Any:
        """Decodes one JSON value at the position, reading more of the file while it is cut off."""
        self.skip_ws()
        need = 1 << 16
        while True:
            self.fill(need)
            try:
                obj, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self.eof or need > MAX_VALUE:
                    raise self.error(f"malformed JSON ({e.msg})") from None
                need *= 4  # cut off by the window's end (or malformed): widen the window and try again
                continue
            if end == len(self.buf) and not self.eof:  # a number may go on past the window
                need = len(self.buf) - self.pos + (1 << 16)
                self.fill(need)
                if len(self.buf) > end:
                    continue
            self.pos = end
            return obj

    def error(self, msg: str) -> DataError:
        offset = self.consumed + self.pos
        line = 1 + self.buf.count("\n", 0, self.pos)  # within the window: only an approximate line
        return DataError(f"{self.path}: {msg} at character {offset} (line {line} of the part read last)")

    def close(self) -> None:
        self.fh.close()


def _items(s: _Stream, decoder: json.JSONDecoder, key: str, progress) -> Iterator[tuple[str, Any]]:
    """The items of the array at ``s.pos`` (its ``[`` consumed), then its ``]``: a tight loop over the C scanner,
    the window refilled only near its end, the general path taken for white space and long items."""
    scan, margin, count = decoder.scan_once, 1 << 20, 0
    while True:
        if len(s.buf) - s.pos < margin and not s.eof:
            s.fill(margin)
        buf, pos = s.buf, s.pos
        try:
            obj, end = scan(buf, pos)
            if end >= len(buf) and not s.eof:  # may be cut off by the window: the careful path
                raise StopIteration
        except (StopIteration, json.JSONDecodeError):  # cut off by the window, or malformed: s.value tells
            obj = s.value(decoder)
            buf, end = s.buf, s.pos
        yield key, obj
        count += 1
        if progress and count % 100_000 == 0:
            progress(100_000)
        c = buf[end] if end < len(buf) else ""
        if c == ",":
            s.pos = end + 1
            nxt = buf[end + 1] if end + 1 < len(buf) else ""
            if nxt in _WS:
                s.skip_ws()
            continue
        s.pos = end
        if s.expect(",]") == "]":
            return


def iter_arrays(path: Path, keys: set[str], progress: Optional[Callable[[int], None]] = None
                ) -> Iterator[tuple[str, Any]]:
    """``(key, item)`` for every item of the top-level arrays named in ``keys``, in file order.

    Raises:
        DataError: For a file that is not a JSON object, or malformed JSON, naming the file and the place.
    """
    s = _Stream(Path(path))
    decoder = json.JSONDecoder()
    try:
        s.expect("{")
        if s.skip_ws() == "}":
            return
        while True:
            key = s.value(decoder)
            if not isinstance(key, str):
                raise s.error("expected a key")
            s.expect(":")
            if key in keys and s.skip_ws() == "[":
                s.pos += 1
                if s.skip_ws() == "]":
                    s.pos += 1
                else:
                    yield from _items(s, decoder, key, progress)
            else:
                s.value(decoder)  # a value not asked for: decoded and dropped
            if s.expect(",}") == "}":
                return
    finally:
        s.close()


__all__ = ["iter_arrays"]
