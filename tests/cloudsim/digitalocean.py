"""DigitalOcean API v2 simulator (what python-digitalocean talks to). Base URL: ``http://127.0.0.1:P/v2/``.

Point python-digitalocean at it with ``DIGITALOCEAN_END_POINT=<sim.url>`` (which keeps the
trailing slash): the SDK builds some objects internally without passing ``end_point=``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlencode

from . import catalogs
from .clock import iso
from .core import Reply, Request, SimServer
from .faults import Fault
from .ledger import DO_BILLING, GONE, InstanceRecord

P = "/v2"
NOT_FOUND_MESSAGE = "The resource you were accessing could not be found."
#: Verbatim from many third-party captures (see the report); DO answers 422 when the region is
#: full, even for a size that /v2/sizes lists as available there.
NO_CAPACITY_MESSAGE = "Size is not available in this region."
NAME_RE = re.compile(r"^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$")


#: A token without the scope an endpoint needs: the spec's shared "forbidden" response
#: (specification/shared/responses/forbidden.yml, its example's wording).
FORBIDDEN_MESSAGE = "You do not have permission to perform this action."
#: (method, path regex) → the custom scope it needs: each operation's ``security: bearer_auth``
#: scopes in the spec (e.g. droplets_destroy.yml: droplet:delete).
SCOPE_RULES: tuple[tuple[str, str, str], ...] = (
    ("GET", P + "/account", "account:read"),
    ("GET", P + "/account/keys.*", "ssh_key:read"),
    ("POST", P + "/account/keys", "ssh_key:create"),
    ("GET", P + "/regions", "regions:read"),
    ("GET", P + "/sizes", "sizes:read"),
    ("GET", P + "/firewalls.*", "firewall:read"),
    ("POST", P + "/firewalls", "firewall:create"),
    ("PUT", P + "/firewalls/.*", "firewall:update"),
    ("POST", P + "/firewalls/.*", "firewall:update"),
    ("GET", P + "/droplets.*", "droplet:read"),
    ("POST", P + "/droplets", "droplet:create"),
    ("DELETE", P + "/droplets.*", "droplet:delete"),
    ("GET", P + "/actions/.*", "actions:read"),
)


@dataclass
class ScopedToken:
    """A custom-scoped token the user made in the control panel (the API cannot create one)."""

    token: str
    scopes: frozenset[str]
    expires_at: float | None = None

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


class DigitalOceanSim(SimServer):
    vendor: ClassVar[str] = "digitalocean"
    api_prefix: ClassVar[str] = P + "/"
    ip_network: ClassVar[str] = "127.2.0.0/16"

    def __init__(self, **kw: Any) -> None:
        self.regions = list(catalogs.DO_REGIONS)
        self.sizes = list(catalogs.DO_SIZES)
        self.images = dict(catalogs.DO_IMAGES)
        self.ssh_keys: list[dict[str, Any]] = []
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.actions: dict[int, dict[str, Any]] = {}
        self._next = {"droplet": 500_000_001, "key": 41_000_001, "action": 2_000_000_001}
        #: The spec says GPU droplets are hidden unless type=gpus; whether tag_name alone shows
        #: them is unverified (notes §2.2), so by default it does not (the stricter reading).
        self.tag_name_shows_gpus = False
        #: Custom-scoped tokens accepted besides the main one (``add_token``).
        self.scoped_tokens: dict[str, ScopedToken] = {}
        super().__init__(**kw)

    def add_token(self, token: str, scopes: list[str], *, expires_at: float | None = None) -> ScopedToken:
        """Accept ``token`` with only ``scopes`` (e.g. ["droplet:read", "droplet:delete"])."""
        scoped = ScopedToken(token, frozenset(scopes), expires_at)
        self.scoped_tokens[token] = scoped
        return scoped

    def default_timings(self) -> dict[str, float]:
        return {"provision": 60.0, "delete": 0.0}

    def make_checker(self, *, required: bool) -> Any:
        from .spec import OpenAPIChecker, missing_spec_reason

        if missing_spec_reason("digitalocean") is not None and not required:
            return None  # no spec (or no openapi-core) here: run unchecked
        return OpenAPIChecker("digitalocean")

    def _id(self, kind: str) -> int:
        self._next[kind] += 1
        return self._next[kind] - 1

    # -- routes ----------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", P + "/account", self.get_account),
            ("GET", P + "/regions", self.list_regions),
            ("GET", P + "/sizes", self.list_sizes),
            ("GET", P + "/account/keys", self.list_keys),
            ("POST", P + "/account/keys", self.create_key),
            ("GET", P + r"/account/keys/(?P<key>[^/]+)", self.get_key),
            ("GET", P + "/firewalls", self.list_firewalls),
            ("POST", P + "/firewalls", self.create_firewall),
            ("GET", P + r"/firewalls/(?P<fw>[0-9a-f-]+)", self.get_firewall),
            ("PUT", P + r"/firewalls/(?P<fw>[0-9a-f-]+)", self.update_firewall),
            ("POST", P + r"/firewalls/(?P<fw>[0-9a-f-]+)/droplets", self.firewall_add_droplets),
            ("POST", P + r"/firewalls/(?P<fw>[0-9a-f-]+)/tags", self.firewall_add_tags),
            ("GET", P + "/droplets", self.list_droplets),
            ("POST", P + "/droplets", self.create_droplet),
            ("GET", P + r"/droplets/(?P<id>\d+)", self.get_droplet),
            ("DELETE", P + r"/droplets/(?P<id>\d+)", self.delete_droplet),
            ("GET", P + r"/actions/(?P<action>\d+)", self.get_action),
        ]

    def normalize_path(self, path: str) -> str:
        # python-digitalocean sends /v2/droplets/, links and pydo send /v2/droplets: accept both.
        return path.rstrip("/") if len(path) > 1 else path

    def check_request_body(self, req: Request, body: bytes) -> bytes:
        """python-digitalocean sends ``null`` for every optional field it was not given
        (``vpc_uuid``, ``tags``, ``droplet_ids``); the real API treats null as absent. Drop those
        top-level nulls before the spec check, and note it once in ``tolerated``."""
        data = _maybe_obj(body)
        if not isinstance(data, dict) or not any(v is None for v in data.values()):
            return body
        nulls = sorted(k for k, v in data.items() if v is None)
        note = f"{req.method} {req.path}: null for optional field(s) {', '.join(nulls)}"
        if note not in self.tolerated:
            self.tolerated.append(note)
        from .spec import json_bytes

        return json_bytes({k: v for k, v in data.items() if v is not None})

    # -- vendor shapes ---------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        reset = int(self.clock.now()) + 60
        return {"ratelimit-limit": "5000", "ratelimit-remaining": "4999", "ratelimit-reset": str(reset)}

    def ok(self, status: int, body: Any = None) -> Reply:
        return Reply(status, body, headers=self._headers())

    def error(self, status: int, code: str, message: str, **extra: Any) -> Reply:
        headers = {**self._headers(), **extra.get("headers", {})}
        return Reply(
            status, {"id": code, "message": message, "request_id": self.request_id()}, headers=headers
        )

    @staticmethod
    def _bearer(headers: dict[str, str]) -> str:
        auth = headers.get("authorization", "")
        return auth[7:].strip() if auth.startswith("Bearer ") else ""

    def is_authenticated(self, headers: dict[str, str]) -> bool:
        value = self._bearer(headers)
        if not value:
            return False
        scoped = self.scoped_tokens.get(value)
        if scoped is not None:  # guess: an expired token reads as unknown (401)
            return scoped.active(self.clock.now())
        return self.token is None or value == self.token

    def authorize(self, req: Request) -> Reply | None:
        scoped = self.scoped_tokens.get(self._bearer(req.headers))
        if scoped is None:
            return None  # the main token: full access
        needed = next((sc for m, p, sc in SCOPE_RULES if m == req.method and re.fullmatch(p, req.path)), None)
        if needed is not None and needed in scoped.scopes:
            return None
        return self.error(403, "forbidden", FORBIDDEN_MESSAGE)

    def unauthorized(self) -> Reply:
        return self.error(401, "unauthorized", "Unable to authenticate you")

    def not_found(self, what: str = "", ident: str = "") -> Reply:
        return self.error(404, "not_found", NOT_FOUND_MESSAGE)

    def capacity_error(self, req: Request) -> Reply:
        f = req.fault if req.fault is not None and req.fault.kind == "no_capacity" else None
        status = (f.status if f else None) or 422
        return self.error(status, "unprocessable_entity", (f.message if f else None) or NO_CAPACITY_MESSAGE)

    def rate_limited(self, fault: Fault) -> Reply:
        headers = {"Retry-After": str(fault.retry_after), "ratelimit-remaining": "0"}
        return self.error(
            429, "too_many_requests", fault.message or "API Rate limit exceeded.", headers=headers
        )

    def server_error(self, fault: Fault) -> Reply:
        status = int(fault.status or 500)
        code = {500: "server_error", 502: "bad_gateway", 503: "service_unavailable"}.get(
            status, "server_error"
        )
        return self.error(status, code, fault.message or "Server was unable to give you a response.")

    def instance_id_from_path(self, path: str) -> str | None:
        m = re.fullmatch(P + r"/droplets/(\d+)(/.*)?/?", path)
        return m.group(1) if m else None

    # -- pagination ------------------------------------------------------------------------

    def _page(self, req: Request, key: str, items: list[dict[str, Any]]) -> Reply:
        try:
            page = max(1, int(req.arg("page", "1") or 1))
            per_page = int(req.arg("per_page", "20") or 20)
        except ValueError:
            return self.error(400, "bad_request", "page and per_page must be integers")
        per_page = min(max(per_page, 1), 200)  # the API clamps (guess); the spec check flags it
        total = len(items)
        last = max(1, math.ceil(total / per_page))
        body: dict[str, Any] = {
            key: items[(page - 1) * per_page : page * per_page],
            "links": {},
            "meta": {"total": total},
        }
        pages: dict[str, str] = {}
        base = self.root_url + req.path  # absolute, on the simulator's own host
        extra = [(k, v[-1]) for k, v in req.query.items() if k not in ("page", "per_page")]

        def link(n: int) -> str:
            return base + "?" + urlencode([("page", n), ("per_page", per_page), *extra])

        if page > 1:
            pages["first"] = link(1)
            pages["prev"] = link(page - 1)
        if page < last:
            pages["next"] = link(page + 1)
            pages["last"] = link(last)
        if pages:
            body["links"] = {"pages": pages}
        return self.ok(200, body)

    # -- account, regions, sizes -----------------------------------------------------------

    def get_account(self, req: Request) -> Reply:
        return self.ok(
            200,
            {
                "account": {
                    "droplet_limit": 25,
                    "floating_ip_limit": 3,
                    "volume_limit": 100,
                    "email": "sim@example.com",
                    "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
                    "email_verified": True,
                    "status": "active",
                    "status_message": "",
                    "team": {"uuid": "5df3e3004a17e242b7c20ca6c9fc25b701a47ece", "name": "My Team"},
                }
            },
        )

    def _region_json(self, r: catalogs.DORegion) -> dict[str, Any]:
        sizes = [s.slug for s in self.sizes if r.slug in s.regions and s.available]
        return {
            "slug": r.slug,
            "name": r.name,
            "features": list(r.features),
            "available": True,
            "sizes": sizes,
        }

    def list_regions(self, req: Request) -> Reply:
        return self._page(req, "regions", [self._region_json(r) for r in self.regions])

    def _size_json(self, s: catalogs.DOSize) -> dict[str, Any]:
        out: dict[str, Any] = {
            "slug": s.slug,
            "memory": s.memory_mb,
            "vcpus": s.vcpus,
            "disk": s.disk_gb,
            "transfer": s.transfer_tb,
            "price_monthly": s.monthly,
            "price_hourly": s.hourly,
            "regions": list(s.regions),
            "available": s.available,
            "description": s.description,
            "disk_info": [{"type": "local", "size": {"amount": s.disk_gb, "unit": "gib"}}],
        }
        if s.scratch_gib:
            out["disk_info"].append({"type": "scratch", "size": {"amount": s.scratch_gib, "unit": "gib"}})
        if s.is_gpu:
            out["gpu_info"] = {
                "count": s.gpu_count,
                "model": s.gpu_model,
                "vram": {"amount": s.vram_gib * s.gpu_count, "unit": "gib"},
            }
        return out

    def list_sizes(self, req: Request) -> Reply:
        return self._page(req, "sizes", [self._size_json(s) for s in self.sizes])

    def _size(self, slug: str) -> catalogs.DOSize | None:
        return next((s for s in self.sizes if s.slug == slug), None)

    # -- ssh keys --------------------------------------------------------------------------

    def list_keys(self, req: Request) -> Reply:
        return self._page(req, "ssh_keys", list(self.ssh_keys))

    def get_key(self, req: Request) -> Reply:
        ident = req.params["key"]
        for k in self.ssh_keys:
            if str(k["id"]) == ident or k["fingerprint"] == ident:
                return self.ok(200, {"ssh_key": k})
        return self.not_found()

    def create_key(self, req: Request) -> Reply:
        body = _body(req)
        public_key = str(body.get("public_key") or "").strip()
        fingerprint = _md5_fingerprint(public_key)
        if not body.get("name") or fingerprint is None:
            return self.error(
                422, "unprocessable_entity", "Key invalid, key should be of the format `type key [comment]`"
            )
        if any(k["fingerprint"] == fingerprint for k in self.ssh_keys):
            return self.error(422, "unprocessable_entity", "SSH Key is already in use on your account")
        key = {
            "id": self._id("key"),
            "fingerprint": fingerprint,
            "public_key": public_key,
            "name": str(body["name"]),
        }
        self.ssh_keys.append(key)
        return self.ok(201, {"ssh_key": key})

    # -- firewalls -------------------------------------------------------------------------

    def list_firewalls(self, req: Request) -> Reply:
        return self._page(req, "firewalls", [self._fw_json(f) for f in self.firewalls.values()])

    def get_firewall(self, req: Request) -> Reply:
        fw = self.firewalls.get(req.params["fw"])
        return self.ok(200, {"firewall": self._fw_json(fw)}) if fw else self.not_found()

    def _fw_json(self, fw: dict[str, Any]) -> dict[str, Any]:
        # Applying rules takes a moment on the real API: "waiting" right after a change.
        settled = self.clock.now() >= fw["changed_at"] + 5
        out = {k: v for k, v in fw.items() if k != "changed_at"}
        out["status"] = "succeeded" if settled else "waiting"
        out["pending_changes"] = (
            []
            if settled
            else [{"droplet_id": d, "removing": False, "status": "waiting"} for d in fw["droplet_ids"]]
        )
        return out

    def update_firewall(self, req: Request) -> Reply:
        """PUT replaces the whole firewall: whatever the body omits (droplets, tags) is dropped."""
        fw = self.firewalls.get(req.params["fw"])
        if fw is None:
            return self.not_found()
        body = req.json() or {}
        fw.update(
            name=body["name"],
            inbound_rules=[_clean_rule(r, "sources") for r in body.get("inbound_rules") or []],
            outbound_rules=[_clean_rule(r, "destinations") for r in body.get("outbound_rules") or []],
            droplet_ids=[int(d) for d in body.get("droplet_ids") or []],
            tags=[str(t) for t in body.get("tags") or []],
            changed_at=self.clock.now(),
        )
        return self.ok(200, {"firewall": self._fw_json(fw)})

    def create_firewall(self, req: Request) -> Reply:
        body = _body(req)
        name = body.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9.-]+", name):
            return self.error(422, "unprocessable_entity", "name must start with an alphanumeric character")
        inbound = body.get("inbound_rules") or []
        outbound = body.get("outbound_rules") or []
        if not inbound and not outbound:
            return self.error(422, "unprocessable_entity", "must have at least one rule")
        import uuid

        fw: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "name": name,
            "created_at": iso(self.clock.now()),
            "droplet_ids": [int(d) for d in body.get("droplet_ids") or []],
            "tags": [str(t) for t in body.get("tags") or []],
            "inbound_rules": [_clean_rule(r, "sources") for r in inbound],
            "outbound_rules": [_clean_rule(r, "destinations") for r in outbound],
            "changed_at": self.clock.now(),
        }
        self.firewalls[fw["id"]] = fw
        return self.ok(202, {"firewall": self._fw_json(fw)})

    def firewall_add_droplets(self, req: Request) -> Reply:
        fw = self.firewalls.get(req.params["fw"])
        if fw is None:
            return self.not_found()
        ids = _body(req).get("droplet_ids")
        if not isinstance(ids, list) or not ids:
            return self.error(400, "bad_request", "droplet_ids is required")
        for d in ids:
            rec = self._rec(str(d))
            if rec is None:
                return self.error(422, "unprocessable_entity", f"droplet {d} not found")
        for d in ids:
            if int(d) not in fw["droplet_ids"]:
                fw["droplet_ids"].append(int(d))
        fw["changed_at"] = self.clock.now()
        return Reply(204, None, headers=self._headers())

    def firewall_add_tags(self, req: Request) -> Reply:
        fw = self.firewalls.get(req.params["fw"])
        if fw is None:
            return self.not_found()
        tags = _body(req).get("tags")
        if not isinstance(tags, list) or not tags:
            return self.error(400, "bad_request", "tags is required")
        for t in tags:
            if t not in fw["tags"]:
                fw["tags"].append(str(t))
        fw["changed_at"] = self.clock.now()
        return Reply(204, None, headers=self._headers())

    # -- droplets --------------------------------------------------------------------------

    def _rec(self, ident: str) -> InstanceRecord | None:
        try:
            rec = self.instance(ident)
        except KeyError:
            return None
        return rec if rec.exists else None

    def _droplet_json(self, rec: InstanceRecord) -> dict[str, Any]:
        size = self._size(rec.type)
        assert size is not None
        region = next(r for r in self.regions if r.slug == rec.region)
        state = rec.state
        image = self.images.get(rec.image or "", {"id": 0, "name": rec.image, "distribution": "Unknown"})
        networks: dict[str, list[dict[str, Any]]] = {"v4": [], "v6": []}
        if state in ("active", "off") and rec.ipv4:  # addresses appear once the droplet is up
            networks["v4"] = [
                {
                    "ip_address": rec.ipv4,
                    "netmask": "255.255.0.0",
                    "gateway": rec.ipv4.rsplit(".", 2)[0] + ".0.1",
                    "type": "public",
                }
            ]
            if rec.ipv6:
                networks["v6"] = [
                    {
                        "ip_address": rec.ipv6,
                        "netmask": 64,
                        "gateway": "2604:a880:cad:d0::1",
                        "type": "public",
                    }
                ]
        features = ["droplet_agent", "private_networking"] + (["ipv6"] if rec.ipv6 else [])
        out: dict[str, Any] = {
            "id": int(rec.id),
            "name": rec.name,
            "memory": size.memory_mb,
            "vcpus": size.vcpus,
            "disk": size.disk_gb,
            "disk_info": self._size_json(size)["disk_info"],
            "locked": False,
            "status": state,
            "kernel": None,
            "created_at": iso(rec.created_at),
            "features": features,
            "backup_ids": [],
            "next_backup_window": None,
            "snapshot_ids": [],
            "image": {
                "id": image["id"],
                "name": image["name"],
                "distribution": image["distribution"],
                "slug": rec.image,
                "public": True,
                "regions": [r.slug for r in self.regions],
                "created_at": "2025-06-01T00:00:00Z",
                "type": "base",
                "min_disk_size": 20,
                "size_gigabytes": 9.5,
                "description": "",
                "tags": [],
                "status": "available",
            },
            "volume_ids": [],
            "size": self._size_json(size),
            "size_slug": size.slug,
            "networks": networks,
            "region": self._region_json(region),
            "tags": list(rec.tags),
            "vpc_uuid": rec.attrs["vpc_uuid"],
        }
        if size.is_gpu:
            out["gpu_info"] = self._size_json(size)["gpu_info"]
        return out

    def get_droplet(self, req: Request) -> Reply:
        rec = self._rec(req.params["id"])
        return self.ok(200, {"droplet": self._droplet_json(rec)}) if rec else self.not_found()

    def list_droplets(self, req: Request) -> Reply:
        tag = req.arg("tag_name")
        dtype = req.arg("type")
        name = req.arg("name")
        if tag and (dtype or name):
            # The spec: tag_name "can not be combined with name or type". Status and wording
            # are a guess (the real answer was never captured).
            return self.error(422, "unprocessable_entity", "tag_name can not be combined with name or type")
        if dtype not in (None, "droplets", "gpus"):
            return self.error(422, "unprocessable_entity", "type must be one of: droplets, gpus")
        out = []
        for rec in self.known_instances():
            size = self._size(rec.type)
            is_gpu = bool(size and size.is_gpu)
            if dtype == "gpus" and not is_gpu:
                continue
            if dtype in (None, "droplets") and is_gpu and not (tag and self.tag_name_shows_gpus):
                continue
            if tag and tag not in rec.tags:
                continue
            if name and rec.name.lower() != name.lower():
                continue
            out.append(self._droplet_json(rec))
        return self._page(req, "droplets", out)

    def delete_droplet(self, req: Request) -> Reply:
        rec = self._rec(req.params["id"])
        if rec is None:
            return self.not_found()
        self.delete_instance(rec, by="client")
        return Reply(204, None, headers=self._headers())

    def delete_instance(self, rec: InstanceRecord, *, by: str) -> None:
        now = self.clock.now()
        rec.cancel_after(now)
        rec.schedule(now + self.timings["delete"], GONE)
        rec.deleted_at, rec.deleted_by = now, by
        self._fire(self.on_delete, rec)

    def _action(self, rec: InstanceRecord, kind: str) -> dict[str, Any]:
        action: dict[str, Any] = {
            "id": self._id("action"),
            "type": kind,
            "resource_id": int(rec.id),
            "droplet": rec.id,
            "started_at": self.clock.now(),
        }
        self.actions[action["id"]] = action
        return action

    def get_action(self, req: Request) -> Reply:
        a = self.actions.get(int(req.params["action"]))
        if a is None:
            return self.not_found()
        rec = self.instance(a["droplet"])
        done = rec.state != "new"
        region = next(r for r in self.regions if r.slug == rec.region)
        return self.ok(
            200,
            {
                "action": {
                    "id": a["id"],
                    "status": "completed" if done else "in-progress",
                    "type": a["type"],
                    "started_at": iso(a["started_at"]),
                    "completed_at": iso(rec.running_at) if done and rec.running_at else None,
                    "resource_id": a["resource_id"],
                    "resource_type": "droplet",
                    "region": self._region_json(region),
                    "region_slug": rec.region,
                }
            },
        )

    def create_droplet(self, req: Request) -> Reply:
        body = _body(req)
        names = body.get("names") if "names" in body else [body.get("name")]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            return self.error(422, "unprocessable_entity", "Name is required")
        if len(names) > 10:
            return self.error(422, "unprocessable_entity", "You may only create up to 10 Droplets at a time")
        for n in names:
            if len(n) > 255 or not NAME_RE.match(n):
                return self.error(
                    422,
                    "unprocessable_entity",
                    "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)",
                )
        size = self._size(str(body.get("size") or ""))
        if size is None:
            return self.error(
                422, "unprocessable_entity", "You specified an invalid size for Droplet creation."
            )
        image = body.get("image")
        if not image or str(image) not in self.images:
            return self.error(
                422, "unprocessable_entity", "You specified an invalid image for Droplet creation."
            )
        region = body.get("region") or (size.regions[0] if size.regions else None)
        if region is not None and region not in {r.slug for r in self.regions}:
            return self.error(
                422, "unprocessable_entity", "You specified an invalid region for Droplet creation."
            )
        if region is None or region not in size.regions or not size.available:
            return self.capacity_error(req)
        user_data = body.get("user_data")
        if user_data is not None and len(str(user_data).encode()) > 64 * 1024:
            return self.error(422, "unprocessable_entity", "user_data must not exceed 64 KiB")
        keys = []
        for k in body.get("ssh_keys") or []:
            match = next((x for x in self.ssh_keys if str(x["id"]) == str(k) or x["fingerprint"] == k), None)
            if match is None:
                return self.error(422, "unprocessable_entity", f"ssh_keys: {k} is not a valid key")
            keys.append(match["public_key"])

        stuck = req.fault is not None and req.fault.kind == "stuck"
        droplets, actions = [], []
        for name in names:
            n = self._id("droplet")
            rec = self.new_record(
                id=str(n),
                type=size.slug,
                region=str(region),
                name=name,
                tags=[str(t) for t in body.get("tags") or []],
                price_per_hour=size.hourly,
                currency="USD",
                billing=DO_BILLING,
                image=str(image),
                ready_state="active",
                user_data=str(user_data) if user_data is not None else None,
            )
            if body.get("ipv6"):
                rec.ipv6 = f"2604:a880:cad:d0::{n & 0xFFFF:x}:1"
            rec.attrs["vpc_uuid"] = body.get("vpc_uuid") or "760e09ef-dc84-11e8-981e-3cfdfeaae000"
            rec.attrs["ssh_keys"] = keys
            rec.schedule(rec.created_at, "new")
            if stuck:
                rec.stuck = True
            else:
                rec.schedule(rec.created_at + self.timings["provision"], "active")
            self.register(rec)
            droplets.append(self._droplet_json(rec))
            action = self._action(rec, "create")
            actions.append(
                {"id": action["id"], "rel": "create", "href": f"{self.root_url}/v2/actions/{action['id']}"}
            )
        if "names" in body:
            return self.ok(202, {"droplets": droplets, "links": {"actions": actions}})
        return self.ok(202, {"droplet": droplets[0], "links": {"actions": actions}})


def _body(req: Request) -> dict[str, Any]:
    try:
        body = req.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _maybe_obj(raw: bytes) -> Any:
    import json

    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _clean_rule(rule: dict[str, Any], target_key: str) -> dict[str, Any]:
    target = {k: v for k, v in (rule.get(target_key) or {}).items() if v}
    return {"protocol": rule.get("protocol"), "ports": str(rule.get("ports", "0")), target_key: target}


def _md5_fingerprint(public_key: str) -> str | None:
    """DO identifies keys by the MD5 fingerprint of the key blob ("aa:bb:…")."""
    parts = public_key.split()
    if len(parts) < 2 or not re.match(r"^(ssh-|ecdsa-|sk-)", parts[0]):
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 32, 2))
