"""Find the input files that cannot be read as their format, and say why in the user's terms.

Ray Data reads a folder of files in tasks; a file it cannot parse fails the whole read
with a task error that names the file but not what to change. This module checks files
with pyarrow itself, the way the read will parse them, and returns one plain sentence per
bad file: the file, what is wrong (byte offset, row number, header) and the spec key to change.

Two depths:

* ``quick`` (every file, before the read): a CSV's first block (its header and the rows
  pyarrow infers types from) and the encoding of those bytes; a parquet file's footer.
* ``full`` (only after a read failed): every byte of every file, to find the bad one.

A file that cannot be parsed is *bad*; a CSV without a single byte (or only blank lines)
is *empty*: it holds no rows to lose, so the reader skips it and reports it.
"""
from __future__ import annotations

import codecs
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from raypipe.spec import CsvSource, ParquetSource

HEAD_BYTES = 1 << 20  # pyarrow's CSV block: the rows it infers column types from
_CHUNK = 4 << 20
_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_SKIP_HINT = "or set data.source.on_bad_files: skip to read the other files without it"


@dataclass(frozen=True)
class FileProblem:
    """One file that is not read: ``empty`` (nothing to read) or bad (``message`` says why and what to change)."""

    file: str
    message: str
    empty: bool = False


def csv_read_options(source: CsvSource, block_size: int | None = None) -> Any:
    """The pyarrow CSV read options of a source: its encoding; one thread per file (Ray's own default)."""
    import pyarrow.csv as pacsv

    extra = {"block_size": block_size} if block_size else {}
    return pacsv.ReadOptions(use_threads=False, encoding=source.encoding, **extra)


def csv_parse_options(source: CsvSource, invalid_row_handler: Any = None) -> Any:
    """The pyarrow CSV parse options: the source's delimiter; quoted values may span lines (exports do that)."""
    import pyarrow.csv as pacsv

    return pacsv.ParseOptions(delimiter=source.delimiter, newlines_in_values=True,
                              invalid_row_handler=invalid_row_handler)


def check_files(fs: pafs.FileSystem, files: list[str], source: ParquetSource | CsvSource, *,
                full: bool = False) -> list[FileProblem]:
    """The problems of ``files`` (in their order), checked in parallel threads (pyarrow releases the GIL)."""
    if not files:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        found = pool.map(lambda f: check_file(fs, f, source, full=full), files)
        return [p for p in found if p is not None]


def check_file(fs: pafs.FileSystem, path: str, source: ParquetSource | CsvSource, *,
               full: bool = False) -> FileProblem | None:
    """None when ``path`` reads as the source's format, else what is wrong with it."""
    try:
        if isinstance(source, CsvSource):
            return _check_csv(fs, path, source, full)
        return _check_parquet(fs, path, full)
    except OSError as e:  # a read error of the filesystem (permissions, a vanished file, S3)
        return FileProblem(path, f"{path!r} cannot be read: {_first_line(e)}")


# --- parquet ---------------------------------------------------------------------------
def _check_parquet(fs: pafs.FileSystem, path: str, full: bool) -> FileProblem | None:
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            if full:
                for _ in pf.iter_batches(batch_size=65_536):
                    pass
    except (pa.ArrowException, OSError) as e:
        return FileProblem(path, f"{path!r} is not a readable parquet file ({_first_line(e)}); it may be truncated "
                                 f"by an interrupted copy or write: replace it, {_SKIP_HINT}")
    return None


# --- csv -------------------------------------------------------------------------------
def _check_csv(fs: pafs.FileSystem, path: str, source: CsvSource, full: bool) -> FileProblem | None:
    with fs.open_input_stream(path, compression="detect") as f:
        head = f.read(HEAD_BYTES)
        if not head.strip():
            return FileProblem(path, f"{path!r} is empty ({len(head)} bytes)", empty=True)
        problem = _bom_problem(path, head, source) or _decoding_problem(path, _chunks(f, head, full), source)
    if problem:
        return FileProblem(path, problem)
    return _parse_problem(fs, path, source, full)


def _chunks(f: Any, head: bytes, full: bool) -> Iterator[tuple[bytes, bool]]:
    """(bytes, is the last chunk): the head, then (``full``) the rest of the stream."""
    if not full:
        yield head, len(head) < HEAD_BYTES
        return
    chunk = head
    while chunk:
        nxt = f.read(_CHUNK)
        yield chunk, not nxt
        chunk = nxt


def _bom_problem(path: str, head: bytes, source: CsvSource) -> str | None:
    if head.startswith(codecs.BOM_UTF8) and codecs.lookup(source.encoding).name not in ("utf-8", "utf-8-sig"):
        return (f"{path!r} starts with a UTF-8 byte-order mark, so it is UTF-8 text, but data.source.encoding is "
                f"{source.encoding!r}: set data.source.encoding: utf-8 (the default), {_SKIP_HINT}")
    return None


def _decoding_problem(path: str, chunks: Iterator[tuple[bytes, bool]], source: CsvSource) -> str | None:
    """The first byte that is not valid in the source's encoding, with the text around it."""
    decoder = codecs.getincrementaldecoder(source.encoding)("strict")
    offset = 0  # of the chunk's first byte in the file
    for chunk, last in chunks:
        pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
        try:
            decoder.decode(chunk, final=last)
        except UnicodeDecodeError as e:
            at = offset - pending + e.start
            data = e.object
            bad = data[e.start:e.end]
            around = data[max(0, e.start - 30):e.end + 30].decode(source.encoding, errors="replace")
            return (f"{path!r} is not {source.encoding} text: byte {at:,} (0x{bad.hex()}) cannot be decoded, "
                    f"in {around!r}; set data.source.encoding to the files' encoding (latin-1, cp1252, ...), "
                    f"{_SKIP_HINT}")
        offset += len(chunk)
    return None


def _parse_problem(fs: pafs.FileSystem, path: str, source: CsvSource, full: bool) -> FileProblem | None:
    """Parse the first block (``full``: every block) with the read's options; a bad row or header is the problem."""
    import pyarrow.csv as pacsv

    rows: list[Any] = []

    def first_bad_row(row: Any) -> str:
        rows.append(row)
        return "error"

    try:
        with fs.open_input_stream(path, compression="detect") as f:
            reader = pacsv.open_csv(f, read_options=csv_read_options(source, HEAD_BYTES),
                                    parse_options=csv_parse_options(source, first_bad_row))
            hint = _delimiter_problem(path, reader.schema.names, source)
            if hint:
                return FileProblem(path, hint)
            for _ in reader if full else ():
                pass
    except pa.ArrowInvalid as e:
        if str(e).strip() == "Empty CSV file":
            return FileProblem(path, f"{path!r} holds no header and no rows", empty=True)
        if rows:
            r = rows[0]
            where = f"row {r.number:,}" if r.number is not None else "a row"
            return FileProblem(path, (
                f"{path!r}: {where} has {r.actual_columns} fields where the header has {r.expected_columns} "
                f"({r.text[:80]!r}); quote values that hold the delimiter {source.delimiter!r}, fix the row, "
                f"check data.source.delimiter, {_SKIP_HINT}"))
        if "conversion error" in str(e):
            return None  # a value that does not fit the inferred type: type inference's business, not the file's
        return FileProblem(path, f"{path!r} cannot be parsed as CSV ({_first_line(e)}); check data.source.delimiter "
                                 f"({source.delimiter!r}) and data.source.encoding ({source.encoding!r}), {_SKIP_HINT}")
    return None


def _delimiter_problem(path: str, names: list[str], source: CsvSource) -> str | None:
    """A header read as one column that holds another delimiter: the file is probably separated by that one."""
    if len(names) != 1:
        return None
    counts = {d: names[0].count(d) for d in _DELIMITERS if d != source.delimiter}
    best = max(counts, key=lambda d: counts[d])
    if not counts[best]:
        return None
    return (f"{path!r}: its header {names[0][:80]!r} reads as one column with data.source.delimiter "
            f"{source.delimiter!r}; the file looks {_DELIMITERS[best]}-separated: set data.source.delimiter: "
            f"{best!r}, {_SKIP_HINT}")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
