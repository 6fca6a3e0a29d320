"""The HTTP layer of a replica: routes that refuse bad input with a 4xx and a reason.

``POST /predict`` is answered straight from ASGI messages (:func:`fast_predict`); FastAPI
serves the other routes and documents /predict in the OpenAPI schema.

``POST /predict`` reads the raw body and parses it with pydantic-core against the
request model (one row object, or a list of them) in one pass: no intermediate Python
JSON tree, a depth limit that turns a 100,000-level nested array into a 400 instead of a
``RecursionError``, and error locations that name the row and the field. Inputs are
never echoed back in errors (they may be huge, or secret).
"""

import asyncio
import json
import re
import time
from typing import Any

from pydantic import ValidationError

from raypipe.predlog import new_request_id

JSON_TYPES = ("application/json", "application/x-ndjson", "text/json")
NO_KEY = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
PUBLIC = ("/healthz",)  # with deploy.auth, every other route (/metadata: lineage; /docs, /openapi.json) needs the key
MAX_ERRORS = 10
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
BAD_REQUEST_ID = "X-Request-ID must be 1 to 128 characters of A-Z a-z 0-9 . _ : - (or leave it out: one is made)"


def _errors(e: ValidationError) -> list[dict[str, Any]]:
    out = []
    for err in e.errors(include_input=False, include_url=False, include_context=False)[:MAX_ERRORS]:
        out.append({"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]})
    return out


Answer = tuple[int, dict[str, Any], "dict[str, str] | None"]


def _refuse(server: Any, status: int, reason: str, tag: str, detail: Any = None,
            extra: dict[str, str] | None = None) -> Answer:
    server.metrics.rejected.inc(tags={"reason": tag})
    return status, {"error": reason, **({"detail": detail} if detail is not None else {})}, extra


async def read_body(server: Any, headers: Any, chunks: Any, what: str) -> bytes | Answer:
    """The checked body of a JSON POST, or the refusal: API key 401, size 413 (declared, then
    streamed), content type 415, a body not received within the time limit 408, empty 400."""
    def refuse(status: int, reason: str, tag: str, extra: dict[str, str] | None = None) -> Answer:
        return _refuse(server, status, reason, tag, extra=extra)

    if not server.authorised(headers):
        return refuse(401, NO_KEY, "auth", extra={"WWW-Authenticate": "Bearer"})
    too_large = f"request body over {server.max_body_bytes} bytes (deploy.max_body_bytes)"
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > server.max_body_bytes):
        return refuse(413, too_large, "too_large")
    ctype = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        return refuse(415, f"content type {ctype!r} is not accepted; send application/json", "content_type")
    body = bytearray()
    try:
        async with asyncio.timeout(server.request_timeout_s):  # a slow body holds no slot past the time limit
            async for chunk in chunks:
                body += chunk
                if len(body) > server.max_body_bytes:
                    return refuse(413, too_large, "too_large")
    except TimeoutError:
        return refuse(408, f"request body not received within {server.request_timeout_s} s "
                      "(deploy.request_timeout_s); send it at once", "slow_body")
    if not body.strip():
        return refuse(400, f"empty body: send {what}", "empty")
    return bytes(body)


async def handle_predict(server: Any, headers: Any, chunks: Any) -> Answer:
    """``POST /predict`` without a web framework: (status, JSON body, extra headers).

    ``headers`` maps lower-case names to values; ``chunks`` yields the body's bytes. Refusals,
    in order: :func:`read_body`'s, a malformed ``X-Request-ID`` 400, then one pydantic-core
    pass (bad JSON or nesting 400, schema 422), time-out 408.

    Every answer carries the request id in the body's ``request_id``: Serve's own (its
    request-id middleware keeps the client's ``X-Request-ID`` or makes a UUID, and returns
    it in the ``X-Request-ID`` response header), so the log, Serve's logs and the client
    share one id. A list body's answers each carry ``<request id>:<index>``, the id its row
    has in the prediction log and the one ``/feedback`` takes for it.
    """
    def refuse(status: int, reason: str, tag: str, detail: Any = None) -> Answer:
        return _refuse(server, status, reason, tag, detail)

    got = await read_body(server, headers, chunks, "one row as a JSON object, or a list of them")
    if not isinstance(got, bytes):
        return got
    rid = headers.get("x-request-id")
    headers_out = None
    if rid is None:  # outside Serve (its middleware always sets one)
        rid = new_request_id()
        headers_out = {"X-Request-ID": rid}
    elif not REQUEST_ID.fullmatch(rid):
        return refuse(400, BAD_REQUEST_ID, "request_id")
    raw, champion = got, server.routing.champion
    if champion.rows is None:
        return refuse(404, 'the served version is a policy: POST /act with {"observation": [...]} or '
                      '{"observations": [[...], ...]}', "policy")
    many = raw.lstrip()[:1] == b"["  # a list of rows, else one row object
    try:
        parsed = champion.rows.validate_json(raw) if many else champion.row_model.model_validate_json(raw)
    except ValidationError as e:
        errors = _errors(e)
        if any(err["type"].startswith("json_") or err["type"] == "recursion_loop" for err in errors):
            return refuse(400, "the body is not valid JSON (or is nested too deeply)", "bad_json", errors)
        return refuse(422, "the body does not match the request schema", "schema", errors)
    rows = [r.model_dump() for r in parsed] if many else [parsed.model_dump()]
    if not rows:
        return 200, {"version": champion.version, "request_id": rid, "predictions": []}, headers_out
    try:
        async with asyncio.timeout(server.request_timeout_s):
            version, answers = await server.predict_batch(
                (server.to_canary(), rows, rid if server.sampled() else None, many))
    except TimeoutError:
        return refuse(408, f"no answer within {server.request_timeout_s} s (deploy.request_timeout_s); retry later",
                      "timeout")
    if many:
        return 200, {"version": version, "request_id": rid,
                     "predictions": [{"request_id": f"{rid}:{i}", **a} for i, a in enumerate(answers)]}, headers_out
    return 200, {"version": version, "request_id": rid, **answers[0]}, headers_out


async def handle_act(server: Any, headers: Any, chunks: Any) -> Answer:
    """``POST /act`` (a policy's endpoint): ``{"observation": ...}`` or ``{"observations": [...]}`` → actions.

    The same refusals as :func:`handle_predict`, then the body parsed against the observation space's
    model (:mod:`raypipe.serve.act`: bad JSON 400; wrong shape, text, NaN 422) and its bounds (422 naming
    the value and the bounds). Answers are batched, canaried and shadowed like predictions.
    """
    import numpy as np

    from raypipe.serve.act import observations

    def refuse(status: int, reason: str, tag: str, detail: Any = None) -> Answer:
        return _refuse(server, status, reason, tag, detail)

    champion = server.routing.champion
    if champion.rows is not None:
        return refuse(404, "the served version is not a policy: POST /predict with rows", "not_a_policy")
    got = await read_body(server, headers, chunks, '{"observation": [...]} or {"observations": [[...], ...]}')
    if not isinstance(got, bytes):
        return got
    rid = headers.get("x-request-id")
    headers_out = None
    if rid is None:
        rid = new_request_id()
        headers_out = {"X-Request-ID": rid}
    elif not REQUEST_ID.fullmatch(rid):
        return refuse(400, BAD_REQUEST_ID, "request_id")
    try:
        parsed = champion.row_model.validate_json(got)
    except ValidationError as e:
        errors = _errors(e)
        if any(err["type"].startswith("json_") or err["type"] == "recursion_loop" for err in errors):
            return refuse(400, "the body is not valid JSON (or is nested too deeply)", "bad_json", errors)
        return refuse(422, "the body does not match the observation space " + _space(champion), "schema", errors)
    obs, many = observations(parsed)
    if not obs:
        return 200, {"version": champion.version, "request_id": rid, "actions": []}, headers_out
    problems = champion.predictor.problems(np.asarray(obs, dtype=np.float64),
                                           "observations" if many else "observation")
    if problems:
        if not many:  # one observation: its index is not part of the body
            for p in problems:
                p["loc"] = [p["loc"][0], *p["loc"][2:]]
        return refuse(422, "an observation is outside the observation space " + _space(champion), "out_of_space",
                      problems)
    try:
        async with asyncio.timeout(server.request_timeout_s):
            version, answers = await server.predict_batch((server.to_canary(), obs, None, many))
    except TimeoutError:
        return refuse(408, f"no answer within {server.request_timeout_s} s (deploy.request_timeout_s); retry later",
                      "timeout")
    if many:
        return 200, {"version": version, "request_id": rid, "actions": answers}, headers_out
    return 200, {"version": version, "request_id": rid, **answers[0]}, headers_out


def _space(loaded: Any) -> str:
    space = loaded.metadata["observation_space"]
    if space["type"] == "discrete":
        return f"(Discrete({space['n']}): one integer state)"
    return f"(Box of shape {space['shape']}, low {space['low']}, high {space['high']}; null: unbounded)"


async def handle_feedback(server: Any, headers: Any, chunks: Any) -> Answer:
    """``POST /feedback``: ``{"request_id": ..., "label": ...}`` or a list of them.

    Refusals: :func:`read_body`'s, bad JSON 400, a body of the wrong shape or a label the
    served version cannot have 422 (naming the item and field), 503 without a prediction
    log. The replica writes its own log buffer first, so its answers are found; ids not in
    the log are counted as unknown in the answer (see :mod:`raypipe.feedback`).
    """
    from raypipe.errors import DataValidationError
    from raypipe.feedback import record_feedback

    if server.routing.champion.rows is None:
        return _refuse(server, 404, "the served version is a policy: it takes observations at /act and has no "
                       "labels to join", "policy")
    if server.log is None:
        return _refuse(server, 503, "the prediction log is off (monitor.log.enabled: false): labels cannot be "
                       "joined to answers", "feedback_off")
    got = await read_body(server, headers, chunks, 'a label as {"request_id": ..., "label": ...}, or a list of them')
    if not isinstance(got, bytes):
        return got
    many = got.lstrip()[:1] == b"["  # a list of labels, else one label object
    try:
        items = feedback_items(many).validate_json(got)
    except ValidationError as e:
        errors = _errors(e)
        if any(err["type"].startswith("json_") or err["type"] == "recursion_loop" for err in errors):
            return _refuse(server, 400, "the body is not valid JSON (or is nested too deeply)", "bad_json", errors)
        return _refuse(server, 422, 'send {"request_id": "<id a response returned>", "label": <label>} or a list '
                       "of them", "feedback_schema", errors)
    items = items if many else [items]
    if not items:
        return _refuse(server, 422, "empty list: send at least one label", "feedback_schema")
    champion = server.routing.champion
    predictor = champion.predictor
    try:
        await asyncio.to_thread(server.log.flush)
        report = await asyncio.to_thread(
            record_feedback, server.log.store, server.pipeline, [i.request_id for i in items],
            [i.label for i in items], task=predictor.task, classes=predictor.classes, source="serve")
    except DataValidationError as e:
        return _refuse(server, 422, "a label the served model cannot have", "feedback_label", e.problems)
    return 200, report.to_dict(), None


_FEEDBACK: dict[bool, Any] = {}


def feedback_items(many: bool) -> Any:
    """The body model of ``POST /feedback``: one label object, or a list of them (built once each)."""
    if not _FEEDBACK:
        from typing import Annotated, Union

        from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter

        class Label(BaseModel):
            model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
            request_id: Annotated[StrictStr, Field(min_length=1, max_length=200)]
            label: Union[StrictBool, StrictInt, StrictFloat, Annotated[StrictStr, Field(max_length=10_000)]]

        _FEEDBACK[False] = TypeAdapter(Label)
        _FEEDBACK[True] = TypeAdapter(list[Label])
    return _FEEDBACK[many]


def _json(body: dict[str, Any]) -> bytes:
    """As Starlette's JSONResponse renders it."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


async def fast_predict(server: Any, scope: dict[str, Any], receive: Any, send: Any) -> bool:
    """Answer ``POST /predict`` straight from ASGI messages; False for any other request.

    The same :func:`handle_predict` serves it; FastAPI keeps every other route (/healthz,
    /metadata, /docs, /openapi.json). Its middleware, router and dependency layers were
    ~10 % of a replica's CPU at 32 clients (py-spy).
    """
    path = _path(scope).rstrip("/")
    if scope["type"] != "http" or scope.get("method") != "POST" or path not in FAST:
        return False
    headers = _headers(scope)

    async def chunks() -> Any:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    await _send(send, *await FAST[path](server, headers, chunks()))
    return True


FAST = {"/predict": handle_predict, "/act": handle_act}  # answered straight from ASGI messages


def _path(scope: dict[str, Any]) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


async def _send(send: Any, status: int, body: dict[str, Any], extra: dict[str, str] | None) -> None:
    payload = _json(body)
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": payload})


def build_fastapi(server: Any) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    class App(FastAPI):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if await fast_predict(server, scope, receive, send):
                return
            if scope["type"] == "http" and _path(scope).rstrip("/") not in PUBLIC and not server.authorised(_headers(scope)):
                await _send(send, 401, {"error": NO_KEY}, {"WWW-Authenticate": "Bearer"})
                return
            await super().__call__(scope, receive, send)

    app = App(title=f"raypipe: {server.pipeline}")

    def openapi() -> dict[str, Any]:
        """The schema of the version being served (a promotion may change it): built on each call."""
        from fastapi.openapi.utils import get_openapi

        champion = server.routing.champion
        doc = get_openapi(title=app.title, version=str(champion.version), routes=app.routes)
        if champion.rows is None:  # a policy
            doc["paths"]["/act"]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": champion.row_model.json_schema()}}}
            return doc
        row = champion.row_model.model_json_schema()
        doc["paths"]["/predict"]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"oneOf": [row, {"type": "array", "items": row}]}}}}
        return doc

    app.openapi = openapi  # type: ignore[method-assign]

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        """Predict one row (a JSON object) or many (a list of objects)."""
        status, body, headers = await handle_predict(server, request.headers, request.stream())
        return JSONResponse(body, status_code=status, headers=headers)

    @app.post("/act")
    async def act(request: Request) -> Any:
        """A policy's actions: ``{"observation": [...]}`` or ``{"observations": [[...], ...]}``."""
        status, body, headers = await handle_act(server, request.headers, request.stream())
        return JSONResponse(body, status_code=status, headers=headers)

    @app.post("/feedback")
    async def feedback(request: Request) -> Any:
        """Labels for earlier answers: ``{"request_id": ..., "label": ...}`` or a list (ids as the responses gave them)."""
        status, body, headers = await handle_feedback(server, request.headers, request.stream())
        return JSONResponse(body, status_code=status, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        r = server.routing
        return {"status": "ok" if r else "loading", "version": r.champion.version if r else None,
                "uptime_s": round(time.time() - server.started, 1)}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        r = server.routing
        out = dict(r.champion.metadata)
        out["prediction_log"] = server.log_status()  # this replica's writer: rows buffered, written, dropped, held
        if r.challenger is not None:
            out["challenger"] = {"version": r.challenger.version, "canary_percent": r.canary_percent,
                                 "shadow": r.shadow}
        return out

    return app
