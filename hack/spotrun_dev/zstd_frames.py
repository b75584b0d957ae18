"""The window each zstd frame of a blob declares, read from the frames' headers (RFC 8878,
section 3.1.1): what a decoder must allocate to open the frame.

A zstd:chunked layer is a run of frames, one per small file or per chunk of a larger one,
plus skippable frames (the TOC's footer). A frame whose header gives no content size
declares a window, and klauspost/compress's decoder (the snapshotter's) allocates that
window for every frame it opens, so the lazy nodes' layers are written with a small one
(``spotrun-esgz -window``, docs/images.md). Only headers are read: the blocks are skipped
by their sizes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

MAGIC = 0xFD2FB528
SKIPPABLE = 0x184D2A50  # through 0x184D2A5F
DID_BYTES = (0, 1, 2, 4)
FCS_BYTES = (0, 2, 4, 8)
RLE_BLOCK = 1


def _frame_window(f: BinaryIO) -> int:
    """Reads one frame after its magic: its window (its content size for a single-segment
    frame, which declares no window)."""
    (fhd,) = f.read(1)
    single, fcs_flag, did_flag = fhd >> 5 & 1, fhd >> 6, fhd & 3
    window = 0
    if not single:
        (wd,) = f.read(1)
        base = 1 << (10 + (wd >> 3))
        window = base + base // 8 * (wd & 7)
    f.read(DID_BYTES[did_flag])
    fcs_size = FCS_BYTES[fcs_flag] or (1 if single else 0)
    raw = f.read(fcs_size)
    if single:
        window = int.from_bytes(raw, "little") + (256 if fcs_size == 2 else 0)
    while True:
        header = int.from_bytes(f.read(3), "little")
        last, kind, size = header & 1, header >> 1 & 3, header >> 3
        f.seek(1 if kind == RLE_BLOCK else size, 1)
        if last:
            break
    if fhd >> 2 & 1:  # content checksum
        f.seek(4, 1)
    return window


def frame_windows(path: Path) -> Iterator[int]:
    """The window of every zstd frame in ``path``, in order (skippable frames skipped)."""
    with path.open("rb") as f:
        while raw := f.read(4):
            if len(raw) < 4:
                raise ValueError(f"{path}: {len(raw)} trailing bytes")
            (magic,) = struct.unpack("<I", raw)
            if magic & 0xFFFFFFF0 == SKIPPABLE:
                (size,) = struct.unpack("<I", f.read(4))
                f.seek(size, 1)
            elif magic == MAGIC:
                yield _frame_window(f)
            else:
                raise ValueError(f"{path}: no zstd frame at byte {f.tell() - 4}")
