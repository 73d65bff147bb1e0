"""Spec conformance: check every request and response against the vendor's OpenAPI document.

Linode (one 3.6 MB file) and DigitalOcean (a root file plus ~1,500 split files) are loaded once
per process and cached here, because parsing them is the slow part (~1.2 s and ~0.3 s); each
check afterwards takes milliseconds.

The published specs have a few bugs that the real APIs do not have (a request the real API
accepts fails the spec). Each is patched in ``_linode_errata`` or tolerated in the DigitalOcean
simulator, with a comment saying why, so a violation reported here is a real drift.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LINODE_SPEC = "linode/openapi-v4.189.0.yaml"
DIGITALOCEAN_SPEC = "digitalocean/specification/DigitalOcean-public.v2.yaml"
SPEC_FILES = {"linode": LINODE_SPEC, "digitalocean": DIGITALOCEAN_SPEC}
SPEC_HOSTS = {"linode": "https://api.linode.com", "digitalocean": "https://api.digitalocean.com"}

_REPO = Path(__file__).resolve().parents[2]


def specs_dir() -> Path:
    """Where the specs live: $MAIDER_SPECS_DIR, else <repo>/../shared/specs (may not exist)."""
    env = os.environ.get("MAIDER_SPECS_DIR")
    return Path(env) if env else _REPO.parent / "shared" / "specs"


def spec_path(vendor: str, base: Path | None = None) -> Path | None:
    """The vendor's spec file, or None when it is not there (callers skip or fail)."""
    rel = SPEC_FILES.get(vendor)
    if rel is None:
        return None
    path = (base or specs_dir()) / rel
    return path if path.is_file() else None


def missing_spec_reason(vendor: str, base: Path | None = None) -> str | None:
    """Why the vendor's exchanges cannot be checked against its spec (None: they can)."""
    if spec_path(vendor, base) is None:
        where = (base or specs_dir()) / SPEC_FILES[vendor]
        return f"{vendor} OpenAPI spec not found at {where} (set MAIDER_SPECS_DIR to the shared/specs folder)"
    if importlib.util.find_spec("openapi_core") is None:
        return "openapi-core is not installed (pip install openapi-core), so specs cannot be checked"
    return None


# ------------------------------------------------------------------------------------------
# Errata: bugs in the published specs that the real APIs do not have
# ------------------------------------------------------------------------------------------


def _hoist_allof_additional_properties(node: Any) -> None:
    """Fix ``allOf: [{additionalProperties: false, properties: A}, {properties: B}]``.

    JSON Schema evaluates each allOf member alone, so the first member rejects every property
    of B: the Linode spec thereby forbids ``type``/``region`` on POST /linode/instances and
    ``data`` on GET /regions/availability, which the real API requires/returns. The intent is
    "A ∪ B and nothing else", so the strictness moves to the parent with the union of names.
    """
    if isinstance(node, list):
        for item in node:
            _hoist_allof_additional_properties(item)
        return
    if not isinstance(node, dict):
        return
    for value in node.values():
        _hoist_allof_additional_properties(value)
    members = node.get("allOf")
    if not isinstance(members, list):
        return
    closed = [m for m in members if isinstance(m, dict) and m.get("additionalProperties") is False]
    if not closed:
        return
    names: set[str] = set(node.get("properties", {}))
    for m in members:
        if isinstance(m, dict):
            names.update(m.get("properties", {}))
            # The parent may also override one property with a closed partial schema (POST
            # /networking/firewalls: rules = {required: [inbound_policy, …], additionalProperties:
            # false} listing only inbound/outbound); open it to the member's names as well.
            for pname, pschema in m.get("properties", {}).items():
                override = node.get("properties", {}).get(pname)
                if isinstance(override, dict) and override.get("additionalProperties") is False:
                    extra = override.setdefault("properties", {})
                    for inner in (pschema or {}).get("properties", {}):
                        extra.setdefault(inner, {})
    for m in closed:
        del m["additionalProperties"]
    props = node.setdefault("properties", {})
    for name in names:
        props.setdefault(name, {})
    node.setdefault("additionalProperties", False)


def _nullable_enums(node: Any) -> None:
    """OAS 3.0 ``nullable: true`` next to an ``enum`` without null: the validator rejects the
    null the real API sends (Linode: ``backups.schedule.day`` is null until a window is set)."""
    if isinstance(node, list):
        for item in node:
            _nullable_enums(item)
    elif isinstance(node, dict):
        if node.get("nullable") is True and isinstance(node.get("enum"), list) and None not in node["enum"]:
            node["enum"].append(None)
        for value in node.values():
            _nullable_enums(value)


def _linode_errata(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    _hoist_allof_additional_properties(paths)
    _nullable_enums(paths)
    for item in paths.values():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            # Some operations carry servers: [https://api.linode.com/v4], which with the
            # /{apiVersion}/ path prefix would mean /v4/v4/… (a doc-generator artefact).
            op.pop("servers", None)
            # X-Filter is JSON in a header, but is declared with a bare object schema, which
            # OpenAPI reads as "k,v,k,v" simple style: declare it as JSON content instead.
            for param in op.get("parameters", []):
                if param.get("in") == "header" and param.get("name") == "X-Filter" and "schema" in param:
                    param["content"] = {"application/json": {"schema": param.pop("schema")}}
    # POST /networking/firewalls/{id}/devices: the body schema is marked readOnly as a whole
    # (it is reused from the response), which makes every request invalid; the API takes it.
    devices = spec["paths"]["/{apiVersion}/networking/firewalls/{firewallId}/devices"]["post"]
    for member in devices["requestBody"]["content"]["application/json"]["schema"].get("allOf", []):
        member.pop("readOnly", None)
    # Personal access tokens: "Tokens may be created with `null` as their expiry and will never
    # expire" (the field's own description), yet the schema is a non-nullable string.
    _nullable_property(
        [
            spec["paths"]["/{apiVersion}/profile/tokens"],
            spec["paths"]["/{apiVersion}/profile/tokens/{tokenId}"],
        ],
        "expiry",
    )


def _nullable_property(node: Any, name: str) -> None:
    """Mark every property ``name`` under ``node`` nullable (OAS 3.0)."""
    if isinstance(node, list):
        for item in node:
            _nullable_property(item, name)
    elif isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict) and isinstance(props.get(name), dict):
            props[name]["nullable"] = True
        for value in node.values():
            _nullable_property(value, name)


def _linode_datetime(value: Any) -> bool:
    """Linode sends naive UTC timestamps ("2026-11-25T00:00:00", which linode_api4 parses with
    "%Y-%m-%dT%H:%M:%S"); the spec says RFC 3339 date-time, which demands an offset."""
    if not isinstance(value, str):
        return True
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------
# Loading (cached per process)
# ------------------------------------------------------------------------------------------

_load_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_linode(path: str) -> Any:
    import yaml
    from openapi_core import Config, OpenAPI

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 1 s instead of 10 s
    with open(path, "rb") as fh:
        spec = yaml.load(fh, Loader=loader)
    _linode_errata(spec)
    config = Config(spec_validator_cls=None, extra_format_validators={"date-time": _linode_datetime})
    return OpenAPI.from_dict(spec, config=config)


def _digitalocean_errata(name: str, doc: Any) -> Any:
    """Patch one split file of the DigitalOcean spec as it is loaded."""
    if name == "region_slug.yml" and isinstance(doc, dict) and "atl1" not in doc.get("enum", ["atl1"]):
        # The slug enum predates Atlanta; the real API lists atl1 (a GPU region, notes §4.2)
        # in images' and sizes' region lists.
        doc["enum"] = [*doc["enum"], "atl1"]
    if name == "droplet.yml" and isinstance(doc, dict):
        # `- off` in the droplet status enum is the boolean false to a YAML 1.1 loader; the API
        # sends the string "off" for a powered-off droplet (the description says so).
        status = (doc.get("properties") or {}).get("status")
        if isinstance(status, dict) and False in status.get("enum", []):
            status["enum"] = ["off" if v is False else v for v in status["enum"]]
    return doc


class _LocalYamlHandler:
    """Resolves the split files' relative $refs from disk only (never the network), parsing
    each file once (libyaml) and applying the errata."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, uri: str) -> Any:
        from urllib.parse import unquote, urlsplit

        import yaml

        parts = urlsplit(uri)
        if parts.scheme != "file":
            raise ValueError(f"refusing to resolve a non-local $ref: {uri}")
        path = unquote(parts.path)
        with self._lock:
            if path not in self._cache:
                loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
                with open(path, "rb") as fh:
                    doc = yaml.load(fh, Loader=loader)
                self._cache[path] = _digitalocean_errata(Path(path).name, doc)
            return self._cache[path]


@functools.lru_cache(maxsize=4)
def _load_digitalocean(path: str) -> Any:
    from jsonschema_path import SchemaPath
    from openapi_core import Config, OpenAPI

    handler = _LocalYamlHandler()
    root = Path(path).resolve()
    base_uri = root.as_uri()
    spec = SchemaPath.from_dict(
        handler(base_uri), base_uri=base_uri, handlers={"file": handler, "<all_urls>": handler}
    )
    # Skipping openapi-core's spec self-check (several seconds) is safe: the spec is fixed.
    return OpenAPI(spec, config=Config(spec_validator_cls=None))


def load_openapi(vendor: str, base: Path | None = None) -> Any:
    path = spec_path(vendor, base)
    if path is None:
        raise FileNotFoundError(missing_spec_reason(vendor, base))
    with _load_lock:
        if vendor == "linode":
            return _load_linode(str(path))
        return _load_digitalocean(str(path))


# ------------------------------------------------------------------------------------------
# Checking one exchange
# ------------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    lines = [f"{type(exc).__name__}: {str(exc)[:300]}"]
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        for se in getattr(cur, "schema_errors", ()) or ():
            where = "/".join(str(p) for p in getattr(se, "absolute_path", ())) or "<root>"
            lines.append(f"  at {where}: {str(getattr(se, 'message', se))[:300]}")
            # oneOf/anyOf failures only say "not valid under any of the given schemas": show
            # why each branch failed (e.g. "'size' is a required property").
            for sub in list(getattr(se, "context", None) or ())[:6]:
                sub_where = "/".join(str(p) for p in sub.absolute_path) or "<root>"
                lines.append(f"    - at {sub_where}: {sub.message[:200]}")
        cur = cur.__cause__
    return "\n".join(lines)


class OpenAPIChecker:
    """Validates one vendor's exchanges; returns readable error strings (empty when valid)."""

    def __init__(self, vendor: str, base: Path | None = None) -> None:
        self.vendor = vendor
        self.api = load_openapi(vendor, base)
        self.host = SPEC_HOSTS[vendor]
        self._lock = threading.Lock()  # openapi-core's caches are not documented as thread-safe

    def _request(
        self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> Any:
        from openapi_core.testing import MockRequest

        ctype = headers.get("content-type", "application/json").split(";")[0].strip() or "application/json"
        return MockRequest(
            self.host,
            method.lower(),
            path,
            args={k: list(v) for k, v in query.items()},
            headers=dict(headers),
            data=body or None,
            content_type=ctype,
        )

    def check_request(
        self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> list[str]:
        from openapi_core.validation.request.exceptions import SecurityValidationError

        req = self._request(method, path, query, headers, body)
        with self._lock:
            errors = list(self.api.iter_request_errors(req))
        # Auth is the simulator's job (it answers the vendor's 401); the spec's security
        # schemes would only duplicate that.
        return [_describe(e) for e in errors if not isinstance(e, SecurityValidationError)]

    def check_response(
        self,
        method: str,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
        status: int,
        response_headers: Mapping[str, str],
        response_body: bytes,
    ) -> list[str]:
        from openapi_core.testing import MockResponse

        req = self._request(method, path, query, headers, body)
        ctype = response_headers.get("content-type", "application/json").split(";")[0].strip()
        resp = MockResponse(
            response_body, status_code=status, headers=dict(response_headers), content_type=ctype
        )
        with self._lock:
            errors = list(self.api.iter_response_errors(req, resp))
        return [_describe(e) for e in errors]


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
