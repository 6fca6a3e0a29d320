"""Reading and writing Ray Datasets as parquet inside a :class:`~raypipe.store.Store`."""
from __future__ import annotations

import functools
from typing import Any

from raypipe.store import Store


def parquet_options(schema: Any) -> dict[str, Any]:
    """Parquet writer options for tables of a ``pyarrow.Schema``.

    Dictionary encoding only for columns that are not floating point: pyarrow tries
    a dictionary on every column by default, and on float columns (nearly all values
    distinct) that made writing 2.5x slower for the same file size.
    """
    import pyarrow as pa

    return {"use_dictionary": [f.name for f in schema if not pa.types.is_floating(f.type)]}


def write_table(table: Any, fs: Any, path: str) -> None:
    """Write one ``pyarrow.Table`` as a parquet file (from inside a Ray task), creating its folder.

    A folder exists only once a file is written into it: a split or kind without rows has none.
    """
    import posixpath

    import pyarrow.parquet as pq

    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
    table = table.replace_schema_metadata(meta or None)  # pandas' dtype notes would make readers build ArrowDtype columns
    fs.create_dir(posixpath.dirname(path), recursive=True)
    pq.write_table(table, path, filesystem=fs, **parquet_options(table.schema))


def read_parquet(store: Store, rel: str, one_block_per_file: bool = False) -> Any:
    """Read a dataset written by raypipe (a stage's parquet folder).

    ``one_block_per_file``: the layout the writes made, whatever the cluster's size, for passes
    that merge statistics block by block (validate's quantile sketches, the fitted features): left
    alone, Ray Data splits the blocks of a few files to fill the cluster's CPUs (2 files gave 8
    blocks on 4 CPUs), so those statistics would depend on the CPU count and differ from the
    small-data path's (:func:`read_blocks`). Not for training: Ray Train's per-epoch streaming
    split of a one- or two-block dataset hung in the second epoch.
    """
    import ray.data

    if not one_block_per_file:
        return ray.data.read_parquet(store.path(rel), filesystem=store.fs, file_extensions=["parquet"])
    files = parquet_files(store, rel)
    return ray.data.read_parquet(files or store.path(rel), filesystem=store.fs, file_extensions=["parquet"],
                                 override_num_blocks=max(1, len(files)))


def footer_rows(store: Store, rel: str) -> int:
    """Rows of the parquet files under ``rel``, counted from their footers (0 when there are none).

    What is on disk, not what the tasks that wrote it reported: a file torn by a killed
    writer has no footer and fails here, loudly.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    files = [store.path(rel, f) for f in store.walk_files(rel) if f.endswith(".parquet")]
    if not files:
        return 0
    def rows(path: str) -> int:
        with store.fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata.num_rows

    with ThreadPoolExecutor(max_workers=8) as pool:  # a footer is one small read: many at once on object stores
        return sum(pool.map(rows, files))


def has_rows(store: Store, rel: str) -> bool:
    return any(f.endswith(".parquet") for f in store.walk_files(rel))


_sequence: dict[str, Any] = {}


def task_file_name(content: bytes | None = None) -> str:
    """A parquet file name for a block written from inside a Ray task.

    The Ray task id and a per-task sequence number: a retried task overwrites its
    own files instead of adding copies. With ``content`` (bytes that follow from the
    rows written, such as their hashes), the name starts with a digest of it: files
    are read back in name order, and task ids differ from run to run, so this keeps
    the rows' order the same in every fresh run of a pipeline (torch training sees rows
    in that order; identical blocks share a digest and still get distinct names).
    """
    import hashlib
    import itertools

    import ray

    task = "driver"
    if ray.is_initialized():  # (ray.get_runtime_context() would start a Ray otherwise: a run without one)
        context = ray.get_runtime_context()
        task = (context.get_task_id() if context.worker.mode == ray.WORKER_MODE else None) or "driver"
    prefix = "" if content is None else hashlib.blake2b(content, digest_size=8).hexdigest() + "-"
    return f"{prefix}{task}-{next(_sequence.setdefault(task, itertools.count())):05d}.parquet"


# --- small data: one Ray task instead of a Ray Data execution -------------------------------------
SMALL_DATA_BYTES = 32 * 2**20
"""Inputs below this many bytes (parquet's uncompressed column-chunk sizes, from the footers) are
handled by one Ray task that runs a stage's per-block function itself, instead of a Ray Data
execution over the blocks: same function, same outputs. Per-row work (transform, predict) runs on
the whole table or Ray Data's batches; per-block statistics on each file (:func:`read_blocks`),
the blocks Ray Data would read.

Why 32 MiB (measured on 2 cores, shared, so rough): every Ray Data execution has a fixed cost
(planning, the streaming executor, a task per block, gathering the outputs) and a pipeline run
did 10 of them. The 200,000-row benchmark's splits hold 9 MB by this measure; there the validate
stage's one execution took 1.25-1.43 s and the one-task path 0.4-0.8 s for the whole stage, the
evaluate stage's four executions 1.5-2.4 s. The one task does the work on one core where the
execution spreads it over two, so it loses once half the work exceeds the execution's fixed
cost (~1 s here): validate does about 3 core-seconds per million rows (the 4M-row data benchmark's
validate took 6.5 s on 2 cores), so the crossover is near 670,000 rows, about 31 MB. With more cores the distributed path wins earlier; lower this there.
The 4M-row data benchmark (718 MB in memory) stays on the distributed path.
"""


def parquet_files(store: Store, rel: str) -> list[str]:
    """The parquet files under ``rel``, full paths for ``store.fs``, in name order (Ray's read order)."""
    return sorted(store.path(rel, f) for f in store.walk_files(rel) if f.endswith(".parquet"))


def data_bytes(store: Store, rels: list[str]) -> int:
    """Uncompressed bytes of the parquet files under ``rels`` (their footers' row groups)."""
    return parquet_bytes(store.fs, [f for rel in rels for f in parquet_files(store, rel)])


def parquet_bytes(fs: Any, files: list[str]) -> int:
    """Uncompressed bytes of parquet ``files`` on ``fs`` (their footers' row groups)."""
    return sum(parquet_sizes(fs, files))


def parquet_sizes(fs: Any, files: list[str]) -> list[int]:
    """Each parquet file's uncompressed bytes (its footer's row groups), in the order of ``files``."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    def size(path: str) -> int:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
            return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(size, files))


def is_small(store: Store, rels: list[str], limit: int | None = None) -> bool:
    """Whether the data under ``rels`` is below :data:`SMALL_DATA_BYTES` (or ``limit``)."""
    return data_bytes(store, rels) < (SMALL_DATA_BYTES if limit is None else limit)


def read_blocks(store: Store, rel: str, columns: list[str] | None = None) -> list[Any]:
    """The parquet files under ``rel`` as ``pyarrow.Table`` s, one per file, in Ray's read order.

    Ray Data reads raypipe's own split folders one block per file (a few files, well under
    its block size), so a per-block function called on each of these sees the blocks the
    distributed path sees: mergeable statistics whose approximations depend on the block
    layout (the quantile sketch) come out the same.
    """
    return [read_file(store, f, columns) for f in parquet_files(store, rel)]


def read_file(store: Store, path: str, columns: list[str] | None = None) -> Any:
    """One of raypipe's parquet files (a full path for ``store.fs``) as the block Ray Data reads from it."""
    import pyarrow.parquet as pq

    return with_hive_columns(pq.read_table(path, filesystem=store.fs, columns=columns, partitioning=None)
                             .replace_schema_metadata(None), path, columns)


def parquet_schema(store: Store, rel: str) -> Any:
    """The schema :func:`read_parquet` gives the folder ``rel`` (``Dataset.schema().base_schema``), from the
    files' footers: no Ray Data datasource is made (0.1-0.3 s each in a new process). Raypipe's own folders
    only: one schema per folder, and the hive folder columns added as text, as Ray's reader adds them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def read(path: str) -> Any:
        with store.fs.open_input_file(path) as f:
            return pq.read_schema(f)

    files = parquet_files(store, rel)
    schema = pa.unify_schemas([read(f) for f in files]).remove_metadata()
    empty = with_hive_columns(schema.empty_table(), files[0]) if files else schema.empty_table()
    return empty.schema


def with_hive_columns(table: Any, path: str, columns: list[str] | None = None) -> Any:
    """``table`` (read from ``path``) with the columns of the path's ``key=value`` folders, as Ray's readers add
    them (their default hive partitioning): ingest's ``__split=<name>`` folders, or a user's ``date=...``.

    What Ray's ``PathPartitionParser(Partitioning("hive"))`` and ``fill_column`` do, without Ray Data (a read
    in the driver or a plain task needs none): each folder with one ``=`` is a text column, its value
    URL-decoded (``tests/test_datasets.py`` compares the two)."""
    import posixpath
    import urllib.parse

    import pyarrow as pa

    for folder in posixpath.dirname(path).split("/"):
        if folder.count("=") != 1:
            continue
        name, value = folder.split("=")
        if name not in table.column_names and (columns is None or name in columns):
            table = table.append_column(name, pa.repeat(pa.scalar(urllib.parse.unquote(value), pa.string()), len(table)))
    return table


def read_table(store: Store, rel: str, columns: list[str] | None = None) -> Any:
    """All parquet files under ``rel`` as one ``pyarrow.Table`` (None without files), for per-row work.

    Files of one folder share a schema but for ints in one and floats in another, which
    are promoted (Ray's readers keep them apart as separate blocks).
    """
    import pyarrow as pa

    tables = read_blocks(store, rel, columns)
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def as_batch(table: Any, batch_format: str) -> Any:
    """A table as Ray Data would hand it to a batch function in ``batch_format`` under raypipe's ``DataContext``
    (:func:`raypipe.runtime.configure_data`), in this process too when no Ray is connected.

    A ``pandas`` batch of a table without extension columns is ``table.to_pandas()``: numpy dtypes, what
    Ray's ``ArrowBlockAccessor.to_pandas`` gives with ``enable_arrow_backed_pandas_conversion`` off, without
    Ray Data. Ray's tensor columns (images) go through Ray's own conversion (a column of ndarrays)."""
    import pyarrow as pa

    if batch_format == "pandas" and not any(isinstance(t, pa.BaseExtensionType) for t in table.schema.types):
        return table.to_pandas()
    from ray.data.block import BlockAccessor

    from raypipe.runtime import configure_batches

    configure_batches()  # a driver that never connected has Ray's default: Arrow-backed pandas columns
    return BlockAccessor.for_block(table).to_batch_format(batch_format)


def _in_context(context: Any, fn: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    from ray.data import DataContext

    DataContext._set_current(context)  # the driver's Ray Data settings (pandas dtypes) as in a Ray Data task
    return fn(*args, **kwargs)


def small_task(fn: Any, *args: Any, num_cpus: float = 1, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in one Ray task under the driver's ``DataContext``; its ObjectRef.

    The small-data path of a stage: its per-block function on the whole table, with the
    batches converted as Ray Data would (``as_batch``).
    """
    return data_task("SmallData", fn, args, kwargs, num_cpus)


def data_task(kind: str, fn: Any, args: tuple, kwargs: dict[str, Any], num_cpus: float = 1,
              num_returns: int = 1) -> Any:
    """``fn(*args, **kwargs)`` in a Ray task named ``<kind>(<fn>)`` under the driver's ``DataContext``; its
    ref (a list of ``num_returns`` refs when ``fn`` returns that many values)."""
    from ray.data import DataContext

    return _remote_in_context().options(num_cpus=num_cpus, num_returns=num_returns, **task_options(kind, fn)).remote(
        DataContext.get_current(), fn, args, kwargs)


@functools.cache
def _remote_in_context() -> Any:
    """:func:`_in_context` as one Ray remote function: Ray exports it once, not once per task."""
    import ray

    return ray.remote(_in_context)


def run_small(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``: in this process when ``ray.small_data`` says the driver
    (:func:`raypipe.runtime.small_data_in_driver`), else :func:`small_task`'s result, waited for."""
    import ray

    from raypipe.runtime import small_data_in_driver

    if small_data_in_driver():
        return fn(*args, **kwargs)
    return ray.get(small_task(fn, *args, **kwargs))


def task_options(kind: str, fn: Any) -> dict[str, Any]:
    """Ray task options of raypipe's own data tasks: named ``<kind>(<function>)``, as Ray Data names its
    tasks after their operators (``MapBatches(<function>)``), so a worker's process title shows what it
    runs; retried on a dead worker as long as Ray Data retries its tasks (a retry keeps the task id, so
    ``task_file_name`` rewrites the same files)."""
    return {"name": f"{kind}({fn.__name__})", "max_retries": -1}


def run_tasks(kind: str, fn: Any, calls: list[tuple]) -> list[Any]:
    """``fn(*args)`` for each ``args`` of ``calls``, each in a plain Ray task named ``<kind>(<fn>)`` under the
    driver's ``DataContext``, at most :func:`data_width` at once; the results in the order of ``calls``.

    For per-file passes over raypipe's own parquet folders (one call per file, the block a Ray Data read
    would make of it): a Ray Data execution of the same function cost ~0.15 s more per block on 2 cores.
    """
    return _in_order(lambda args: data_task(kind, fn, args, {}), calls)


def run_tasks_keeping(kind: str, fn: Any, calls: list[tuple]) -> list[tuple[Any, Any]]:
    """:func:`run_tasks` for an ``fn`` that returns ``(block, summary)``: per call the block's ref (it stays in
    the object store, owned by this process, rebuilt from its task if a node is lost) and the summary."""
    pairs: list[tuple[Any, Any]] = []

    def submit(args: tuple) -> Any:
        pairs.append(data_task(kind, fn, args, {}, num_returns=2))
        return pairs[-1][1]

    try:
        return [(block, summary) for (block, _), summary in zip(pairs, _in_order(submit, calls))]
    except Exception:
        _take_failed_blocks(pairs)
        raise


def _take_failed_blocks(pairs: list[tuple[Any, Any]]) -> None:
    """Get the error of each finished task that failed from its block ref too, so that Ray does not log it
    again as an unhandled error, with its traceback, once the ref is dropped: the caller raises it (a bad
    input file: ingest names it and the fix)."""
    import ray

    summaries = [summary for _, summary in pairs]
    ready, _ = ray.wait(summaries, num_returns=len(summaries), timeout=0, fetch_local=False)
    done = set(ready)
    for block, summary in pairs:
        if summary not in done:
            continue
        try:
            ray.get(summary)
        except Exception:  # noqa: BLE001 - the task's error, raised by the caller already
            try:
                ray.get(block)
            except Exception:  # noqa: BLE001 - the same error
                pass


def _in_order(submit: Any, items: list[Any]) -> list[Any]:
    """``submit(item)`` (a Ray task's ref) for each item, at most :func:`data_width` running at once; the
    tasks' results in the order of ``items``."""
    import ray

    width = data_width()
    refs: list[Any] = []
    pending: list[Any] = []
    for item in items:
        if len(pending) >= width:
            _, pending = ray.wait(pending, num_returns=1)
        refs.append(submit(item))
        pending.append(refs[-1])
    return ray.get(refs)


def data_width() -> int:
    """How many data tasks run at once: Ray Data's CPU limit (``runtime.configure_data``: one per core on
    a local Ray), else the cluster's CPUs. More tasks than that would only start more worker processes."""
    import math

    import ray
    from ray.data import DataContext

    limit = DataContext.get_current().execution_options.resource_limits.cpu
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(min(cpus, limit if limit is not None and math.isfinite(limit) else cpus)))


def run_per_block(fn: Any, blocks: list[Any], **kwargs: Any) -> list[Any]:
    """``fn(block, **kwargs)`` as one Ray task per block ref of a materialised dataset; the results in order.

    For a second or third pass over blocks already in the object store: plain tasks cost a
    few milliseconds each where a Ray Data execution costs 0.2-0.5 s to start. At most as many
    run at once as Ray Data would run (its CPU limit): more on fewer cores made passes slower.
    """
    import ray

    task = ray.remote(fn).options(**task_options("PerBlock", fn))
    return _in_order(lambda block: task.remote(block, **kwargs), blocks)  # a top-level ref: the task gets its block
