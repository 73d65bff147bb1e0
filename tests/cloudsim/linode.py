"""Linode API v4 simulator (what linode_api4 talks to). Base URL: ``http://127.0.0.1:P/v4``."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar

from . import catalogs
from .clock import iso
from .core import Reply, Request, SimServer
from .faults import Fault
from .ledger import GONE, LINODE_BILLING, InstanceRecord

P = "/v4"
ID = r"(?P<id>\d+)"


LABEL_RE = re.compile(r"^[a-zA-Z]((?!--|__|\.\.)[a-zA-Z0-9-_.])+$")
SSH_KEY_RE = re.compile(
    r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-\S+) [A-Za-z0-9+/=]+( .*)?$"
)

#: Linode's answer when a plan is sold out or not offered in a region. Wording and status are
#: from the linode_api4 maintainers' own report (linode/linode_api4-python PR #396, 2024-04) and
#: a third-party client that matches on it; the notes give none.
NO_CAPACITY_STATUS = 403
NO_CAPACITY_REASON = (
    "The Linode plan you chose is not currently available in the selected region. "
    "Please select another region or plan type, or contact Support for assistance."
)


#: A scoped token refused by an endpoint outside its scopes: a 401 with this reason.
#: guess: the wording is what Linode's API is widely reported to answer (linode-cli issues);
#: the stored spec only says a revoked token fails "with a 401".
SCOPE_REFUSED_REASON = "Your OAuth token is not authorized to use this endpoint."
#: OAuth scope areas (the spec's "OAuth scopes" of each operation); a scope is "<area>:read_only"
#: or "<area>:read_write", and "*" is every scope.
SCOPE_AREAS = frozenset(
    {
        "account", "databases", "domains", "events", "firewall", "images", "ips", "linodes", "lke",
        "longview", "monitor", "nodebalancers", "object_storage", "placement", "stackscripts",
        "volumes", "vpc",
    }
)  # fmt: skip
ALL_SCOPES = frozenset(f"{a}:read_write" for a in SCOPE_AREAS)


def parse_scopes(text: str) -> frozenset[str] | None:
    """``"linodes:read_write account:read_only"`` → the scopes it grants (None: malformed)."""
    out: set[str] = set()
    for word in text.split():
        if word == "*":
            out |= ALL_SCOPES
            continue
        area, _, level = word.partition(":")
        if area not in SCOPE_AREAS or level not in ("read_only", "read_write"):
            return None
        out.add(word)
    return frozenset(out)


def scopes_allow(granted: frozenset[str], area: str, write: bool) -> bool:
    return f"{area}:read_write" in granted or (not write and f"{area}:read_only" in granted)


def _area_level(scope: str) -> tuple[str, bool]:
    area, _, level = scope.partition(":")
    return area, level == "read_write"


@dataclass
class PersonalAccessToken:
    """A token minted through POST /profile/tokens."""

    id: int
    token: str
    label: str
    scopes: str  # as the API shows it ("*" or space-separated)
    granted: frozenset[str]
    created: float
    expiry: float | None  # None: never expires
    revoked: bool = False

    def active(self, now: float) -> bool:
        return not self.revoked and (self.expiry is None or now < self.expiry)


class LinodeSim(SimServer):
    vendor: ClassVar[str] = "linode"
    api_prefix: ClassVar[str] = P
    ip_network: ClassVar[str] = "127.1.0.0/16"
    # Per the spec's operation security: these operations declare none, and the real API serves
    # them without a token (so maider can read the catalog before an account exists).
    public: ClassVar[tuple[tuple[str, str], ...]] = (
        ("GET", P + r"/regions(/[^/]+)?"),
        ("GET", P + "/regions/availability"),
        ("GET", P + r"/linode/types(/[^/]+)?"),
    )

    def __init__(self, **kw: Any) -> None:
        self.regions = list(catalogs.LINODE_REGIONS)
        self.types = list(catalogs.LINODE_TYPES)
        #: (region, plan) -> available; a test may flip one to simulate a sell-out.
        self.availability: dict[tuple[str, str], bool] = {
            (r.id, t.id): r.id in t.regions for r in self.regions for t in self.types if t.cls == "gpu"
        }
        self.ssh_keys: list[dict[str, Any]] = []
        self.firewalls: dict[int, dict[str, Any]] = {}
        self.devices: dict[int, list[dict[str, Any]]] = {}
        self._next_id = {
            "linode": 70_000_001,
            "key": 1_000_001,
            "fw": 500_001,
            "dev": 900_001,
            "token": 3_000_001,
        }
        #: Personal access tokens minted through the API (the main token is not one of them).
        self.tokens: dict[int, PersonalAccessToken] = {}
        #: What the main token (``token``, or any token when unset) may do; a test narrows it
        #: to see a mint refused.
        self.main_scopes = "*"
        super().__init__(**kw)

    def default_timings(self) -> dict[str, float]:
        # Simulated seconds; real GPU Linodes take a few minutes to provision.
        return {"provision": 60.0, "boot": 30.0, "delete": 0.0}

    def make_checker(self, *, required: bool) -> Any:
        from .spec import OpenAPIChecker, missing_spec_reason

        if missing_spec_reason("linode") is not None and not required:
            return None  # no spec (or no openapi-core) here: run unchecked
        return OpenAPIChecker("linode")

    def _id(self, kind: str) -> int:
        self._next_id[kind] += 1
        return self._next_id[kind] - 1

    def set_available(self, region: str, plan: str, available: bool) -> None:
        self.availability[(region, plan)] = available

    # -- routes ----------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", P + "/regions", self.list_regions),
            ("GET", P + "/regions/availability", self.list_availability),
            ("GET", P + r"/regions/(?P<region>[^/]+)", self.get_region),
            ("GET", P + "/linode/types", self.list_types),
            ("GET", P + r"/linode/types/(?P<type>[^/]+)", self.get_type),
            ("GET", P + "/profile", self.get_profile),
            ("GET", P + "/profile/sshkeys", self.list_keys),
            ("POST", P + "/profile/sshkeys", self.create_key),
            ("GET", P + r"/profile/sshkeys/(?P<key>\d+)", self.get_key),
            ("GET", P + "/networking/firewalls", self.list_firewalls),
            ("POST", P + "/networking/firewalls", self.create_firewall),
            ("GET", P + r"/networking/firewalls/(?P<fw>\d+)", self.get_firewall),
            ("GET", P + r"/networking/firewalls/(?P<fw>\d+)/rules", self.get_rules),
            ("PUT", P + r"/networking/firewalls/(?P<fw>\d+)/rules", self.put_rules),
            ("GET", P + r"/networking/firewalls/(?P<fw>\d+)/devices", self.list_devices),
            ("POST", P + r"/networking/firewalls/(?P<fw>\d+)/devices", self.create_device),
            ("GET", P + "/linode/instances", self.list_instances),
            ("POST", P + "/linode/instances", self.create_instance),
            ("GET", P + "/linode/instances/" + ID, self.get_instance),
            ("DELETE", P + "/linode/instances/" + ID, self.delete_instance_route),
            ("GET", P + "/profile/tokens", self.list_tokens),
            ("POST", P + "/profile/tokens", self.create_token),
            ("GET", P + r"/profile/tokens/(?P<token>\d+)", self.get_token),
            ("DELETE", P + r"/profile/tokens/(?P<token>\d+)", self.revoke_token),
        ]

    # -- vendor shapes ---------------------------------------------------------------------

    def error(self, status: int, code: str, message: str, **extra: Any) -> Reply:
        err: dict[str, str] = {"reason": message}
        if extra.get("field"):
            err["field"] = str(extra["field"])
        return Reply(status, {"errors": [err]}, headers=dict(extra.get("headers", {})))

    @staticmethod
    def _bearer(headers: dict[str, str]) -> str:
        auth = headers.get("authorization", "")
        return auth[7:].strip() if auth.startswith("Bearer ") else ""

    def minted(self, value: str) -> PersonalAccessToken | None:
        return next((t for t in self.tokens.values() if value and t.token == value), None)

    def is_authenticated(self, headers: dict[str, str]) -> bool:
        value = self._bearer(headers)
        if not value:
            return False
        pat = self.minted(value)
        if pat is not None:  # revoked or expired: 401, as the spec says of a revoked token
            return pat.active(self.clock.now())
        return self.token is None or value == self.token

    def _granted(self, req: Request) -> frozenset[str]:
        pat = self.minted(self._bearer(req.headers))
        if pat is not None:
            return pat.granted
        return parse_scopes(self.main_scopes) or frozenset()

    @staticmethod
    def _scope_area(path: str) -> str | None:
        """The OAuth scope area an endpoint needs (each operation's "OAuth scopes" in the spec)."""
        rest = path[len(P) :]
        if rest.startswith("/linode/"):
            return "linodes"
        if rest.startswith("/networking/firewalls"):
            return "firewall"
        if rest.startswith("/profile") or rest.startswith("/account"):
            return "account"
        return None

    def authorize(self, req: Request) -> Reply | None:
        if any(m == req.method and re.fullmatch(p, req.path) for m, p in self.public):
            return None
        area = self._scope_area(req.path)
        if area is None or scopes_allow(self._granted(req), area, write=req.method != "GET"):
            return None
        return self.error(401, "unauthorized", SCOPE_REFUSED_REASON)

    def unauthorized(self) -> Reply:
        return self.error(401, "unauthorized", "Invalid Token")

    def not_found(self, what: str = "", ident: str = "") -> Reply:
        return self.error(404, "not_found", "Not found")

    def capacity_error(self, req: Request) -> Reply:
        # A fault may override the status/wording (e.g. to try another observed variant).
        f = req.fault if req.fault is not None and req.fault.kind == "no_capacity" else None
        status = (f.status if f else None) or NO_CAPACITY_STATUS
        return self.error(status, "no_capacity", (f.message if f else None) or NO_CAPACITY_REASON)

    def rate_limited(self, fault: Fault) -> Reply:
        return self.error(
            429,
            "rate_limited",
            fault.message or "Too Many Requests",
            headers={"Retry-After": str(fault.retry_after)},
        )

    def server_error(self, fault: Fault) -> Reply:
        default = {500: "Please try again", 502: "Bad Gateway", 503: "Service Unavailable"}
        return self.error(
            int(fault.status or 500),
            "server_error",
            fault.message or default.get(int(fault.status or 500), "Please try again"),
        )

    def instance_id_from_path(self, path: str) -> str | None:
        m = re.fullmatch(P + r"/linode/instances/(\d+)(/.*)?", path)
        return m.group(1) if m else None

    # -- pagination and filtering ----------------------------------------------------------

    def _page(self, req: Request, items: list[dict[str, Any]]) -> Reply:
        try:
            page = int(req.arg("page", "1") or 1)
            page_size = int(req.arg("page_size", "100") or 100)
        except ValueError:
            return self.error(400, "bad_request", "Must be an integer", field="page")
        if page < 1:
            return self.error(400, "bad_request", "Must be 1 or greater", field="page")
        if not 25 <= page_size <= 500:
            return self.error(400, "bad_request", "Must be between 25 and 500", field="page_size")
        try:
            items = apply_x_filter(items, req.headers.get("x-filter"))
        except FilterError as exc:
            return self.error(400, "bad_request", str(exc), field="X-Filter")
        results = len(items)
        pages = max(1, math.ceil(results / page_size))
        start = (page - 1) * page_size
        return Reply(
            200, {"data": items[start : start + page_size], "page": page, "pages": pages, "results": results}
        )

    # -- regions and types -----------------------------------------------------------------

    def _region_json(self, r: catalogs.LinodeRegion) -> dict[str, Any]:
        caps = ["Linodes", "Block Storage", "Cloud Firewall", "Vlans", "VPCs", "Metadata", "Placement Group"]
        if r.gpu:
            caps.insert(1, "GPU Linodes")
        return {
            "id": r.id,
            "label": r.label,
            "country": r.country,
            "capabilities": caps,
            "status": "ok",
            "resolvers": {"ipv4": "127.0.0.53", "ipv6": "::1"},
            "placement_group_limits": {"maximum_linodes_per_pg": 5, "maximum_pgs_per_customer": None},
            "site-type": "core",
        }

    def list_regions(self, req: Request) -> Reply:
        return self._page(req, [self._region_json(r) for r in self.regions])

    def get_region(self, req: Request) -> Reply:
        for r in self.regions:
            if r.id == req.params["region"]:
                return Reply(200, self._region_json(r))
        return self.not_found()

    def list_availability(self, req: Request) -> Reply:
        rows = [{"region": r, "plan": p, "available": a} for (r, p), a in sorted(self.availability.items())]
        return self._page(req, rows)

    def _type_json(self, t: catalogs.LinodeType) -> dict[str, Any]:
        return {
            "id": t.id,
            "label": t.label,
            "class": t.cls,
            "gpus": t.gpus,
            "vcpus": t.vcpus,
            "memory": t.memory_mb,
            "disk": t.disk_mb,
            "transfer": t.transfer_gb,
            "network_out": t.network_out,
            "price": {"hourly": t.hourly, "monthly": t.monthly},
            "region_prices": [],
            "addons": {"backups": {"price": {"hourly": 0.0, "monthly": 0.0}, "region_prices": []}},
            "successor": None,
        }

    def list_types(self, req: Request) -> Reply:
        return self._page(req, [self._type_json(t) for t in self.types])

    def get_type(self, req: Request) -> Reply:
        for t in self.types:
            if t.id == req.params["type"]:
                return Reply(200, self._type_json(t))
        return self.not_found()

    def _find_type(self, type_id: str) -> catalogs.LinodeType | None:
        return next((t for t in self.types if t.id == type_id), None)

    # -- ssh keys --------------------------------------------------------------------------

    def list_keys(self, req: Request) -> Reply:
        return self._page(req, list(self.ssh_keys))

    def get_profile(self, req: Request) -> Reply:
        # The cheapest authenticated call: what a credentials check uses.
        return Reply(
            200,
            {
                "username": "maider-sim",
                "email": "sim@example.invalid",
                "uid": 1234,
                "restricted": False,
                "two_factor_auth": False,
                "authorized_keys": None,
                "email_notifications": True,
                "ip_whitelist_enabled": False,
                "lish_auth_method": "keys_only",
                "referrals": {"code": "", "url": "", "total": 0, "completed": 0, "pending": 0, "credit": 0},
                "timezone": "UTC",
            },
        )

    def get_key(self, req: Request) -> Reply:
        key_id = int(req.params["key"])
        item = next((k for k in self.ssh_keys if k["id"] == key_id), None)
        return Reply(200, item) if item else self.not_found()

    def create_key(self, req: Request) -> Reply:
        body = _body(req)
        key = str(body.get("ssh_key", "")).strip()
        if not SSH_KEY_RE.match(key):
            return self.error(400, "bad_request", "Invalid SSH key", field="ssh_key")
        item = {
            "id": self._id("key"),
            "label": str(body.get("label", "")),
            "ssh_key": key,
            "created": iso(self.clock.now(), zulu=False),
        }
        self.ssh_keys.append(item)
        return Reply(200, item)

    # -- firewalls -------------------------------------------------------------------------

    def list_firewalls(self, req: Request) -> Reply:
        return self._page(req, list(self.firewalls.values()))

    def get_firewall(self, req: Request) -> Reply:
        fw = self.firewalls.get(int(req.params["fw"]))
        return Reply(200, fw) if fw else self.not_found()

    def get_rules(self, req: Request) -> Reply:
        fw = self.firewalls.get(int(req.params["fw"]))
        return Reply(200, fw["rules"]) if fw else self.not_found()

    def put_rules(self, req: Request) -> Reply:
        """Replace a firewall's rules (the response is the rules with a new fingerprint/version)."""
        fw = self.firewalls.get(int(req.params["fw"]))
        if fw is None:
            return self.not_found()
        body = _body(req)
        rules = {
            "inbound": body.get("inbound", []),
            "inbound_policy": body.get("inbound_policy", fw["rules"]["inbound_policy"]),
            "outbound": body.get("outbound", []),
            "outbound_policy": body.get("outbound_policy", fw["rules"]["outbound_policy"]),
        }
        rules["fingerprint"] = hashlib.sha1(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:8]
        rules["version"] = int(fw["rules"].get("version", 1)) + 1
        fw["rules"] = rules
        return Reply(200, rules)

    def create_firewall(self, req: Request) -> Reply:
        body = _body(req)
        label = body.get("label")
        if not isinstance(label, str) or not (3 <= len(label) <= 32 and LABEL_RE.match(label)):
            return self.error(
                400, "bad_request", "Label must be 3-32 characters and start with a letter", field="label"
            )
        rules = body.get("rules")
        if not isinstance(rules, dict) or "inbound_policy" not in rules or "outbound_policy" not in rules:
            return self.error(
                400,
                "bad_request",
                "rules.inbound_policy and rules.outbound_policy are required",
                field="rules",
            )
        now = iso(self.clock.now(), zulu=False)
        rules_out = {
            "inbound": rules.get("inbound", []),
            "inbound_policy": rules["inbound_policy"],
            "outbound": rules.get("outbound", []),
            "outbound_policy": rules["outbound_policy"],
            "fingerprint": hashlib.sha1(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:8],
            "version": 1,
        }
        fw: dict[str, Any] = {
            "id": self._id("fw"),
            "label": label,
            "status": "enabled",
            "rules": rules_out,
            "tags": list(body.get("tags") or []),
            "created": now,
            "updated": now,
        }
        self.firewalls[fw["id"]] = fw
        self.devices[fw["id"]] = []
        for linode_id in (body.get("devices") or {}).get("linodes", []) or []:
            self._attach(fw["id"], int(linode_id))
        return Reply(200, fw)

    def _attach(self, fw_id: int, linode_id: int) -> dict[str, Any] | None:
        try:
            rec = self.instance(linode_id)
        except KeyError:
            return None
        if not rec.exists:
            return None
        now = iso(self.clock.now(), zulu=False)
        dev = {
            "id": self._id("dev"),
            "entity": {
                "id": linode_id,
                "type": "linode",
                "label": rec.name,
                "url": f"/v4/linode/instances/{linode_id}",
            },
            "created": now,
            "updated": now,
        }
        self.devices[fw_id].append(dev)
        rec.attrs.setdefault("firewalls", []).append(fw_id)
        return dev

    def list_devices(self, req: Request) -> Reply:
        fw_id = int(req.params["fw"])
        if fw_id not in self.firewalls:
            return self.not_found()
        return self._page(req, list(self.devices[fw_id]))

    def create_device(self, req: Request) -> Reply:
        fw_id = int(req.params["fw"])
        if fw_id not in self.firewalls:
            return self.not_found()
        body = _body(req)
        if body.get("type") != "linode":
            return self.error(400, "bad_request", "type must be linode or nodebalancer", field="type")
        try:
            linode_id = int(body.get("id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return self.error(400, "bad_request", "id is required", field="id")
        dev = self._attach(fw_id, linode_id)
        if dev is None:
            return self.error(400, "bad_request", "Linode not found", field="id")
        return Reply(200, dev)

    # -- instances -------------------------------------------------------------------------

    def _instance_json(self, rec: InstanceRecord) -> dict[str, Any]:
        t = self._find_type(rec.type)
        state = rec.state
        n = int(rec.id)
        return {
            "id": n,
            "label": rec.name,
            "group": "",
            "status": state,
            "created": iso(rec.created_at, zulu=False),
            "updated": iso(rec.last_change, zulu=False),
            "type": rec.type,
            "region": rec.region,
            "image": rec.image,
            "ipv4": [rec.ipv4] if rec.ipv4 else [],
            "ipv6": rec.ipv6,
            "tags": list(rec.tags),
            "hypervisor": "kvm",
            "watchdog_enabled": True,
            "has_user_data": rec.user_data is not None,
            "host_uuid": rec.attrs["host_uuid"],
            "lke_cluster_id": None,
            "placement_group": None,
            "capabilities": [],
            "specs": {
                "disk": t.disk_mb if t else 0,
                "memory": t.memory_mb if t else 0,
                "vcpus": t.vcpus if t else 0,
                "gpus": t.gpus if t else 0,
                "transfer": t.transfer_gb if t else 0,
            },
            "alerts": {
                "cpu": 90 * (t.vcpus if t else 1),
                "io": 10000,
                "network_in": 10,
                "network_out": 10,
                "transfer_quota": 80,
            },
            "backups": {"available": False, "enabled": False, "schedule": {"day": None, "window": None}},
        }

    def list_instances(self, req: Request) -> Reply:
        return self._page(req, [self._instance_json(r) for r in self.known_instances()])

    def _get_rec(self, req: Request) -> InstanceRecord | None:
        try:
            rec = self.instance(req.params["id"])
        except KeyError:
            return None
        return rec if rec.exists else None

    def get_instance(self, req: Request) -> Reply:
        rec = self._get_rec(req)
        return Reply(200, self._instance_json(rec)) if rec else self.not_found()

    # -- personal access tokens ------------------------------------------------------------

    def _token_json(self, t: PersonalAccessToken, *, full: bool) -> dict[str, Any]:
        return {
            "id": t.id,
            "label": t.label,
            "scopes": t.scopes,
            # The full token only in the create answer; later only its first 16 characters.
            "token": t.token if full else t.token[:16],
            "created": iso(t.created, zulu=False),
            "expiry": iso(t.expiry, zulu=False) if t.expiry is not None else None,
        }

    def _active_tokens(self) -> list[PersonalAccessToken]:
        now = self.clock.now()
        return [t for t in self.tokens.values() if t.active(now)]

    def list_tokens(self, req: Request) -> Reply:
        return self._page(req, [self._token_json(t, full=False) for t in self._active_tokens()])

    def get_token(self, req: Request) -> Reply:
        t = self.tokens.get(int(req.params["token"]))
        if t is None or not t.active(self.clock.now()):
            return self.not_found()
        return Reply(200, self._token_json(t, full=False))

    def create_token(self, req: Request) -> Reply:
        body = _body(req)
        acting = self._granted(req)
        scopes_text = str(body.get("scopes") or "*")
        requested = acting if scopes_text.strip() == "*" else parse_scopes(scopes_text)
        if requested is None or not requested:
            return self.error(400, "bad_request", "Invalid OAuth scopes", field="scopes")
        if not all(scopes_allow(acting, *_area_level(scope)) for scope in requested):
            # The spec: scopes "may not exceed the scopes of the acting token". guess: the status
            # and wording of the refusal.
            return self.error(400, "bad_request", "You may not grant scopes beyond your own", field="scopes")
        expiry: float | None = None
        if body.get("expiry") is not None:
            try:
                # The SDK sends naive UTC ("%Y-%m-%dT%H:%M:%S"), as the API writes its dates.
                when = dt.datetime.fromisoformat(str(body["expiry"]).replace("Z", "+00:00"))
            except ValueError:
                return self.error(400, "bad_request", "expiry must be a datetime", field="expiry")
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.timezone.utc)
            expiry = when.timestamp()
            if expiry <= self.clock.now():  # guess: the real API's check and wording
                return self.error(400, "bad_request", "expiry must be in the future", field="expiry")
        label = str(body.get("label") or "")
        if not 1 <= len(label) <= 100:
            return self.error(400, "bad_request", "Length must be 1-100 characters", field="label")
        t = PersonalAccessToken(
            id=self._id("token"),
            token=secrets.token_hex(32),  # Linode tokens are 64 hex characters
            label=label,
            scopes="*" if requested == ALL_SCOPES else " ".join(sorted(requested)),
            granted=requested,
            created=self.clock.now(),
            expiry=expiry,
        )
        self.tokens[t.id] = t
        return Reply(200, self._token_json(t, full=True))

    def revoke_token(self, req: Request) -> Reply:
        t = self.tokens.get(int(req.params["token"]))
        if t is None or t.revoked:
            return self.not_found()
        t.revoked = True
        return Reply(200, {})

    def delete_instance_route(self, req: Request) -> Reply:
        rec = self._get_rec(req)
        if rec is None:
            return self.not_found()
        self.delete_instance(rec, by="client")
        return Reply(200, {})

    def delete_instance(self, rec: InstanceRecord, *, by: str) -> None:
        now = self.clock.now()
        delay = self.timings["delete"]
        rec.cancel_after(now)
        if delay > 0:
            rec.schedule(now, "deleting")
        rec.schedule(now + delay, GONE)
        rec.deleted_at, rec.deleted_by = now, by
        self._fire(self.on_delete, rec)

    def create_instance(self, req: Request) -> Reply:
        body = _body(req)
        for required in ("type", "region"):
            if not body.get(required):
                return self.error(400, "bad_request", f"{required} is required", field=required)
        ltype = self._find_type(str(body["type"]))
        if ltype is None:
            return self.error(400, "bad_request", "A valid plan type by that ID was not found", field="type")
        region = str(body["region"])
        if region not in {r.id for r in self.regions}:
            return self.error(400, "bad_request", "region is not valid", field="region")
        image = body.get("image")
        if image and not (
            body.get("root_pass") or body.get("authorized_keys") or body.get("authorized_users")
        ):
            return self.error(
                400, "bad_request", "root_pass is required when deploying from an Image", field="root_pass"
            )
        label = body.get("label")
        if label is not None:
            if not isinstance(label, str) or not (3 <= len(label) <= 64 and LABEL_RE.match(label)):
                return self.error(
                    400,
                    "bad_request",
                    "Label must be 3-64 characters, start with a letter, "
                    "and contain only letters, numbers, dashes, underscores and periods",
                    field="label",
                )
            if any(r.name == label for r in self.known_instances()):
                return self.error(
                    400, "bad_request", "Label must be unique among your Linodes", field="label"
                )
        user_data = None
        metadata = body.get("metadata") or {}
        if metadata.get("user_data") is not None:
            try:
                raw = base64.b64decode(str(metadata["user_data"]), validate=True)
            except (binascii.Error, ValueError):
                return self.error(
                    400, "bad_request", "user_data must be valid base64", field="metadata.user_data"
                )
            if len(raw) > 65535:
                return self.error(
                    400,
                    "bad_request",
                    "Unencoded data must not exceed 65535 bytes",
                    field="metadata.user_data",
                )
            user_data = raw.decode("utf-8", errors="replace")
        fw_id = body.get("firewall_id")
        if fw_id is not None and int(fw_id) not in self.firewalls:
            return self.error(400, "bad_request", "Firewall not found", field="firewall_id")
        if ltype.cls == "gpu" and not self.availability.get((region, ltype.id), False):
            return self.capacity_error(req)

        n = self._id("linode")
        rec = self.new_record(
            id=str(n),
            type=ltype.id,
            region=region,
            name=label or f"linode{n}",
            tags=[str(t) for t in body.get("tags") or []],
            price_per_hour=ltype.hourly,
            currency="USD",
            billing=LINODE_BILLING,
            image=str(image) if image else None,
            user_data=user_data,
        )
        rec.ipv6 = f"2600:3c00::f03c:95ff:fe{(n >> 16) & 0xFF:02x}:{n & 0xFFFF:04x}/128"
        rec.attrs["host_uuid"] = str(_uuid_from(n))
        rec.attrs["authorized_keys"] = list(body.get("authorized_keys") or [])
        now = rec.created_at
        rec.schedule(now, "provisioning")
        stuck = req.fault is not None and req.fault.kind == "stuck"
        if stuck:
            rec.stuck = True
        else:
            booted = body.get("booted", True) and bool(image)
            ready = now + self.timings["provision"]
            if booted:
                rec.schedule(ready, "booting")
                rec.schedule(ready + self.timings["boot"], "running")
            else:
                rec.schedule(ready, "offline")
        self.register(rec)
        if fw_id is not None:
            self._attach(int(fw_id), n)
        return Reply(200, self._instance_json(rec))


def _body(req: Request) -> dict[str, Any]:
    try:
        body = req.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _uuid_from(n: int) -> str:
    import uuid

    return str(uuid.UUID(hashlib.md5(str(n).encode()).hexdigest()))


# ------------------------------------------------------------------------------------------
# X-Filter (a faithful subset of https://techdocs.akamai.com/linode-api/reference/filtering-and-sorting)
# ------------------------------------------------------------------------------------------


class FilterError(ValueError):
    pass


_OPS = {"+contains", "+neq", "+gt", "+gte", "+lt", "+lte"}


def _match_value(actual: Any, cond: Any) -> bool:
    if isinstance(cond, dict):
        ok = True
        for op, val in cond.items():
            if op not in _OPS:
                raise FilterError(f"Unknown filter operator {op}")
            values = actual if isinstance(actual, list) else [actual]
            if op == "+contains":
                ok &= any(isinstance(v, str) and str(val) in v for v in values)
            elif op == "+neq":
                ok &= all(v != val for v in values)
            else:
                try:
                    cmp = {
                        "+gt": float.__gt__,
                        "+gte": float.__ge__,
                        "+lt": float.__lt__,
                        "+lte": float.__le__,
                    }[op]
                    ok &= any(v is not None and cmp(float(v), float(val)) for v in values)
                except (TypeError, ValueError) as exc:
                    raise FilterError(f"{op} needs a number") from exc
        return ok
    if isinstance(actual, list):  # e.g. {"tags": "maider"}: the list holds the value
        return cond in actual
    return actual == cond


def _match(item: dict[str, Any], flt: dict[str, Any]) -> bool:
    for key, cond in flt.items():
        if key in ("+order_by", "+order"):
            continue
        if key == "+and":
            if not all(_match(item, sub) for sub in cond):
                return False
            continue
        if key == "+or":
            if not any(_match(item, sub) for sub in cond):
                return False
            continue
        if key.startswith("+"):
            raise FilterError(f"Unknown filter operator {key}")
        if key not in item:
            raise FilterError(f"Cannot filter on {key}")
        if not _match_value(item[key], cond):
            return False
    return True


def apply_x_filter(items: list[dict[str, Any]], header: str | None) -> list[dict[str, Any]]:
    if not header:
        return items
    try:
        flt = json.loads(header)
    except ValueError as exc:
        raise FilterError("X-Filter must be a JSON object") from exc
    if not isinstance(flt, dict):
        raise FilterError("X-Filter must be a JSON object")
    out = [i for i in items if _match(i, flt)]
    order_by = flt.get("+order_by")
    if order_by:
        out.sort(
            key=lambda i: (i.get(order_by) is None, i.get(order_by)), reverse=flt.get("+order") == "desc"
        )
    return out
