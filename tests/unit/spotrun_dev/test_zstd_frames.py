"""zstd frame headers read for their windows (zstd_frames; RFC 8878 section 3.1.1)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from spotrun_dev.zstd_frames import frame_windows


def block(kind: int, size: int, last: bool, payload: bytes) -> bytes:
    return (int(last) | kind << 1 | size << 3).to_bytes(3, "little") + payload


def windowed_frame(window_log: int, mantissa: int = 0) -> bytes:
    """No content size, no checksum: a window descriptor, two raw blocks."""
    wd = (window_log - 10) << 3 | mantissa
    return (struct.pack("<I", 0xFD2FB528) + bytes([0, wd])
            + block(0, 3, False, b"abc") + block(0, 2, True, b"de"))  # fmt: skip


def single_segment_frame(content: int) -> bytes:
    """Single segment, a 2-byte content size (stored less 256), a dictionary id byte, an
    RLE block and a checksum."""
    fhd = 1 << 6 | 1 << 5 | 1 << 2 | 1
    header = bytes([fhd, 7]) + (content - 256).to_bytes(2, "little")
    return (struct.pack("<I", 0xFD2FB528) + header + block(1, content, True, b"x")
            + b"\0\0\0\0")  # fmt: skip


def skippable(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A5E, len(payload)) + payload


def test_each_frames_window_and_skippable_frames_passed_over(tmp_path: Path) -> None:
    blob = tmp_path / "layer"
    blob.write_bytes(windowed_frame(19) + single_segment_frame(1000) + skippable(b"toc")
                     + windowed_frame(23) + windowed_frame(20, mantissa=4))  # fmt: skip
    assert list(frame_windows(blob)) == [512 << 10, 1000, 8 << 20, (1 << 20) + (1 << 19)]


def test_bytes_that_are_no_frame_are_refused(tmp_path: Path) -> None:
    blob = tmp_path / "layer"
    blob.write_bytes(windowed_frame(19) + b"\x01\x02\x03\x04\x05")
    with pytest.raises(ValueError, match="no zstd frame at byte 17"):
        list(frame_windows(blob))
