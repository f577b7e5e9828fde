"""Decompress a TSV file into line-aligned block files; ``tsv.BlockReader`` runs this as a separate process.

Usage: ``python inflate.py SOURCE FOLDER BLOCK_BYTES MAX_PENDING``

SOURCE is gzip-compressed (any number of members) or plain text. The header
line is skipped. Each block of about BLOCK_BYTES bytes ends with a newline. It
is written to FOLDER as ``block-NNNNNN.tsv``, first under a temporary name and
then renamed. Then one line ``NAME<TAB>OFFSET`` is printed, where OFFSET is
how many bytes of SOURCE have been read. The process waits while MAX_PENDING
blocks are in FOLDER; the reader deletes each block once parsed. The exit
status is 0 at the end of the data and 1 on a read error, with the error on
standard error.

This file imports only the standard library and ``isal`` (when installed) and
is run by path, so that starting it does not import the package.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import BinaryIO

try:
    from isal import igzip as gzip_module
except ImportError:  # pragma: no cover - depends on the installed packages
    import gzip as gzip_module  # type: ignore[no-redef]

GZIP_MAGIC = b"\x1f\x8b"
_WAIT_SECONDS = 0.005


def _pending_blocks(folder: Path) -> int:
    return sum(1 for entry in os.scandir(folder) if entry.name.endswith(".tsv"))


class ReaderGone(Exception):
    """Raised when the reading process has exited, so no more blocks will be read."""


def _write_block(folder: Path, index: int, parts: list[memoryview], max_pending: int, reader_pid: int) -> str:
    while _pending_blocks(folder) >= max_pending:
        if os.getppid() != reader_pid:
            raise ReaderGone
        time.sleep(_WAIT_SECONDS)
    name = f"block-{index:06d}.tsv"
    temporary = folder / f".{name}.part"
    with open(temporary, "wb") as handle:
        for part in parts:
            handle.write(part)
    os.replace(temporary, folder / name)
    return name


def inflate(source: Path, folder: Path, block_bytes: int, max_pending: int) -> None:
    """Write the data rows of ``source`` to block files in ``folder``, printing one line per block."""
    reader_pid = os.getppid()
    with open(source, "rb") as raw:
        stream: BinaryIO = gzip_module.GzipFile(fileobj=raw, mode="rb") if raw.read(2) == GZIP_MAGIC else raw  # type: ignore[assignment]
        raw.seek(0)
        stream.readline()
        index = 0
        # The incomplete last line of the previous read, written at the start of the next block.
        remainder = b""
        while True:
            chunk = stream.read(block_bytes)
            if not chunk:
                break
            cut = chunk.rfind(b"\n")
            if cut < 0:
                remainder += chunk
                continue
            view = memoryview(chunk)
            name = _write_block(folder, index, [memoryview(remainder), view[: cut + 1]], max_pending, reader_pid)
            print(f"{name}\t{raw.tell()}", flush=True)
            remainder = bytes(view[cut + 1 :])
            index += 1
        if remainder.strip():
            name = _write_block(folder, index, [memoryview(remainder + b"\n")], max_pending, reader_pid)
            print(f"{name}\t{raw.tell()}", flush=True)


def main(argv: list[str]) -> int:
    source, folder, block_bytes, max_pending = argv
    try:
        inflate(Path(source), Path(folder), int(block_bytes), int(max_pending))
    except (BrokenPipeError, ReaderGone):
        # The reader stopped early or was killed: remove what it can no longer clean up.
        shutil.rmtree(folder, ignore_errors=True)
        return 0
    except (OSError, EOFError, ValueError) as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
