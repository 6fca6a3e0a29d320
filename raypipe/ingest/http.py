"""An HTTP source: a paginated JSON API read page by page with ``httpx``.

Pages are fetched inside one Ray task (:func:`read_http`), so records never pass
through the driver. Each response body is streamed and refused as soon as it passes
``data.source.max_response_mb`` (at once when its ``Content-Length`` says so), and each
page is written as its own parquet file before the next is fetched: the task holds one
page at a time, and Ray Data reads the files. Errors name the URL without its query
string, never a token or the values of ``params`` (which may hold API keys).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from httpx_retries import Retry

from raypipe.datasets import parquet_options
from raypipe.errors import HttpSourceError, SpecError, transient
from raypipe.ingest.files import table_from_records
from raypipe.spec import HttpSource
from raypipe.store import Store

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger("raypipe.ingest.http")

MAX_RETRY_AFTER_S = 30.0
_BODY_CHARS = 200
_ERROR_BODY_BYTES = 4 * _BODY_CHARS  # what is read of an error response's body: its start goes in the message


def iter_pages(source: HttpSource, headers: dict[str, str] | None = None,
               params: dict[str, str] | None = None) -> Iterator[list[dict[str, Any]]]:
    """The records of each page, page by page (defaults: :func:`request_headers`, :func:`request_params`)."""
    headers = request_headers(source) if headers is None else headers
    params = request_params(source) if params is None else params
    origin = _origin(httpx.URL(source.url))
    private = [k for k in headers if k.lower() != "accept"]

    def same_origin_only(request: httpx.Request) -> None:
        """Custom headers (tokens, API keys) never follow a redirect to another origin; httpx drops only Authorization."""
        if _origin(request.url) != origin:
            for k in private:
                request.headers.pop(k, None)

    with httpx.Client(headers=headers, timeout=source.timeout_s, follow_redirects=True,
                      event_hooks={"request": [same_origin_only]}) as client:
        get = _Getter(client, source, headers, params)
        style = source.pagination.style
        if style == "none":
            yield _records(get({}, "the request"), source, get.where)
        elif style == "page":
            yield from _page_pages(get, source)
        else:
            yield from _cursor_pages(get, source)


def _from_env(names: dict[str, str], field: str) -> dict[str, str]:
    """Each key with the value of the environment variable it names (read here, never stored)."""
    missing = [v for v in names.values() if not os.environ.get(v)]
    if missing:
        raise SpecError(f"data.source.{field}: the environment variable(s) {missing} are not set (or empty); export "
                        f"them before the run, or remove them from {field}")
    return {k: os.environ[v] for k, v in names.items()}


def request_params(source: HttpSource) -> dict[str, str]:
    """``source.params`` plus those whose values come from the environment (``params_env``)."""
    return {**source.params, **_from_env(source.params_env, "params_env")}


def request_headers(source: HttpSource) -> dict[str, str]:
    """``source.headers``, those from the environment (``headers_env``), and ``Authorization: Bearer`` from ``token_env``."""
    headers = {"Accept": "application/json", **source.headers, **_from_env(source.headers_env, "headers_env")}
    if source.token_env:
        token = os.environ.get(source.token_env)
        if not token:
            raise SpecError(
                f"data.source.token_env: the environment variable {source.token_env!r} is not set (or empty); "
                "export it with the API token before the run, or remove token_env"
            )
        headers["Authorization"] = f"Bearer {token}"
    return headers


def read_http(source: HttpSource, pages: Store | None = None) -> ray.data.Dataset:
    """The API's records as a ``ray.data.Dataset``, fetched in one Ray task and read from its page files.

    The token is read here, on the driver (a missing variable fails before any
    task), and travels to the task with the request headers.

    Args:
        source: the ``data.source`` section.
        pages: the folder the task writes one parquet file per page into; every Ray node must
            be able to read it (the ingest stage passes a folder of its artifact, in the
            pipeline's storage, and deletes it once the splits are written). Default: a new
            temporary folder on this machine, enough for a one-machine Ray; the caller removes it.
    """
    import ray
    import ray.data

    if pages is None:
        pages = Store(tempfile.mkdtemp(prefix="raypipe-http-"))
    headers, params = request_headers(source), request_params(source)
    task = ray.remote(max_retries=0)(_fetch_pages)
    try:
        fetched = ray.get(task.remote(source, pages, headers, params))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, (HttpSourceError, SpecError)):
            raise e.cause from None
        raise
    log.info("http source: %d records in %d pages from %s", fetched.rows, len(fetched.files), public_url(source.url))
    # Pages may lack columns or hold narrower types than later pages: each file is read as the unified schema.
    return ray.data.read_parquet(fetched.files, filesystem=pages.fs, schema=fetched.schema)


class _Fetched(NamedTuple):
    """What the fetching task returns: a few numbers and names, never the records."""

    rows: int
    files: list[str]  # the page files' paths in the pages store's filesystem, in page order
    schema: pa.Schema  # every page's columns, types promoted as ``pa.concat_tables(promote_options="permissive")``


def _fetch_pages(source: HttpSource, pages: Store, headers: dict[str, str],
                 params: dict[str, str] | None = None) -> _Fetched:
    """Fetch every page and write each as ``page-NNNNN.parquet`` in ``pages`` before fetching the next."""
    files: list[str] = []
    schema: pa.Schema | None = None
    rows = 0
    for records in iter_pages(source, headers, params):  # not enumerate(): its tuple would keep the last page
        table = _page_table(records, source)
        del records
        schema = _unify(schema, table.schema, source)
        files.append(_write_page(pages, len(files) + 1, table))
        rows += table.num_rows
        del table
    if schema is None:
        raise HttpSourceError(
            f"{public_url(source.url)} returned no records at {_path_name(source.records)}; "
            "check data.source.url, params and records"
        )
    return _Fetched(rows, files, schema)


def _page_table(records: list[dict[str, Any]], source: HttpSource) -> pa.Table:
    """One page's records as an arrow table; a clear error when a field mixes types within it."""
    try:
        return table_from_records(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise HttpSourceError(
            f"{public_url(source.url)}: a field mixes types within a page ({e}); "
            "fix the API's output or pick other records"
        ) from None


def _unify(schema: pa.Schema | None, page: pa.Schema, source: HttpSource) -> pa.Schema:
    """The columns of the pages so far and of this one (int and float give float, null gives way to any type)."""
    if schema is None:
        return page
    try:
        return pa.unify_schemas([schema, page], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise HttpSourceError(
            f"{public_url(source.url)}: pages disagree on the type of a field ({e}); "
            "fix the API's output or pick other records"
        ) from None


def _write_page(pages: Store, n: int, table: pa.Table) -> str:
    """Write page ``n`` as ``page-NNNNN.parquet``; its path.

    As the store writes files: a temporary name, then a move into place, so the folder never
    holds half a page. Not fsynced (``Store.write_bytes`` is): the pages are scratch that a
    crashed run fetches again, and a sync per page would slow a 10,000-page API down.
    """
    path = pages.path(f"page-{n:05d}.parquet")
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with pages.fs.open_output_stream(tmp) as f:
        pq.write_table(table, f, **parquet_options(table.schema))
    pages.fs.move(tmp, path)
    return path


# --- pagination ----------------------------------------------------------------------
def _page_pages(get: _Getter, source: HttpSource) -> Iterator[list[dict[str, Any]]]:
    """Pages until an empty one, or until ``has_more_field`` says no more.

    A short page is not the end (an API may cap ``per_page`` lower than asked). A page
    that repeats the previous one is an error: an API that clamps out-of-range page
    numbers to its last page would otherwise be read as endless duplicates.
    """
    p = source.pagination
    page, previous = p.start_page, None
    for _ in range(p.max_pages):
        params: dict[str, Any] = {p.page_param: page}
        if p.size_param:
            params[p.size_param] = p.page_size
        body = get(params, f"page {page}")
        records = _records(body, source, get.where)
        more = _has_more(body, source, get.where) if p.has_more_field else None
        del body
        if not records:
            return
        digest = hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).digest()
        if digest == previous:
            raise HttpSourceError(
                f"{get.where}: page {page} repeats page {page - 1}: the API ignores {p.page_param!r} (not paginated: "
                f"set data.source.pagination.style: none) or answers its last page for any page past the end (set "
                f"data.source.pagination.has_more_field to its end marker)")
        previous = digest
        yield records
        del records  # not held while the next page is fetched
        if more is False:
            return
        page += 1
    _too_many_pages(source)


def _has_more(body: Any, source: HttpSource, where: str) -> bool:
    """The API's own 'more pages follow' flag, at ``pagination.has_more_field``."""
    path = source.pagination.has_more_field or ""
    flag = _dig(body, path)
    if flag is _MISSING or not isinstance(flag, bool):
        found = "is missing" if flag is _MISSING else f"is {type(flag).__name__}, not true/false"
        raise HttpSourceError(f"{where}: pagination.has_more_field {path!r} {found} in the response "
                              f"(top-level keys: {_keys(body)}); fix data.source.pagination.has_more_field")
    return flag


def _cursor_pages(get: _Getter, source: HttpSource) -> Iterator[list[dict[str, Any]]]:
    p = source.pagination
    cursor: Any = None
    for n in range(1, p.max_pages + 1):
        params = {} if n == 1 else {p.cursor_param: cursor}
        body = get(params, f"request {n}")
        records, cursor = _records(body, source, get.where), _dig(body, p.cursor_field)
        if cursor is _MISSING or isinstance(cursor, (dict, list, bool)):
            # A wrong path would otherwise read as "no next page": a quiet stop after the first page.
            found = "is missing" if cursor is _MISSING else f"holds a {type(cursor).__name__}, not a cursor"
            raise HttpSourceError(f"{get.where}: pagination.cursor_field {p.cursor_field!r} {found} in response {n} "
                                  f"(top-level keys: {_keys(body)}); set data.source.pagination.cursor_field to the "
                                  "dotted path of the next cursor (null on the last page)")
        del body
        if records:
            yield records
        del records  # not held while the next page is fetched
        if cursor in (None, ""):
            return
        if n > 1 and cursor == params[p.cursor_param]:
            raise HttpSourceError(f"{get.where}: response {n} gives back the cursor it was asked with "
                                  f"({p.cursor_field!r}); the pages would repeat forever: check cursor_param "
                                  f"{p.cursor_param!r}")
    _too_many_pages(source)


def _too_many_pages(source: HttpSource) -> None:
    raise HttpSourceError(
        f"{public_url(source.url)}: still more pages after pagination.max_pages = {source.pagination.max_pages}; "
        "raise data.source.pagination.max_pages, or check that the API's pagination settings match "
        "(page_param, size_param, cursor_field)"
    )


# --- requests ----------------------------------------------------------------------
class _LoggedRetry(Retry):
    """httpx-retries' ``Retry``, with a warning before each wait."""

    def sleep(self, response: httpx.Response | Exception) -> None:
        why = f"HTTP {response.status_code}" if isinstance(response, httpx.Response) else type(response).__name__
        log.warning("http source: %s; retry %d of %d", why, self.attempts_made, self.total)
        super().sleep(response)


class _Getter:
    """GET the source's URL with extra params; retries transient failures; returns parsed JSON.

    Bodies are streamed: a success's body is refused once it passes ``max_response_mb`` (at
    once when its ``Content-Length`` says it will), an error's body is read only as far as
    the error message quotes it.
    """

    def __init__(self, client: httpx.Client, source: HttpSource, headers: dict[str, str],
                 params: dict[str, str]) -> None:
        self.client, self.source, self.params = client, source, params
        self.where = public_url(source.url)
        self.limit = int(source.max_response_mb * 2**20)
        # Retried: timeouts, network and protocol errors (in the headers or the body), 429 and 5xx; after the
        # server's Retry-After, else backoff_s x 1, 2, 4 ... (httpx-retries waits backoff_factor x 2 ** retry);
        # each wait at most 30 s.
        self.retry = _LoggedRetry(total=source.retries, backoff_factor=source.backoff_s / 2, backoff_jitter=0.0,
                                  max_backoff_wait=MAX_RETRY_AFTER_S, status_forcelist=[429, *range(500, 600)])
        # Never echoed in an error: the token, header values, longer param values (API keys).
        values = [v.removeprefix("Bearer ") for k, v in headers.items() if k.lower() != "accept"]
        values += params.values()
        self.secrets = sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)

    def __call__(self, extra: dict[str, Any], what: str) -> Any:
        params = {**self.params, **{k: str(v) for k, v in extra.items()}}
        request = self.client.build_request("GET", self.source.url, params=params)
        try:
            response, body, attempts = self._send(request, what)
        except httpx.TransportError as e:
            attempts = self.retry.total + 1 if self.retry.is_retryable_exception(e) else 1
            raise transient(HttpSourceError(
                f"GET {self.where} ({what}) failed after {attempts} attempt(s): "
                f"{type(e).__name__}: {self._clean(str(e))}; check data.source.url and that the server "
                "is reachable, or raise data.source.retries / timeout_s"
            )) from None
        if not response.is_success:
            raise self._status_error(response, body, what, attempts)
        return self._json(response, body, what)

    def _send(self, request: httpx.Request, what: str) -> tuple[httpx.Response, bytearray, int]:
        """(the final response, its body, attempts): httpx-retries' loop, with each body read inside it.

        ``httpx_retries.retry_request`` reads the whole body before anyone can look at it, and
        has no streaming form; this is its loop (the same ``Retry`` decides what is retried and
        how long to wait), with :meth:`_read` in place of a buffered send.
        """
        retry = self.retry
        while True:
            try:
                response, body = self._read(request, what)
            except httpx.TransportError as e:
                if retry.is_exhausted() or not retry.is_retryable_exception(e):
                    raise
                failed: httpx.Response | Exception = e
            else:
                if retry.is_exhausted() or not retry.is_retryable_status_code(response.status_code):
                    return response, body, retry.attempts_made + 1
                failed = response
            retry = retry.increment()
            retry.sleep(failed)

    def _read(self, request: httpx.Request, what: str) -> tuple[httpx.Response, bytearray]:
        """Send ``request`` and stream its body: a success's up to the limit, an error's start; closed after."""
        response = self.client.send(request, stream=True)
        try:
            if not response.is_success:
                return response, _read_at_most(response, _ERROR_BODY_BYTES)
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.limit:
                raise self._too_large(what, f"{int(declared):,} bytes (its Content-Length)")
            body = _read_at_most(response, self.limit + 1)
            if len(body) > self.limit:
                raise self._too_large(what, f"more than {self.limit:,} bytes (reading stopped there)")
            return response, body
        finally:
            response.close()  # a body not read to its end closes the connection

    def _too_large(self, what: str, size: str) -> HttpSourceError:
        return HttpSourceError(f"GET {self.where} ({what}) returned {size}, over "
                               f"data.source.max_response_mb={self.source.max_response_mb:g}; ask for smaller pages "
                               "(pagination.page_size) or raise the limit")

    def _status_error(self, response: httpx.Response, body: bytearray, what: str, attempts: int) -> HttpSourceError:
        code = response.status_code
        text = self._clean(_text(response, body))[:_BODY_CHARS]
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        error = HttpSourceError(
            f"GET {self.where} ({what}) returned HTTP {code} {response.reason_phrase}{tries}; "
            f"body: {text!r}; {_fix(code)}"
        )
        return transient(error) if code == 429 or code >= 500 else error

    def _json(self, response: httpx.Response, body: bytearray, what: str) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            kind = response.headers.get("Content-Type", "no content type")
            raise HttpSourceError(
                f"GET {self.where} ({what}) did not return JSON ({kind}); body starts "
                f"{self._clean(_text(response, body[:_ERROR_BODY_BYTES]))[:_BODY_CHARS]!r}; "
                "point data.source.url at the JSON API"
            ) from None

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _read_at_most(response: httpx.Response, limit: int) -> bytearray:
    """The start of a streamed response's decoded body: at most the chunk that passes ``limit`` bytes."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return body


def _text(response: httpx.Response, body: bytes | bytearray) -> str:
    """``body`` as text, in the response's charset (UTF-8 by default); undecodable bytes replaced."""
    return body.decode(response.encoding or "utf-8", errors="replace")


def _fix(code: int) -> str:
    if code in (401, 403):
        return "check the token (data.source.token_env) or data.source.headers"
    if code == 404:
        return "check data.source.url (and the pagination settings)"
    if code == 429:
        return "the API is rate-limiting: raise data.source.retries or backoff_s"
    if code >= 500:
        return "the server failed: try again later or raise data.source.retries"
    return "check data.source.url, params and headers"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def public_url(url: str) -> str:
    """``url`` without its query string, fragment or ``user:password@``."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# --- records -----------------------------------------------------------------------
_MISSING = object()


def _dig(value: Any, path: str) -> Any:
    """The value at a dotted path ('' = the value itself), or ``_MISSING``."""
    for key in path.split(".") if path else ():
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _keys(body: Any) -> str:
    return str(sorted(body)[:20]) if isinstance(body, dict) else type(body).__name__


def _path_name(path: str) -> str:
    return f"records {path!r}" if path else "the top level (records: '')"


def _records(body: Any, source: HttpSource, where: str) -> list[dict[str, Any]]:
    """The list of flat records at ``source.records``; a clear error otherwise."""
    records = _dig(body, source.records)
    if records is _MISSING:
        keys = sorted(body)[:20] if isinstance(body, dict) else type(body).__name__
        raise HttpSourceError(
            f"{where}: no {_path_name(source.records)} in the response (found: {keys}); "
            "set data.source.records to the dotted path of the list of records"
        )
    if not isinstance(records, list):
        raise HttpSourceError(
            f"{where}: {_path_name(source.records)} is a {type(records).__name__}, not a list; "
            "set data.source.records to the dotted path of the list of records"
        )
    for r in records:
        _check_flat(r, source, where)
    return records


def _check_flat(record: Any, source: HttpSource, where: str) -> None:
    if not isinstance(record, dict):
        raise HttpSourceError(
            f"{where}: {_path_name(source.records)} holds a {type(record).__name__}, not objects; "
            "set data.source.records to a list of objects"
        )
    for key, value in record.items():
        if isinstance(value, dict):
            raise HttpSourceError(
                f"{where}: field {key!r} of a record is a nested object; records must be flat: flatten the "
                f"API's output, or set data.source.records to a deeper list"
            )
