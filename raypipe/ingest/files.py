"""File sources (parquet, csv, json) on a local disk or any ``pyarrow.fs`` filesystem.

A path is a local file or folder, or a pyarrow filesystem URI such as
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1``.
In a folder, only files with the format's extensions are read; names starting with
``_`` or ``.`` (``_SUCCESS``, ``.part-0.crc``) are skipped, as Ray Data does.

Text formats keep their text: every csv column is read as strings (pyarrow would type a column
from the first block of each file: a stray ``n/a?`` made it text in one file and numeric in the
next, or stopped a large file's read), and a json column whose values mix numbers and text is
text. The validate stage types such columns by majority over the whole training split
(``raypipe.validate.infer``). In both formats the cells listed in ``data.na_values`` (empty,
``NA``, ``null``, ``-``, ...) are missing values, whatever the column.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from raypipe.errors import SpecError
from raypipe.spec import NA_VALUES, CsvSource, JsonSource, ParquetSource

if TYPE_CHECKING:
    import ray.data

_COMPRESSED = ("gz", "bz2", "zst", "lz4", "br")
PARQUET_EXTENSIONS = ("parquet",)
CSV_EXTENSIONS = tuple(f"{e}{c}" for c in ("", *(f".{z}" for z in _COMPRESSED)) for e in ("csv", "tsv"))
JSON_EXTENSIONS = tuple(f"{e}{c}" for c in ("", *(f".{z}" for z in _COMPRESSED)) for e in ("json", "jsonl", "ndjson"))
_EXTENSIONS = {"parquet": PARQUET_EXTENSIONS, "csv": CSV_EXTENSIONS, "json": JSON_EXTENSIONS}
_SNIFF_BYTES = 4096
_HEADER_BYTES = 1 << 16  # read to find a csv file's column names; grown while the header is longer
_USERINFO = re.compile(r"^([a-zA-Z][\w+.-]*://)[^/@]*@")


def filesystem_and_path(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it, for a local path or a pyarrow URI.

    S3 credentials come from the usual AWS variables (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) of this process: they are set
    on the filesystem, so Ray workers started before they were set read with them too.
    Without them, each process uses the AWS SDK's default credential chain.
    """
    if "://" not in path:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        fs, inner = pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError) as e:
        why = str(e).replace(path, redact(path))  # pyarrow repeats the URI, secrets included
        raise SpecError(
            f"data.source.path: {redact(path)!r} is not a path pyarrow can open ({why}); write a local path or a "
            "URI such as s3://bucket/key?endpoint_override=host:port&scheme=http&region=us-east-1"
        ) from None
    return _with_env_credentials(fs), inner


def redact(path: str) -> str:
    """``path`` without the ``user:secret@`` part a URI may hold."""
    return _USERINFO.sub(r"\1***@", path)


def _with_env_credentials(fs: pafs.FileSystem) -> pafs.FileSystem:
    if not isinstance(fs, pafs.S3FileSystem):
        return fs
    rebuild, (options,) = fs.__reduce__()
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if options.get("access_key") or options.get("anonymous") or options.get("role_arn") or not (key and secret):
        return fs
    options = {**options, "access_key": key, "secret_key": secret,
               "session_token": os.environ.get("AWS_SESSION_TOKEN") or None}
    return rebuild(options)


def read_files(source: ParquetSource | CsvSource | JsonSource,
               na_values: Sequence[str] | None = None) -> ray.data.Dataset:
    """Open a parquet, csv or json file (or folder of them) as a lazy ``ray.data.Dataset``.

    ``na_values``: csv and json cells that are missing values (default: ``spec.NA_VALUES``).
    """
    import ray.data

    na = list(NA_VALUES if na_values is None else na_values)
    fs, path = filesystem_and_path(source.path)
    is_file, files = _list_files(fs, path, source)
    extensions = None if is_file else list(_EXTENSIONS[source.type])
    if isinstance(source, ParquetSource):
        return ray.data.read_parquet(path, filesystem=fs, file_extensions=extensions)
    if isinstance(source, CsvSource):
        import pyarrow.csv as pacsv

        parse = pacsv.ParseOptions(delimiter=source.delimiter)
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in _csv_names(fs, files, parse)},
                                       null_values=na, strings_can_be_null=True, quoted_strings_can_be_null=True)
        return ray.data.read_csv(path, filesystem=fs, file_extensions=extensions, parse_options=parse,
                                 convert_options=convert)
    return _read_json(fs, files, source.path, na)


# --- csv ---------------------------------------------------------------------------
def _csv_names(fs: pafs.FileSystem, files: list[str], parse: Any) -> list[str]:
    """The column names of every csv file's header (the union, in order of appearance).

    Each file's first block only is read. Every column is then read as strings: no value of a
    later block can fail a type pyarrow guessed from the first.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.csv as pacsv

    def header(f: str) -> list[str]:
        size = _HEADER_BYTES
        while True:
            with fs.open_input_stream(f, compression="detect") as stream:
                try:
                    reader = pacsv.open_csv(stream, parse_options=parse,
                                            read_options=pacsv.ReadOptions(block_size=size, use_threads=False))
                except pa.ArrowInvalid as e:
                    if "Empty CSV file" in str(e):
                        return []
                    if "straddling" not in str(e) or size >= 1 << 30:
                        raise
                    size *= 4  # a header longer than the block
                    continue
                return reader.schema.names

    names: dict[str, None] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:  # one small read per file: many at once on object stores
        for found in pool.map(header, files):
            names.update(dict.fromkeys(found))
    return list(names)


def _list_files(fs: pafs.FileSystem, path: str, source: Any) -> tuple[bool, list[str]]:
    """(is the path a file, the files to read); a clear SpecError when there are none."""
    shown = redact(source.path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SpecError(
            f"data.source.path: {shown!r} does not exist; point it at a {source.type} file or a folder of them "
            "(relative paths are resolved against the spec file's folder)"
        )
    if info.type == pafs.FileType.File:
        return True, [path]
    extensions = _EXTENSIONS[source.type]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and _wanted(i.path, path, extensions))
    if not files:
        raise SpecError(
            f"data.source.path: the folder {shown!r} holds no {source.type} files "
            f"(read: {', '.join('.' + e for e in extensions[:3])} ...); point it at the data files, "
            "or set data.source.type to their format"
        )
    return False, files


def _wanted(file: str, base: str, extensions: tuple[str, ...]) -> bool:
    rel = posixpath.relpath(file, base) if file.startswith(base) else posixpath.basename(file)
    if any(part.startswith((".", "_")) for part in rel.split("/")):
        return False
    name = posixpath.basename(file).lower()
    return any(name.endswith("." + e) for e in extensions)


# --- json --------------------------------------------------------------------------
def _read_json(fs: pafs.FileSystem, files: list[str], shown_path: str, na_values: list[str]) -> ray.data.Dataset:
    """Every JSON file read as bytes and parsed by one task per file (``_parse_json_files``).

    JSON lines go through ``pyarrow.json`` (typed by pyarrow). A file pyarrow refuses (a column
    holding numbers and text, such as ``1.5`` and ``"NA"``) and a JSON array (where Ray's
    fallback, ``pa.Table.from_pylist``, keeps only the first object's keys) are parsed with
    Python's ``json``, keeping every key; a column of mixed types becomes text.
    """
    import ray.data

    wanted = [f for f in files if _json_kind(fs, f, shown_path)]
    if not wanted:
        raise SpecError(f"data.source.path: {redact(shown_path)!r} holds only empty JSON files; point it at data")
    raw = ray.data.read_binary_files(wanted, filesystem=fs, include_paths=True, file_extensions=None)
    return raw.map_batches(_parse_json_files, fn_kwargs={"na_values": na_values}, batch_format="pyarrow", batch_size=1)


def _json_kind(fs: pafs.FileSystem, path: str, shown_path: str) -> str | None:
    """'array' (first non-space character ``[``), 'lines' (``{``) or None (empty file)."""
    with fs.open_input_stream(path, compression="detect") as f:
        head = f.read(_SNIFF_BYTES).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not head:
        return None
    if head[0] in "[{":
        return "array" if head[0] == "[" else "lines"
    raise SpecError(
        f"data.source.path: {posixpath.basename(path)!r} under {redact(shown_path)!r} starts with {head[:20]!r}, "
        "neither JSON lines (one object per line) nor a JSON array of objects; fix the file or the source type"
    )


def _parse_json_files(batch: pa.Table, na_values: list[str]) -> pa.Table:
    tables = [_json_table(data, path) for path, data in
              zip(batch.column("path").to_pylist(), batch.column("bytes").to_pylist(), strict=True)]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    return null_na_values(table, na_values)


def _json_table(data: bytes, path: str) -> pa.Table:
    """One JSON file (lines or an array of objects) as a table."""
    import pyarrow.json as pajson

    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[":
        return table_from_records(_array_records(data, path), mixed_as_text=True)
    try:
        return pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(use_threads=False))
    except pa.ArrowInvalid:  # mixed types in a column, or an object longer than pyarrow's block
        pass
    records = []
    for i, line in enumerate(data.decode("utf-8-sig").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}: line {i} is not valid JSON ({e})") from None
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected one JSON object per line")
    return table_from_records(records, mixed_as_text=True)


def null_na_values(table: pa.Table, na_values: list[str]) -> pa.Table:
    """Text cells listed in ``na_values`` (``data.na_values``) as missing values."""
    import pyarrow.compute as pc

    if not na_values:
        return table
    tokens = pa.array(na_values, type=pa.string())
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            col = table.column(i)
            na = pc.is_in(col, value_set=tokens.cast(field.type))
            if pc.any(na).as_py():
                table = table.set_column(i, field, pc.if_else(na, pa.scalar(None, field.type), col))
    return table


def _array_records(data: bytes, path: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(data)
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise ValueError(f"{path}: expected a JSON array of objects")
    return value


def table_from_records(records: list[dict[str, Any]], mixed_as_text: bool = False) -> pa.Table:
    """An arrow table with a column for every key of any record (missing values are null).

    ``pa.Table.from_pylist`` alone takes its columns from the first record only. With
    ``mixed_as_text``, a column whose values pyarrow cannot hold in one type (numbers and
    text) becomes text; without it, pyarrow's error is raised.
    """
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(r))
    if not mixed_as_text:
        return pa.table({k: [r.get(k) for r in records] for k in keys})
    return pa.table({k: _array([r.get(k) for r in records]) for k in keys})


def _array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else json_text(v) for v in values], type=pa.string())


def json_text(v: Any) -> str:
    """A JSON value as the text a file would hold: strings as they are, numbers, true/false, objects as JSON."""
    return v if isinstance(v, str) else json.dumps(v)
