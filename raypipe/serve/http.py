"""The HTTP layer of a replica: FastAPI routes that refuse bad input with a 4xx and a reason.

``POST /predict`` reads the raw body and parses it with pydantic-core against the
request model (one row object, or a list of them) in one pass: no intermediate Python
JSON tree, a depth limit that turns a 100,000-level nested array into a 400 instead of a
``RecursionError``, and error locations that name the row and the field. Inputs are
never echoed back in errors (they may be huge, or secret).
"""

import asyncio
import time
from typing import Any

from pydantic import ValidationError

JSON_TYPES = ("application/json", "application/x-ndjson", "text/json")
MAX_ERRORS = 10


def _problem(status: int, reason: str, detail: Any = None, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    body: dict[str, Any] = {"error": reason}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


def _errors(e: ValidationError) -> list[dict[str, Any]]:
    out = []
    for err in e.errors(include_input=False, include_url=False, include_context=False)[:MAX_ERRORS]:
        out.append({"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]})
    return out


def build_fastapi(server: Any) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title=f"raypipe: {server.pipeline}")
    rejected = server.metrics.rejected

    def openapi() -> dict[str, Any]:
        """The schema of the version being served (a promotion may change it): built on each call."""
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=app.title, version=str(server.routing.champion.version), routes=app.routes)
        row = server.routing.champion.row_model.model_json_schema()
        doc["paths"]["/predict"]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"oneOf": [row, {"type": "array", "items": row}]}}}}
        return doc

    app.openapi = openapi  # type: ignore[method-assign]

    def refuse(status: int, reason: str, tag: str, detail: Any = None, headers: dict[str, str] | None = None) -> Any:
        rejected.inc(tags={"reason": tag})
        return _problem(status, reason, detail, headers)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        """Predict one row (a JSON object) or many (a list of objects)."""
        if not server.authorised(request.headers):
            return refuse(401, "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                          "auth", headers={"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > server.max_body_bytes):
            return refuse(413, f"request body over {server.max_body_bytes} bytes (deploy.max_body_bytes)", "too_large")
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES:
            return refuse(415, f"content type {ctype!r} is not accepted; send application/json", "content_type")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > server.max_body_bytes:
                return refuse(413, f"request body over {server.max_body_bytes} bytes (deploy.max_body_bytes)", "too_large")
        if not body.strip():
            return refuse(400, "empty body: send one row as a JSON object, or a list of them", "empty")
        routing = server.routing
        raw, champion = bytes(body), routing.champion
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
            return JSONResponse({"version": champion.version, "predictions": []})
        try:
            async with asyncio.timeout(server.request_timeout_s):
                version, answers = await server.predict_batch((server.to_canary(), rows))
        except TimeoutError:
            return refuse(408, f"no answer within {server.request_timeout_s} s (deploy.request_timeout_s); retry later",
                          "timeout")
        if many:
            return JSONResponse({"version": version, "predictions": answers})
        return JSONResponse({"version": version, **answers[0]})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        r = server.routing
        return {"status": "ok" if r else "loading", "version": r.champion.version if r else None,
                "uptime_s": round(time.time() - server.started, 1)}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        r = server.routing
        out = dict(r.champion.metadata)
        if r.challenger is not None:
            out["challenger"] = {"version": r.challenger.version, "canary_percent": r.canary_percent,
                                 "shadow": r.shadow}
        return out

    return app
