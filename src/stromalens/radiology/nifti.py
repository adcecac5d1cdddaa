"""Integrity of a NIfTI file's payload, checked before ITK reads it.

ITK's NIfTI reader hides two kinds of damage: a truncated file is read with the missing voxels
as zeros, and NaN or infinite voxels are read as 0 (both without an error). So the payload is
checked here, as stored: it must hold the bytes the header promises,

.. math:: \\text{size} \\ge \\text{vox\\_offset} + \\text{bitpix}/8 \\cdot
          \\prod_{i=1}^{\\text{dim}[0]} \\text{dim}[i],

and a floating-point payload (datatype FLOAT32, FLOAT64, COMPLEX64, COMPLEX128) must be finite.
A ``.nii.gz`` is decompressed once, in 4 MiB chunks, for this; a gzip stream that ends early is
named as truncated. Files that are not single-file NIfTI-1/2 (``n+1`` / ``n+2``) are left to ITK.

Reference: the NIfTI-1 header (``nifti1.h``) and NIfTI-2 header (``nifti2.h``) layouts,
Neuroimaging Informatics Technology Initiative, nifti.nimh.nih.gov.

Example
-------
>>> payload_problem("t1.nii.gz")       # doctest: +SKIP
'the file holds 50,646 bytes of data where its header promises 72,352 (70.0%); it is truncated …'
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: NIfTI datatype code → numpy scalar type of its floating-point components.
FLOAT_DATATYPES = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}
CHUNK = 1 << 22


@dataclass(frozen=True)
class Layout:
    offset: int  # vox_offset, bytes
    nbytes: int  # voxel bytes the header promises
    dtype: np.dtype | None  # float component type, None for integer data


def payload_problem(path: Path | str) -> str | None:
    """What is wrong with a NIfTI file's payload (truncated, NaN/inf voxels), or None."""
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    try:
        with gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb") as stream:
            header = stream.read(540)
            layout = read_layout(header)
            if layout is None:
                return None
            size, n_nan, n_inf = _scan(stream, header, layout)
    except gzip.BadGzipFile:
        return None  # not gzip at all: ITK's reader names the file as unreadable
    except (EOFError, zlib.error) as exc:
        return f"the compressed file is truncated or damaged ({exc}); re-export or re-copy it"
    expected = layout.offset + layout.nbytes
    if size < expected:
        return (
            f"the file holds {size:,} bytes of data where its header promises {expected:,} "
            f"({size / expected:.1%}); it is truncated — re-export or re-copy it"
        )
    if n_nan or n_inf:
        return (
            f"{n_nan:,} NaN and {n_inf:,} infinite voxel(s) in the stored data (ITK would read "
            "them as 0); replace or mask them before radiomics (no value is guessed for them)"
        )
    return None


def read_layout(header: bytes) -> Layout | None:
    """The payload layout from a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header, else None."""
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0] if len(header) >= 4 else 0
        if sizeof_hdr == 348 and len(header) >= 348 and header[344:347] == b"n+1":
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            dims = struct.unpack(endian + "8h", header[40:56])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
        elif sizeof_hdr == 540 and len(header) >= 540 and header[4:7] == b"n+2":
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
        else:
            continue
        n_dim = min(max(int(dims[0]), 1), 7)
        voxels = int(np.prod([max(int(d), 1) for d in dims[1 : n_dim + 1]], dtype=np.int64))
        kind = FLOAT_DATATYPES.get(int(datatype))
        dtype = np.dtype(endian + kind) if kind else None
        return Layout(offset, voxels * int(bitpix) // 8, dtype)
    return None


def _scan(stream, header: bytes, layout: Layout) -> tuple[int, int, int]:
    """Bytes in the file (header included) and NaN / infinite counts in its payload."""
    size = len(header)
    pending = header[layout.offset :]
    remaining = layout.nbytes  # payload bytes still to inspect (trailing bytes are ignored)
    n_nan = n_inf = 0
    skip = max(0, layout.offset - len(header))
    while True:
        if pending and layout.dtype is not None and remaining > 0:
            usable = min(len(pending), remaining) // layout.dtype.itemsize * layout.dtype.itemsize
            values = np.frombuffer(pending[:usable], dtype=layout.dtype)
            n_nan += int(np.isnan(values).sum())
            n_inf += int(np.isinf(values).sum())
            remaining -= usable
            pending = pending[usable:]
        chunk = stream.read(CHUNK)
        if not chunk:
            return size, n_nan, n_inf
        size += len(chunk)
        if skip:
            cut, skip = min(skip, len(chunk)), skip - min(skip, len(chunk))
            chunk = chunk[cut:]
        pending = pending + chunk if layout.dtype is not None else b""
