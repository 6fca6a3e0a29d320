"""File sources (parquet, csv, json) on a local disk or any ``pyarrow.fs`` filesystem.

A path is a local file or folder, or a pyarrow filesystem URI such as
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1``.
In a folder, only files with the format's extensions are read; names starting with
``_`` or ``.`` (``_SUCCESS``, ``.part-0.crc``) are skipped, as Ray Data does. Skipped files
are not silent: :func:`open_files` returns them with the reason, for the ingest output and
the data report. Parquet and CSV files are checked before Ray reads them (``filecheck``):
a bad one stops the run with its name and the key to change, or with
``data.source.on_bad_files: skip`` is left out and listed.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from raypipe.errors import DataValidationError, SpecError
from raypipe.ingest import filecheck
from raypipe.ingest.filecheck import FileProblem, check_files
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


@dataclass
class FileRead:
    """A file source's files: those to read, those left out, and (once opened) the lazy dataset.

    ``skipped`` holds ``{"file", "reason", "kind"}`` per file left out; ``kind`` is ``name`` (a name
    or extension the format does not read), ``empty`` (no rows to read) or ``bad`` (unreadable,
    left out under ``on_bad_files: skip``).
    """

    source: ParquetSource | CsvSource | JsonSource
    fs: pafs.FileSystem
    files: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    dataset: Any = None
    na_values: tuple[str, ...] = NA_VALUES  # csv and json cells that are missing values (``data.na_values``)
    _sizes: list[int] | None = field(default=None, init=False, repr=False)

    def counts(self) -> dict[str, int]:
        kinds = [s["kind"] for s in self.skipped]
        return {"read": len(self.files), **{f"skipped_{k}": kinds.count(k) for k in ("name", "empty", "bad")}}

    def sizes(self) -> list[int]:
        """Each parquet or csv file's bytes, in the order of ``files`` (parquet: uncompressed, from its footer;
        csv: on disk). Read once per read: the stage asks whether the input is small, then how to read it."""
        if self._sizes is None:
            from raypipe.datasets import parquet_sizes

            self._sizes = (parquet_sizes(self.fs, self.files) if isinstance(self.source, ParquetSource)
                           else [i.size or 0 for i in self.fs.get_file_info(self.files)])
        return self._sizes


def read_files(source: ParquetSource | CsvSource | JsonSource,
               na_values: Sequence[str] | None = None) -> ray.data.Dataset:
    """Open a parquet, csv or json file (or folder of them) as a lazy ``ray.data.Dataset``.

    ``na_values``: csv and json cells that are missing values (default: ``spec.NA_VALUES``).
    """
    return open_files(source, na_values=na_values).dataset


def open_files(source: ParquetSource | CsvSource | JsonSource, bad: tuple[FileProblem, ...] = (),
               na_values: Sequence[str] | None = None) -> FileRead:
    """:func:`plan_read`, then :func:`open_dataset`."""
    read = plan_read(source, bad, na_values)
    read.dataset = open_dataset(read)
    return read


def plan_read(source: ParquetSource | CsvSource | JsonSource, bad: tuple[FileProblem, ...] = (),
              na_values: Sequence[str] | None = None) -> FileRead:
    """List and check a file source's files, without Ray; ``bad``: files already found bad by a full check;
    ``na_values``: the cells read as missing values (default: ``spec.NA_VALUES``).

    Raises:
        SpecError: the path does not exist or holds no file of the format.
        DataValidationError: a file is bad and ``on_bad_files`` is ``fail``, or no file is left to read.
    """
    na = tuple(NA_VALUES if na_values is None else na_values)
    fs, path = filesystem_and_path(source.path)
    files, skipped = _list_files(fs, path, source)
    if isinstance(source, JsonSource):
        return FileRead(source, fs, files, skipped, na_values=na)
    problems = check_files(fs, files, source)
    problems += [b for b in bad if b.file not in {p.file for p in problems}]
    if any(not p.empty for p in problems) and source.on_bad_files == "fail":
        raise bad_files_error([p for p in problems if not p.empty])
    left_out = {p.file for p in problems}
    skipped += [{"file": p.file, "reason": p.message, "kind": "empty" if p.empty else "bad"} for p in problems]
    files = [f for f in files if f not in left_out]
    if not files:
        raise DataValidationError([f"data.source.path: {redact(source.path)!r} holds no readable {source.type} file: "
                                   + "; ".join(p.message for p in problems)])
    return FileRead(source, fs, files, skipped, na_values=na)


def open_dataset(read: FileRead) -> ray.data.Dataset:
    """The lazy dataset of a planned read's files (Ray must be connected: Ray Data would start its own).

    Ray Data splits a few files' blocks to fill the cluster (2 csv files gave 8 blocks on 4 CPUs), and
    a big file into blocks of its block size; the ingest stage reads most parquet and csv inputs one
    block per file instead (:func:`reads_per_file`), the layout :func:`read_tables` gives in the driver.
    """
    import ray.data

    source, fs, files = read.source, read.fs, read.files
    if isinstance(source, JsonSource):
        return _read_json(fs, files, source.path, list(read.na_values))
    if isinstance(source, ParquetSource):
        return ray.data.read_parquet(files, filesystem=fs, file_extensions=None)
    parse = filecheck.csv_parse_options(source)
    convert = _csv_convert(read, _csv_names(fs, files, source, parse))
    return ray.data.read_csv(files, filesystem=fs, file_extensions=None, read_options=filecheck.csv_read_options(source),
                             parse_options=parse, convert_options=convert)


SMALL_MAX_FILES = 64  # more files than this are never small input: their footers are not even read


def is_small_input(read: FileRead, limit: int) -> bool:
    """Whether a parquet or csv read holds fewer than ``limit`` bytes (parquet: uncompressed, from the footers;
    csv: on disk, and not compressed) in at most :data:`SMALL_MAX_FILES` files. Json: never (its reader is
    not :func:`read_tables`')."""
    if len(read.files) > SMALL_MAX_FILES or isinstance(read.source, JsonSource):
        return False
    return _sized(read) and sum(read.sizes()) < limit


def read_tables(read: FileRead) -> list[pa.Table]:
    """A parquet or csv read's files as ``pyarrow.Table`` s read in this process, one per file (:class:`FileReader`).
    For small inputs (:func:`is_small_input`) when ``ray.small_data`` says the driver."""
    reader = file_reader(read)
    return [reader(f) for f in read.files]


@dataclass(frozen=True)
class FileReader:
    """Reads one file of a planned parquet or csv read into one block: what Ray Data's reader in
    :func:`open_dataset` makes of it in one read task (the same options, hive folder columns). Picklable:
    it runs in Ray tasks too."""

    source: ParquetSource | CsvSource
    fs: pafs.FileSystem
    convert: Any = None  # csv: pyarrow ConvertOptions (every column as text, the missing-value cells)

    def __call__(self, path: str) -> pa.Table:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        from raypipe.datasets import with_hive_columns

        if isinstance(self.source, ParquetSource):
            table = pq.read_table(path, filesystem=self.fs, partitioning=None).replace_schema_metadata(None)
        else:
            with self.fs.open_input_stream(path) as stream:
                table = pacsv.open_csv(stream, read_options=filecheck.csv_read_options(self.source),
                                       parse_options=filecheck.csv_parse_options(self.source),
                                       convert_options=self.convert).read_all()
        return with_hive_columns(table, path)


def file_reader(read: FileRead) -> FileReader:
    """The :class:`FileReader` of a planned parquet or csv read (csv: its files' headers are read here)."""
    if isinstance(read.source, ParquetSource):
        return FileReader(read.source, read.fs)
    parse = filecheck.csv_parse_options(read.source)
    return FileReader(read.source, read.fs, _csv_convert(read, _csv_names(read.fs, read.files, read.source, parse)))


TASK_MAX_FILES = 256  # more files than this are read by Ray Data, which groups them into fewer blocks
TASK_FILE_BYTES = 512 << 20  # a bigger file is read by Ray Data, which cuts it into blocks of its block size


def reads_per_file(read: FileRead) -> bool:
    """Whether a parquet or csv read can be read as one Ray task and block per file (:class:`FileReader`):
    at most :data:`TASK_MAX_FILES` files, none over :data:`TASK_FILE_BYTES` (parquet: uncompressed, from
    the footers; csv: on disk, and not compressed). A Ray Data read of the same files cost ~2x as long on
    2 cores (its per-task overhead and streaming executor); a bigger file is cut into blocks by Ray Data
    (one task per file would hold it whole in one worker's memory)."""
    if isinstance(read.source, JsonSource) or len(read.files) > TASK_MAX_FILES:
        return False
    return _sized(read) and max(read.sizes(), default=0) <= TASK_FILE_BYTES


def _sized(read: FileRead) -> bool:
    """Whether a parquet or csv read's sizes are its data's (a compressed csv's are not)."""
    return isinstance(read.source, ParquetSource) or not any(_compressed(f) for f in read.files)


def _compressed(path: str) -> bool:
    """Whether the file's extension names a compression (``.gz``, ``.bz2``, ``.zst``, ...)."""
    try:
        return pa.Codec.detect(path) is not None
    except (TypeError, ValueError):  # no known compression extension
        return False


def _csv_convert(read: FileRead, names: list[str]) -> Any:
    """Every named column as text (validate types it), the source's missing-value cells as nulls."""
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, null_values=list(read.na_values),
                                strings_can_be_null=True, quoted_strings_can_be_null=True)


# --- csv ---------------------------------------------------------------------------
def _csv_names(fs: pafs.FileSystem, files: list[str], source: CsvSource, parse: Any) -> list[str]:
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
                                            read_options=filecheck.csv_read_options(source, block_size=size))
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


def bad_files_error(problems: list[FileProblem]) -> DataValidationError:
    """The error of a run that stops on bad files (``on_bad_files: fail``): one line per file."""
    return DataValidationError([f"data.source.path: {p.message}" for p in problems])


def find_bad_files(source: ParquetSource | CsvSource, files: list[str]) -> list[FileProblem]:
    """Read every byte of ``files`` as the read did, after it failed: the files it failed on and why."""
    fs, _ = filesystem_and_path(source.path)
    return [p for p in check_files(fs, files, source, full=True) if not p.empty]


def _list_files(fs: pafs.FileSystem, path: str, source: Any) -> tuple[list[str], list[dict[str, str]]]:
    """(the files to read, those skipped by name); a clear SpecError when there are none."""
    shown = redact(source.path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SpecError(
            f"data.source.path: {shown!r} does not exist; point it at a {source.type} file or a folder of them "
            "(relative paths are resolved against the spec file's folder)"
        )
    if info.type == pafs.FileType.File:
        return [path], []
    extensions = _EXTENSIONS[source.type]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files, skipped = [], []
    for f in sorted(i.path for i in infos if i.type == pafs.FileType.File):
        why = _skip_reason(f, path, extensions, source.type)
        if why:
            skipped.append({"file": f, "reason": why, "kind": "name"})
        else:
            files.append(f)
    if not files:
        raise SpecError(
            f"data.source.path: the folder {shown!r} holds no {source.type} files "
            f"(read: {', '.join('.' + e for e in extensions[:3])} ...; skipped {len(skipped)} other file(s)"
            f"{': ' + ', '.join(posixpath.basename(s['file']) for s in skipped[:5]) if skipped else ''}); "
            "point it at the data files, or set data.source.type to their format"
        )
    return files, skipped


def _skip_reason(file: str, base: str, extensions: tuple[str, ...], kind: str) -> str | None:
    """Why a file of the folder is not read (None: it is read)."""
    rel = posixpath.relpath(file, base) if file.startswith(base) else posixpath.basename(file)
    if any(part.startswith((".", "_")) for part in rel.split("/")):
        return "a hidden or marker file (a name in its path starts with '.' or '_')"
    name = posixpath.basename(file).lower()
    if not any(name.endswith("." + e) for e in extensions):
        return f"not a {kind} file name (read: {', '.join('.' + e for e in extensions[:4])} ...)"
    return None


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
    for i, f in enumerate(table.schema):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            col = table.column(i)
            na = pc.is_in(col, value_set=tokens.cast(f.type))
            if pc.any(na).as_py():
                table = table.set_column(i, f, pc.if_else(na, pa.scalar(None, f.type), col))
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
