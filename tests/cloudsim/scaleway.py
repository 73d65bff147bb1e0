"""Scaleway Instance v1 + Block Storage v1alpha1 + IAM v1alpha1 simulator (what the scaleway SDK talks to).

Base URL: ``http://127.0.0.1:P`` (no trailing slash: the SDK's validation refuses one).

Block Storage (SBS). A server created with an ``sbs_volume`` gets a volume in the Block API
(recorded in the ledger as a :class:`VolumeRecord`); the server JSON lists it under
``volumes["0"]`` as ``{"boot", "volume_type": "sbs_volume", "id", "zone"}`` and nothing more,
like the real answer (scaleway-cli cassette test-create-server-volumes-create-sbs-root-volume,
2025-06-11). Deleting the server (``terminate``, ``DELETE``, or a vanish) does **not** delete
the volume: it stays ``in_use`` with its reference "detaching" for ``timings["detach"]`` seconds
after the server is gone, then reads ``available`` and stays billed until ``DELETE
/block/v1alpha1/zones/{zone}/volumes/{id}``, which refuses a volume in use (412, see
:data:`IN_USE_STATUS`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import random
import re
import string
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import catalogs
from .clock import iso
from .core import Reply, Request, SimServer
from .faults import Fault
from .ledger import GONE, SBS_5K_EUR_PER_GB_HOUR, SCALEWAY_BILLING, InstanceRecord, VolumeRecord

Z = r"/instance/v1/zones/(?P<zone>[a-z]{2}-[a-z]{3}-[1-9])"
B = r"/block/v1alpha1/zones/(?P<zone>[a-z]{2}-[a-z]{3}-[1-9])"
U = r"[0-9a-f-]{36}"
DEFAULT_ORG = "11111111-2222-3333-4444-555555555555"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

#: scaleway-sdk-go parses {"type": "out_of_stock", "resource": …} into OutOfStockError (whose text
#: is "resource <resource> is out of stock"), and a third-party client saw HTTP 412 with that type
#: on server create in fr-par-2 (2026-10). The message and the resource value are guesses.
OUT_OF_STOCK_STATUS = 412

#: Deleting a Block Storage volume that is still in use. The SDK only says "The volume must not
#: be in the in_use status"; the status and body are a guess after scaleway-sdk-go's
#: PreconditionFailedError ({"type": "precondition_failed", "precondition": …}), as third-party
#: fakes of the Block API answer it.
IN_USE_STATUS = 412


#: A credential without the permission a call needs. guess: status, type and message after
#: scaleway-sdk-go's PermissionsDeniedError ({"type": "permissions_denied", "details": [...]}),
#: whose text is "insufficient permissions"; the detail entries are the SDK's shape.
PERMISSIONS_DENIED_STATUS = 403
#: Permission sets the simulator knows (Scaleway's documented names), and the path prefixes and
#: methods each grants. guess: the real sets are finer-grained; these are the ones maider needs.
PERMISSION_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "InstancesFullAccess": ("/instance/", ("GET", "POST", "PUT", "PATCH", "DELETE")),
    "InstancesReadOnly": ("/instance/", ("GET",)),
    "BlockStorageFullAccess": ("/block/", ("GET", "POST", "PUT", "PATCH", "DELETE")),
    "SSHKeysFullAccess": ("/iam/v1alpha1/ssh-keys", ("GET", "POST", "PUT", "PATCH", "DELETE")),
    "IAMManager": ("/iam/", ("GET", "POST", "PUT", "PATCH", "DELETE")),
}


@dataclass
class IamRule:
    permission_set_names: list[str]
    project_ids: list[str] = field(default_factory=list)  # empty: organization-wide
    organization_id: str | None = None


@dataclass
class IamApiKey:
    access_key: str
    secret_key: str
    application_id: str
    description: str
    default_project_id: str
    created_at: float
    expires_at: float | None

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


class ScalewaySim(SimServer):
    vendor: ClassVar[str] = "scaleway"
    api_prefix: ClassVar[str] = ""
    ip_network: ClassVar[str] = "127.3.0.0/16"
    # The catalog is public (notes §4.3: "no key is needed to read them").
    public: ClassVar[tuple[tuple[str, str], ...]] = (
        ("GET", Z + "/products/servers"),
        ("GET", Z + "/products/servers/availability"),
    )

    def __init__(self, **kw: Any) -> None:
        self.types = list(catalogs.SCW_TYPES)
        #: (zone, type) -> "available" | "scarce" | "shortage"; "shortage" makes creates fail
        #: with out_of_stock, like the real API when a zone is sold out.
        self.availability: dict[tuple[str, str], str] = {
            (z, t.name): t.availability for t in self.types for z in t.zones
        }
        self.images = {name: str(uuid.uuid5(uuid.NAMESPACE_URL, name)) for name in catalogs.SCW_IMAGES}
        self.security_groups: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, list[dict[str, Any]]] = {}
        self.ssh_keys: list[dict[str, Any]] = []
        self.tasks: dict[str, dict[str, Any]] = {}
        #: IAM: applications (id → JSON), policies (id → JSON plus "_rules"), minted API keys.
        self.applications: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.api_keys: dict[str, IamApiKey] = {}
        #: Permission sets of the main key (None: all, like an organization owner's key); a test
        #: narrows it to see a mint refused.
        self.main_permissions: set[str] | None = None
        super().__init__(**kw)

    def default_timings(self) -> dict[str, float]:
        # detach: a Block Storage volume reads in_use ("detaching") this long after its server
        # is gone (about 1.6 s in the 2025-06-11 scaleway-cli recording).
        return {"boot": 45.0, "stop": 15.0, "terminate": 20.0, "detach": 2.0}

    def make_checker(self, *, required: bool) -> Any:
        from .scaleway_schemas import ScalewayChecker

        return ScalewayChecker()

    def set_availability(self, zone: str, commercial_type: str, availability: str) -> None:
        self.availability[(zone, commercial_type)] = availability

    # -- routes ----------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Any]]:
        S = Z + f"/servers/(?P<id>{U})"
        G = Z + f"/security_groups/(?P<sg>{U})"
        return [
            ("GET", Z + "/products/servers", self.list_types),
            ("GET", Z + "/products/servers/availability", self.list_availability),
            ("GET", Z + "/security_groups", self.list_sgs),
            ("POST", Z + "/security_groups", self.create_sg),
            ("GET", G, self.get_sg),
            ("PATCH", G, self.update_sg),
            ("GET", G + "/rules", self.list_rules),
            ("PUT", G + "/rules", self.set_rules),
            ("POST", G + "/rules", self.create_rule),
            ("GET", Z + "/servers", self.list_servers),
            ("POST", Z + "/servers", self.create_server),
            ("GET", S, self.get_server),
            ("DELETE", S, self.delete_server),
            ("POST", S + "/action", self.server_action),
            ("GET", S + "/user_data", self.list_user_data),
            ("PATCH", S + "/user_data/(?P<key>[A-Za-z0-9_-]+)", self.set_user_data),
            ("GET", S + "/user_data/(?P<key>[A-Za-z0-9_-]+)", self.get_user_data),
            ("DELETE", S + "/user_data/(?P<key>[A-Za-z0-9_-]+)", self.delete_user_data),
            ("GET", B + "/volumes", self.list_volumes),
            ("GET", B + f"/volumes/(?P<vol>{U})", self.get_volume),
            ("PATCH", B + f"/volumes/(?P<vol>{U})", self.update_volume),
            ("DELETE", B + f"/volumes/(?P<vol>{U})", self.delete_volume),
            ("GET", "/iam/v1alpha1/ssh-keys", self.list_keys),
            ("POST", "/iam/v1alpha1/ssh-keys", self.create_key),
            ("GET", f"/iam/v1alpha1/ssh-keys/(?P<key>{U})", self.get_key),
            ("DELETE", f"/iam/v1alpha1/ssh-keys/(?P<key>{U})", self.delete_key),
            ("POST", "/iam/v1alpha1/applications", self.create_application),
            ("GET", f"/iam/v1alpha1/applications/(?P<app>{U})", self.get_application),
            ("DELETE", f"/iam/v1alpha1/applications/(?P<app>{U})", self.delete_application),
            ("POST", "/iam/v1alpha1/policies", self.create_policy),
            ("GET", f"/iam/v1alpha1/policies/(?P<policy>{U})", self.get_policy),
            ("DELETE", f"/iam/v1alpha1/policies/(?P<policy>{U})", self.delete_policy),
            ("POST", "/iam/v1alpha1/api-keys", self.create_api_key),
            ("GET", "/iam/v1alpha1/api-keys/(?P<access>SCW[A-Z0-9]{17})", self.get_api_key),
            ("DELETE", "/iam/v1alpha1/api-keys/(?P<access>SCW[A-Z0-9]{17})", self.delete_api_key),
        ]

    # -- vendor shapes ---------------------------------------------------------------------

    def error(self, status: int, code: str, message: str, **extra: Any) -> Reply:
        body: dict[str, Any] = {"message": message, "type": code}
        for k in ("resource", "resource_id", "fields", "precondition", "help_message"):
            if k in extra:
                body[k] = extra[k]
        return Reply(status, body, headers=dict(extra.get("headers", {})))

    def minted_key(self, secret: str) -> IamApiKey | None:
        return next((k for k in self.api_keys.values() if secret and k.secret_key == secret), None)

    def is_authenticated(self, headers: dict[str, str]) -> bool:
        token = headers.get("x-auth-token", "").strip()
        if not token:
            return False
        key = self.minted_key(token)
        if key is not None:  # an expired key is refused like an unknown one (guess)
            return key.active(self.clock.now())
        return token == self.token if self.token is not None else True

    def _rules_of(self, application_id: str) -> list[IamRule]:
        return [
            r
            for p in self.policies.values()
            if p.get("application_id") == application_id
            for r in p["_rules"]
        ]

    def _request_project(self, req: Request) -> str | None:
        """The project a call acts in, where the simulator can tell (a server's, or the body's)."""
        if "id" in req.params and "zone" in req.params and req.path.startswith("/instance/"):
            try:
                return str(self.instance(req.params["id"]).attrs.get("project"))
            except KeyError:
                return None
        body = _body(req)
        return str(body.get("project") or body.get("project_id") or req.arg("project") or "") or None

    def authorize(self, req: Request) -> Reply | None:
        if any(m == req.method and re.fullmatch(p, req.path) for m, p in self.public):
            return None
        key = self.minted_key(req.headers.get("x-auth-token", "").strip())
        if key is None:
            if self.main_permissions is None:
                return None
            rules = [IamRule(sorted(self.main_permissions))]
        else:
            rules = self._rules_of(key.application_id)
        project = self._request_project(req)
        for rule in rules:
            if rule.project_ids and project is not None and project not in rule.project_ids:
                continue
            for name in rule.permission_set_names:
                prefix, methods = PERMISSION_SETS.get(name, ("", ()))
                if prefix and req.path.startswith(prefix) and req.method in methods:
                    return None
        reply = self.error(PERMISSIONS_DENIED_STATUS, "permissions_denied", "insufficient permissions")
        reply.body["details"] = [{"resource": req.path.split("/")[1], "action": req.method.lower()}]
        return reply

    def unauthorized(self) -> Reply:
        # The real body also names the method and reason of the refusal.
        reply = self.error(401, "denied_authentication", "authentication is denied")
        reply.body.update({"method": "api_key", "reason": "invalid_argument"})
        return reply

    def not_found(self, what: str = "instance_server", ident: str = "") -> Reply:
        return self.error(404, "not_found", "resource is not found", resource=what, resource_id=ident)

    def capacity_error(self, req: Request) -> Reply:
        ctype = str(_body(req).get("commercial_type") or "server")
        f = req.fault if req.fault is not None and req.fault.kind == "no_capacity" else None
        return self.error(
            (f.status if f else None) or OUT_OF_STOCK_STATUS,
            "out_of_stock",
            (f.message if f else None) or f"{ctype} is out of stock in this zone",
            resource=ctype,
        )

    def rate_limited(self, fault: Fault) -> Reply:
        return self.error(
            429,
            "too_many_requests",
            fault.message or "rate limit exceeded",
            headers={"Retry-After": str(fault.retry_after)},
        )

    def server_error(self, fault: Fault) -> Reply:
        return self.error(int(fault.status or 500), "internal_error", fault.message or "internal error")

    def validation_error(self, fields: dict[str, list[str]]) -> Reply:
        # The SDK turns message == "Validation Error" into scaleway_core.api.ValidationError.
        return self.error(400, "invalid_request_error", "Validation Error", fields=fields)

    def invalid(self, message: str) -> Reply:
        return self.error(400, "invalid_request_error", message)

    def instance_id_from_path(self, path: str) -> str | None:
        m = re.fullmatch(Z + f"/servers/({U})(/.*)?", path)
        return m.group(2) if m else None

    # -- pagination ------------------------------------------------------------------------

    def _pages(self, req: Request, default: int, size: str = "per_page") -> tuple[int, int] | Reply:
        """(page, page size) from the query. Instance v1 calls the size ``per_page``; the newer
        APIs (IAM, Block) call it ``page_size``."""
        try:
            page = int(req.arg("page", "1") or 1)
            per_page = int(req.arg(size, str(default)) or default)
        except ValueError:
            return self.validation_error({"page": ["must be an integer"]})
        if page < 1:
            return self.validation_error({"page": ["must be greater than or equal to 1"]})
        if not 1 <= per_page <= 100:
            return self.validation_error({size: ["must be between 1 and 100"]})
        return page, per_page

    def _list(self, req: Request, key: str, items: list[Any], default: int = 50) -> Reply:
        pages = self._pages(req, default)
        if isinstance(pages, Reply):
            return pages
        page, per_page = pages
        chunk = items[(page - 1) * per_page : page * per_page]  # empty after the last page
        return Reply(200, {key: chunk}, headers={"X-Total-Count": str(len(items))})

    def _map(self, req: Request, key: str, items: dict[str, Any], default: int = 100) -> Reply:
        pages = self._pages(req, default)
        if isinstance(pages, Reply):
            return pages
        page, per_page = pages
        names = sorted(items)[(page - 1) * per_page : page * per_page]
        return Reply(200, {key: {n: items[n] for n in names}}, headers={"X-Total-Count": str(len(items))})

    # -- catalog ---------------------------------------------------------------------------

    def _type_json(self, t: catalogs.ScwType) -> dict[str, Any]:
        gpu_info = None
        if t.gpus:
            maker = "NVIDIA"
            gpu_info = {
                "gpu_manufacturer": maker,
                "gpu_name": t.gpu_name,
                "gpu_memory": t.vram_gb * catalogs.GIB,
            }
        local_max = 0 if t.gpus else 20 * catalogs.GB  # GPU types allow no local volume
        return {
            "alt_names": [],
            "arch": t.arch,
            "ncpus": t.ncpus,
            "ram": t.ram_gib * catalogs.GIB,
            "gpu": t.gpus,
            "gpu_info": gpu_info,
            "mig_profile": None,
            "hourly_price": t.hourly,
            "monthly_price": t.monthly,
            "volumes_constraint": {"min_size": 0, "max_size": local_max},
            "per_volume_constraint": {"l_ssd": {"min_size": 1 * catalogs.GB, "max_size": local_max}},
            "scratch_storage_max_size": t.scratch_gb * catalogs.GB or None,
            "scratch_storage_max_volumes_count": 1 if t.scratch_gb else 0,
            "baremetal": False,
            "network": {
                "interfaces": [{"internal_bandwidth": None, "internet_bandwidth": 10_000_000_000}],
                "sum_internal_bandwidth": None,
                "sum_internet_bandwidth": 10_000_000_000,
                "ipv6_support": True,
            },
            "capabilities": {"boot_types": ["local", "rescue"], "block_storage": True, "max_file_systems": 0},
            "block_bandwidth": 5_000_000_000,
            "end_of_service": False,
        }

    def _types_in(self, zone: str) -> dict[str, catalogs.ScwType]:
        return {t.name: t for t in self.types if zone in t.zones}

    def list_types(self, req: Request) -> Reply:
        zone = req.params["zone"]
        return self._map(req, "servers", {n: self._type_json(t) for n, t in self._types_in(zone).items()})

    def list_availability(self, req: Request) -> Reply:
        zone = req.params["zone"]
        items = {
            n: {"availability": self.availability.get((zone, n), "available")} for n in self._types_in(zone)
        }
        return self._map(req, "servers", items)

    # -- security groups -------------------------------------------------------------------

    def _sg(self, req: Request) -> dict[str, Any] | None:
        sg = self.security_groups.get(req.params["sg"])
        return sg if sg and sg["zone"] == req.params["zone"] else None

    def list_sgs(self, req: Request) -> Reply:
        zone = req.params["zone"]
        project = req.arg("project")
        items = [
            s for s in self.security_groups.values() if s["zone"] == zone and project in (None, s["project"])
        ]
        return self._list(req, "security_groups", items)

    def get_sg(self, req: Request) -> Reply:
        sg = self._sg(req)
        return (
            Reply(200, {"security_group": sg})
            if sg
            else self.not_found("instance_security_group", req.params["sg"])
        )

    def create_sg(self, req: Request) -> Reply:
        body = _body(req)
        if not body.get("name"):
            return self.validation_error({"name": ["required key not provided"]})
        project = body.get("project") or body.get("organization")
        if not project:
            return self.validation_error({"project": ["required key not provided"]})
        now = iso(self.clock.now(), micros=True)
        sg: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "name": str(body["name"]),
            "description": str(body.get("description") or ""),
            "enable_default_security": bool(body.get("enable_default_security", True)),
            "inbound_default_policy": body.get("inbound_default_policy") or "accept",
            "outbound_default_policy": body.get("outbound_default_policy") or "accept",
            "organization": body.get("organization") or DEFAULT_ORG,
            "project": str(project),
            "tags": list(body.get("tags") or []),
            "project_default": bool(body.get("project_default", False)),
            "organization_default": False,
            "servers": [],
            "stateful": bool(body.get("stateful", True)),
            "state": "available",
            "zone": req.params["zone"],
            "creation_date": now,
            "modification_date": now,
        }
        self.security_groups[sg["id"]] = sg
        self.rules[sg["id"]] = []
        return Reply(201, {"security_group": sg})

    def update_sg(self, req: Request) -> Reply:
        """PATCH: the fields the body names change; the others stay (update_security_group)."""
        sg = self._sg(req)
        if sg is None:
            return self.not_found("instance_security_group", req.params["sg"])
        body = _body(req)
        if "name" in body and not body["name"]:
            return self.validation_error({"name": ["must not be empty"]})
        if (
            "enable_default_security" in body
            and body["enable_default_security"] != sg["enable_default_security"]
        ):
            # The SDK's docstring: "This feature is read only, please open a support ticket".
            return self.invalid("enable_default_security cannot be changed through the API")
        for key in (
            "name",
            "description",
            "inbound_default_policy",
            "outbound_default_policy",
            "stateful",
            "project_default",
            "organization_default",
        ):
            if key in body:
                sg[key] = body[key]
        if "tags" in body:
            sg["tags"] = list(body["tags"] or [])
        sg["modification_date"] = iso(self.clock.now(), micros=True)
        return Reply(200, {"security_group": sg})

    def _rule(self, zone: str, r: dict[str, Any], position: int) -> dict[str, Any]:
        # The SDK sends dest_port_to = 0 when it was not given; the API reads 0 as "no range".
        return {
            "id": str(r.get("id") or uuid.uuid4()),
            "protocol": r.get("protocol", "TCP"),
            "direction": r.get("direction", "inbound"),
            "action": r.get("action", "accept"),
            "ip_range": r.get("ip_range", "0.0.0.0/0"),
            "dest_port_from": r.get("dest_port_from") or None,
            "dest_port_to": r.get("dest_port_to") or None,
            "position": int(r.get("position") or position),
            "editable": True if r.get("editable") is None else bool(r["editable"]),
            "zone": zone,
        }

    def list_rules(self, req: Request) -> Reply:
        sg = self._sg(req)
        if sg is None:
            return self.not_found("instance_security_group", req.params["sg"])
        return self._list(req, "rules", self.rules[sg["id"]])

    def set_rules(self, req: Request) -> Reply:
        sg = self._sg(req)
        if sg is None:
            return self.not_found("instance_security_group", req.params["sg"])
        rules = _body(req).get("rules")
        if not isinstance(rules, list):
            return self.validation_error({"rules": ["required key not provided"]})
        self.rules[sg["id"]] = [self._rule(sg["zone"], r, i + 1) for i, r in enumerate(rules)]
        return Reply(200, {"rules": self.rules[sg["id"]]})

    def create_rule(self, req: Request) -> Reply:
        sg = self._sg(req)
        if sg is None:
            return self.not_found("instance_security_group", req.params["sg"])
        rule = self._rule(sg["zone"], _body(req), len(self.rules[sg["id"]]) + 1)
        self.rules[sg["id"]].append(rule)
        return Reply(201, {"rule": rule})

    # -- servers ---------------------------------------------------------------------------

    def _rec(self, req: Request) -> InstanceRecord | None:
        try:
            rec = self.instance(req.params["id"])
        except KeyError:
            return None
        return rec if rec.exists and rec.region == req.params["zone"] else None

    def _server_json(self, rec: InstanceRecord) -> dict[str, Any]:
        state = rec.state
        a = rec.attrs
        ip = None
        if rec.ipv4 and a["dynamic_ip"] and state in ("starting", "running", "stopping"):
            ip = {
                "id": a["ip_id"],
                "address": rec.ipv4,
                "dynamic": True,
                "family": "inet",
                "provisioning_mode": "dhcp",
                "gateway": "62.210.0.1",
                "netmask": "32",
                "tags": [],
                "ipam_id": a["ip_id"],
                "state": "attached",
            }
        allowed = {
            "stopped": ["poweron", "backup"],
            "stopped_in_place": ["poweron", "backup"],
            "running": ["poweroff", "terminate", "reboot", "stop_in_place", "backup"],
        }.get(state, [])
        sg = self.security_groups.get(a.get("security_group") or "")
        image_id = self.images.get(rec.image or "")
        return {
            "id": rec.id,
            "name": rec.name,
            "organization": a["organization"],
            "project": a["project"],
            "allowed_actions": allowed,
            "tags": list(rec.tags),
            "commercial_type": rec.type,
            "creation_date": iso(rec.created_at, micros=True),
            "modification_date": iso(rec.last_change, micros=True),
            "dynamic_ip_required": a["dynamic_ip"],
            "routed_ip_enabled": True,
            "enable_ipv6": False,
            "hostname": rec.name,
            "image": {"id": image_id, "name": rec.image} if image_id else None,
            "protected": a["protected"],
            "private_ip": None,
            "public_ip": ip,
            "public_ips": [ip] if ip else [],
            "mac_address": a["mac"],
            "state": state,
            "state_detail": a.get("state_detail", {}).get(state, ""),
            "boot_type": "local",
            "volumes": a["volumes"],
            "security_group": {"id": sg["id"], "name": sg["name"]}
            if sg
            else {"id": a["default_sg"], "name": "Default security group"},
            "maintenances": [],
            "arch": "x86_64",
            "private_nics": [],
            "zone": rec.region,
            "filesystems": [],
            "end_of_service": False,
            "location": {
                "cluster_id": "1",
                "hypervisor_id": "1",
                "node_id": "1",
                "platform_id": "14",
                "zone_id": rec.region,
            },
            "ipv6": None,
            "placement_group": None,
        }

    def list_servers(self, req: Request) -> Reply:
        zone = req.params["zone"]
        project = req.arg("project")
        tags = [t for t in (req.arg("tags") or "").split(",") if t]
        name = req.arg("name")
        state = req.arg("state")
        ctype = req.arg("commercial_type")
        out = []
        for rec in self.known_instances():
            if rec.region != zone or (project and rec.attrs["project"] != project):
                continue
            if tags and not all(t in rec.tags for t in tags):  # "these exact tags": all of them
                continue
            if name and name not in rec.name:
                continue
            if (state and rec.state != state) or (ctype and rec.type != ctype):
                continue
            out.append(self._server_json(rec))
        return self._list(req, "servers", out)

    def get_server(self, req: Request) -> Reply:
        rec = self._rec(req)
        return (
            Reply(200, {"server": self._server_json(rec)})
            if rec
            else self.not_found("instance_server", req.params["id"])
        )

    def create_server(self, req: Request) -> Reply:
        body = _body(req)
        zone = req.params["zone"]
        missing = [k for k in ("commercial_type",) if not body.get(k)]
        project = body.get("project") or body.get("organization")
        if not project:
            missing.append("project")
        if missing:
            return self.validation_error({k: ["required key not provided"] for k in missing})
        types = self._types_in(zone)
        stype = types.get(str(body["commercial_type"]))
        if stype is None:
            return self.invalid(f"commercial_type {body['commercial_type']} is not available in zone {zone}")
        image = body.get("image")
        if image and image not in self.images and not any(v == image for v in self.images.values()):
            return self.not_found("instance_image", str(image))
        if not image and not body.get("volumes"):
            return self.invalid("an image or a bootable volume is required")
        volumes_in = body.get("volumes") or {"0": {"volume_type": "sbs_volume", "size": 100 * catalogs.GB}}
        if stype.gpus and any((v or {}).get("volume_type", "l_ssd") == "l_ssd" for v in volumes_in.values()):
            # GPU types allow no local volume (volumes_constraint.max_size = 0, notes §2.3).
            return self.invalid(f"{stype.name} does not support local volumes (l_ssd); use sbs_volume")
        sg_id = str(body["security_group"]) if body.get("security_group") else None
        if sg_id and (sg_id not in self.security_groups or self.security_groups[sg_id]["zone"] != zone):
            return self.not_found("instance_security_group", str(sg_id))
        if self.availability.get((zone, stype.name)) == "shortage":
            return self.capacity_error(req)

        sid = str(uuid.uuid4())
        rec = self.new_record(
            id=sid,
            type=stype.name,
            region=zone,
            name=str(body.get("name") or f"scw-{sid[:6]}"),
            tags=[str(t) for t in body.get("tags") or []],
            price_per_hour=stype.hourly,
            currency="EUR",
            billing=SCALEWAY_BILLING,
            image=str(image) if image else None,
        )
        volumes: dict[str, dict[str, Any]] = {}
        block: list[VolumeRecord] = []
        for idx, v in sorted(volumes_in.items()):
            v = v or {}
            vtype = v.get("volume_type", "sbs_volume")
            size = int(v.get("size") or 100 * catalogs.GB)
            if vtype == "sbs_volume":
                # Made in the Block API; the server JSON carries only these four keys.
                vol = VolumeRecord(
                    vendor=self.vendor,
                    id=str(uuid.uuid4()),
                    zone=zone,
                    # The real default name: "<image name>_sbs_volume_<index>".
                    name=str(v.get("name") or f"{image or 'volume'}_sbs_volume_{idx}"),
                    size=size,
                    project=str(project),
                    tags=[],
                    created_at=self.clock.now(),
                    clock=self.clock,
                    price_per_gb_hour=SBS_5K_EUR_PER_GB_HOUR,
                    server=rec,
                    detach_delay=self.timings["detach"],
                    attrs={
                        "reference_id": str(uuid.uuid4()),
                        "parent_snapshot_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"snapshot:{image}"))
                        if image
                        else None,
                        "updated_at": self.clock.now(),
                    },
                )
                block.append(vol)
                volumes[idx] = {"boot": False, "volume_type": vtype, "id": vol.id, "zone": zone}
                continue
            volumes[idx] = {
                "id": str(uuid.uuid4()),
                "name": f"{rec.name}-vol-{idx}",
                "volume_type": vtype,
                "size": size,
                "boot": idx == "0",
                "zone": zone,
                "state": "available",
                "server": {"id": sid, "name": rec.name},
            }
        mac = hashlib.md5(sid.encode()).hexdigest()
        rec.attrs.update(
            {
                "project": str(project),
                "organization": str(body.get("organization") or DEFAULT_ORG),
                "dynamic_ip": bool(body.get("dynamic_ip_required", True)),
                "protected": bool(body.get("protected")),
                "ip_id": str(uuid.uuid4()),
                "mac": "de:00:00:" + ":".join(mac[i : i + 2] for i in (0, 2, 4)),
                "volumes": volumes,
                "security_group": sg_id,
                "default_sg": str(uuid.uuid5(uuid.NAMESPACE_DNS, zone)),
                "user_data": {},
            }
        )
        rec.stuck = req.fault is not None and req.fault.kind == "stuck"
        rec.schedule(rec.created_at, "stopped")  # Scaleway creates servers stopped
        self.register(rec)
        for vol in block:
            self.ledger.add_volume(vol)
        if sg_id:
            self.security_groups[sg_id]["servers"].append({"id": sid, "name": rec.name})
        return Reply(201, {"server": self._server_json(rec)})

    def delete_server(self, req: Request) -> Reply:
        rec = self._rec(req)
        if rec is None:
            return self.not_found("instance_server", req.params["id"])
        if rec.state not in ("stopped", "stopped_in_place"):
            # DELETE needs a stopped server; terminate is the action that stops and deletes.
            return self.invalid("instance must be stopped to be deleted")
        now = self.clock.now()
        rec.cancel_after(now)
        rec.schedule(now, GONE)
        rec.deleted_at, rec.deleted_by = now, "client"
        self._close_power(rec, now)
        self._fire(self.on_delete, rec)
        return Reply(204, None, content_type=None)

    def delete_instance(self, rec: InstanceRecord, *, by: str) -> None:
        """terminate: stopping now, gone after the 'terminate' delay; billing stops now."""
        now = self.clock.now()
        rec.cancel_after(now)
        rec.schedule(now, "stopping")
        rec.attrs.setdefault("state_detail", {})["stopping"] = "terminating"
        rec.schedule(now + self.timings["terminate"], GONE)
        rec.deleted_at, rec.deleted_by = now, by
        self._close_power(rec, now)
        self._fire(self.on_delete, rec)

    def server_action(self, req: Request) -> Reply:
        rec = self._rec(req)
        if rec is None:
            return self.not_found("instance_server", req.params["id"])
        action = _body(req).get("action")
        state = rec.state
        now = self.clock.now()
        if action == "poweron":
            if state not in ("stopped", "stopped_in_place"):
                return self.invalid("server should be stopped")
            rec.cancel_after(now)
            rec.schedule(now, "starting")
            rec.attrs.setdefault("state_detail", {})["starting"] = "provisioning node"
            rec.power_intervals.append([now, None])
            if req.fault is not None and req.fault.kind == "stuck":
                rec.stuck = True
            if not rec.stuck:
                rec.schedule(now + self.timings["boot"], "running")
        elif action in ("poweroff", "stop_in_place"):
            if state != "running":
                return self.invalid("server should be running")
            rec.cancel_after(now)
            rec.schedule(now, "stopping")
            rec.schedule(
                now + self.timings["stop"], "stopped" if action == "poweroff" else "stopped_in_place"
            )
            self._close_power(rec, now)
        elif action == "reboot":
            if state != "running":
                return self.invalid("server should be running")
        elif action == "terminate":
            if rec.deleted_at is not None:
                return self.invalid("server is already being terminated")
            self.delete_instance(rec, by="client")
        else:
            return self.invalid(f"action {action!r} is not supported by the simulator")
        task: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "description": f"server_{'batch_poweron' if action == 'poweron' else action}",
            "status": "pending",
            "href_from": f"/servers/{rec.id}/action",
            "href_result": f"/servers/{rec.id}",
            "started_at": iso(now, micros=True),
            "terminated_at": None,
            "progress": 0,
            "zone": rec.region,
        }
        self.tasks[task["id"]] = task
        return Reply(202, {"task": task})

    # -- user data -------------------------------------------------------------------------

    def list_user_data(self, req: Request) -> Reply:
        rec = self._rec(req)
        if rec is None:
            return self.not_found("instance_server", req.params["id"])
        return Reply(200, {"user_data": sorted(rec.attrs["user_data"])})

    def set_user_data(self, req: Request) -> Reply:
        rec = self._rec(req)
        if rec is None:
            return self.not_found("instance_server", req.params["id"])
        ctype = req.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "text/plain":
            return self.invalid("user data must be sent with Content-Type: text/plain")
        rec.attrs["user_data"][req.params["key"]] = req.raw
        if req.params["key"] == "cloud-init":
            rec.user_data = req.raw.decode("utf-8", errors="replace")
        return Reply(204, None, content_type=None)

    def get_user_data(self, req: Request) -> Reply:
        rec = self._rec(req)
        if rec is None or req.params["key"] not in rec.attrs["user_data"]:
            return self.not_found("instance_user_data", req.params.get("key", ""))
        return Reply(200, rec.attrs["user_data"][req.params["key"]], content_type="text/plain")

    def delete_user_data(self, req: Request) -> Reply:
        rec = self._rec(req)
        if rec is None:
            return self.not_found("instance_server", req.params["id"])
        rec.attrs["user_data"].pop(req.params["key"], None)
        if req.params["key"] == "cloud-init":
            rec.user_data = None
        return Reply(204, None, content_type=None)

    # -- Block Storage v1alpha1 --------------------------------------------------------------

    def volumes(self) -> list[VolumeRecord]:
        """Every Block Storage volume the API still knows (deleted ones answer 404)."""
        return [v for v in self.ledger.volumes(self.vendor) if v.exists]

    def _vol(self, req: Request) -> VolumeRecord | None:
        try:
            vol = self.ledger.volume(req.params["vol"], self.vendor)
        except KeyError:
            return None
        return vol if vol.exists and vol.zone == req.params["zone"] else None

    def _volume_json(self, v: VolumeRecord) -> dict[str, Any]:
        """The Block API's Volume, unwrapped (the SDK unmarshals the body itself as a Volume)."""
        attachment = v.attachment
        refs = []
        if attachment is not None and v.server is not None:
            refs.append(
                {
                    "id": v.attrs["reference_id"],
                    "product_resource_type": "instance_server",
                    "product_resource_id": v.server.id,
                    "created_at": _zulu(v.created_at),
                    "type": "exclusive",
                    "status": attachment,
                }
            )
        detached = v.detached_at
        updated = max(t for t in (v.attrs.get("updated_at", v.created_at), detached) if t is not None)
        return {
            "id": v.id,
            "name": v.name,
            "type": "sbs_5k",
            "size": v.size,
            "project_id": v.project,
            "created_at": _zulu(v.created_at),
            "updated_at": _zulu(updated),
            "references": refs,
            "parent_snapshot_id": v.attrs.get("parent_snapshot_id"),
            "status": v.status,
            "tags": list(v.tags),
            "specs": {"perf_iops": 5000, "class": "sbs"},
            "last_detached_at": _zulu(detached) if detached is not None else None,
            "zone": v.zone,
        }

    def list_volumes(self, req: Request) -> Reply:
        zone = req.params["zone"]
        project = req.arg("project_id")
        name = req.arg("name")
        # The SDK repeats the parameter for each tag; "only volumes with one or more matching
        # tags will be returned" (SDK docstring): any, not all.
        tags = [t for t in req.query.get("tags", []) if t]
        resource = req.arg("product_resource_id")
        out = []
        # Oldest first (the API's default order); a stable sort keeps creation order on ties.
        for v in sorted(self.volumes(), key=lambda v: v.created_at):
            if v.zone != zone or (project and v.project != project):
                continue
            if name and name not in v.name:
                continue
            if tags and not any(t in v.tags for t in tags):
                continue
            if resource and (v.attachment is None or v.server is None or v.server.id != resource):
                continue
            out.append(self._volume_json(v))
        if req.arg("order_by", "created_at_asc") == "created_at_desc":
            out.reverse()
        pages = self._pages(req, 50, size="page_size")
        if isinstance(pages, Reply):
            return pages
        page, size = pages
        # A newer API generation: total_count in the body, like IAM (no X-Total-Count header).
        return Reply(200, {"volumes": out[(page - 1) * size : page * size], "total_count": len(out)})

    def get_volume(self, req: Request) -> Reply:
        vol = self._vol(req)
        return Reply(200, self._volume_json(vol)) if vol else self.not_found("volume", req.params["vol"])

    def update_volume(self, req: Request) -> Reply:
        vol = self._vol(req)
        if vol is None:
            return self.not_found("volume", req.params["vol"])
        body = _body(req)
        if "size" in body:
            size = int(body["size"] or 0)
            if size < vol.size:
                return self.invalid("a volume can only be resized to a larger size")
            vol.size = size
        if "name" in body:
            vol.name = str(body["name"])
        if "tags" in body:
            vol.tags = [str(t) for t in body["tags"] or []]
        vol.attrs["updated_at"] = self.clock.now()
        return Reply(200, self._volume_json(vol))

    def delete_volume(self, req: Request) -> Reply:
        vol = self._vol(req)
        if vol is None:
            return self.not_found("volume", req.params["vol"])
        if vol.status != "available":
            return self.error(
                IN_USE_STATUS,
                "precondition_failed",
                "resource is still in use",
                precondition="resource_still_in_use",
                help_message="detach the volume (delete its Instance) before deleting it",
            )
        vol.deleted_at, vol.deleted_by = self.clock.now(), "client"
        return Reply(204, None, content_type=None)

    # -- IAM ssh keys ----------------------------------------------------------------------

    def list_keys(self, req: Request) -> Reply:
        project = req.arg("project_id")
        items = [k for k in self.ssh_keys if project in (None, k["project_id"])]
        # The IAM API's page size parameter is page_size (what the SDK sends); per_page is
        # accepted too, as the Instance API's name.
        size = "page_size" if req.arg("page_size") is not None else "per_page"
        pages = self._pages(req, 20, size=size)
        if isinstance(pages, Reply):
            return pages
        page, per_page = pages
        # IAM (a newer API generation) puts total_count in the body, not in a header.
        return Reply(
            200, {"ssh_keys": items[(page - 1) * per_page : page * per_page], "total_count": len(items)}
        )

    def get_key(self, req: Request) -> Reply:
        key = next((k for k in self.ssh_keys if k["id"] == req.params["key"]), None)
        return Reply(200, key) if key else self.not_found("iam_ssh_key", req.params["key"])

    def delete_key(self, req: Request) -> Reply:
        before = len(self.ssh_keys)
        self.ssh_keys = [k for k in self.ssh_keys if k["id"] != req.params["key"]]
        if len(self.ssh_keys) == before:
            return self.not_found("iam_ssh_key", req.params["key"])
        return Reply(204, None, content_type=None)

    # -- IAM applications, policies and API keys (the watchdog's credential) ----------------

    def _application_json(self, app: dict[str, Any]) -> dict[str, Any]:
        n = sum(1 for k in self.api_keys.values() if k.application_id == app["id"])
        return {**app, "nb_api_keys": n}

    def create_application(self, req: Request) -> Reply:
        body = _body(req)
        if not str(body.get("name") or ""):
            return self.validation_error({"name": ["required key not provided"]})
        now = iso(self.clock.now(), micros=True)
        app = {
            "id": str(uuid.uuid4()),
            "name": str(body["name"]),
            "description": str(body.get("description") or ""),
            "organization_id": str(body.get("organization_id") or DEFAULT_ORG),
            "editable": True,
            "deletable": True,
            "managed": False,
            "tags": list(body.get("tags") or []),
            "created_at": now,
            "updated_at": now,
        }
        self.applications[app["id"]] = app
        return Reply(200, self._application_json(app))

    def get_application(self, req: Request) -> Reply:
        app = self.applications.get(req.params["app"])
        return (
            Reply(200, self._application_json(app))
            if app
            else self.not_found("application", req.params["app"])
        )

    def delete_application(self, req: Request) -> Reply:
        app = self.applications.pop(req.params["app"], None)
        if app is None:
            return self.not_found("application", req.params["app"])
        # The SDK: deleting an application "will automatically delete the application's API keys".
        self.api_keys = {a: k for a, k in self.api_keys.items() if k.application_id != app["id"]}
        return Reply(204, None, content_type=None)

    def _policy_json(self, policy: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in policy.items() if not k.startswith("_")}
        rules: list[IamRule] = policy["_rules"]
        out["nb_rules"] = len(rules)
        out["nb_scopes"] = sum(max(1, len(r.project_ids)) for r in rules)
        out["nb_permission_sets"] = sum(len(r.permission_set_names) for r in rules)
        return out

    def create_policy(self, req: Request) -> Reply:
        body = _body(req)
        app_id = body.get("application_id")
        if app_id is not None and app_id not in self.applications:
            return self.not_found("application", str(app_id))
        rules = []
        for r in body.get("rules") or []:
            unknown = [n for n in r.get("permission_set_names") or [] if n not in PERMISSION_SETS]
            if unknown:
                return self.validation_error(
                    {"rules.permission_set_names": [f"unknown: {', '.join(unknown)}"]}
                )
            rules.append(
                IamRule(
                    list(r.get("permission_set_names") or []),
                    list(r.get("project_ids") or []),
                    r.get("organization_id"),
                )
            )
        now = iso(self.clock.now(), micros=True)
        policy = {
            "id": str(uuid.uuid4()),
            "name": str(body.get("name") or "policy"),
            "description": str(body.get("description") or ""),
            "organization_id": str(body.get("organization_id") or DEFAULT_ORG),
            "editable": True,
            "deletable": True,
            "managed": False,
            "tags": list(body.get("tags") or []),
            "application_id": app_id,
            "created_at": now,
            "updated_at": now,
            "_rules": rules,
        }
        self.policies[policy["id"]] = policy
        return Reply(200, self._policy_json(policy))

    def get_policy(self, req: Request) -> Reply:
        policy = self.policies.get(req.params["policy"])
        return (
            Reply(200, self._policy_json(policy))
            if policy
            else self.not_found("policy", req.params["policy"])
        )

    def delete_policy(self, req: Request) -> Reply:
        if self.policies.pop(req.params["policy"], None) is None:
            return self.not_found("policy", req.params["policy"])
        return Reply(204, None, content_type=None)

    def _api_key_json(self, key: IamApiKey, *, with_secret: bool) -> dict[str, Any]:
        return {
            "access_key": key.access_key,
            # The secret key is shown in the create answer only.
            "secret_key": key.secret_key if with_secret else None,
            "application_id": key.application_id,
            "user_id": None,
            "description": key.description,
            "default_project_id": key.default_project_id,
            "editable": True,
            "deletable": True,
            "managed": False,
            "creation_ip": "127.0.0.1",
            "created_at": iso(key.created_at, micros=True),
            "updated_at": iso(key.created_at, micros=True),
            "expires_at": iso(key.expires_at, micros=True) if key.expires_at is not None else None,
        }

    def create_api_key(self, req: Request) -> Reply:
        body = _body(req)
        app_id = str(body.get("application_id") or "")
        if app_id not in self.applications:
            # guess: API keys for users are out of scope here; an unknown application is a 404.
            return self.not_found("application", app_id)
        expires_at: float | None = None
        if body.get("expires_at"):
            try:
                when = dt.datetime.fromisoformat(str(body["expires_at"]).replace("Z", "+00:00"))
            except ValueError:
                return self.validation_error({"expires_at": ["invalid date-time"]})
            if when.tzinfo is None:
                return self.validation_error({"expires_at": ["a time zone is required"]})
            expires_at = when.timestamp()
            if expires_at <= self.clock.now():
                return self.validation_error({"expires_at": ["must be in the future"]})
        key = IamApiKey(
            access_key=_access_key(),
            secret_key=str(uuid.uuid4()),
            application_id=app_id,
            description=str(body.get("description") or ""),
            default_project_id=str(body.get("default_project_id") or ""),
            created_at=self.clock.now(),
            expires_at=expires_at,
        )
        self.api_keys[key.access_key] = key
        return Reply(200, self._api_key_json(key, with_secret=True))

    def get_api_key(self, req: Request) -> Reply:
        key = self.api_keys.get(req.params["access"])
        if key is None:
            return self.not_found("api_key", req.params["access"])
        return Reply(200, self._api_key_json(key, with_secret=False))

    def delete_api_key(self, req: Request) -> Reply:
        if self.api_keys.pop(req.params["access"], None) is None:
            return self.not_found("api_key", req.params["access"])
        return Reply(204, None, content_type=None)

    def create_key(self, req: Request) -> Reply:
        body = _body(req)
        public_key = str(body.get("public_key") or "").strip()
        parts = public_key.split()
        try:
            blob = base64.b64decode(parts[1], validate=True) if len(parts) >= 2 else b""
        except (binascii.Error, ValueError):
            blob = b""
        if not blob or not re.match(r"^(ssh-|ecdsa-|sk-)", parts[0]):
            return self.validation_error({"public_key": ["invalid public key"]})
        project = body.get("project_id")
        if not project or not UUID_RE.match(str(project)):
            return self.validation_error({"project_id": ["required key not provided"]})
        if any(k["public_key"].split()[:2] == parts[:2] for k in self.ssh_keys):
            return self.error(409, "conflict", "ssh key already exists", resource="iam_ssh_key")
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        now = iso(self.clock.now(), micros=True)
        key = {
            "id": str(uuid.uuid4()),
            "name": str(body.get("name") or "key"),
            "public_key": public_key,
            # Format guessed after OpenSSH's "<bits> SHA256:<b64> (<type>)".
            "fingerprint": f"256 SHA256:{digest} ({parts[0]})",
            "organization_id": DEFAULT_ORG,
            "project_id": str(project),
            "disabled": False,
            "created_at": now,
            "updated_at": now,
        }
        self.ssh_keys.append(key)
        return Reply(200, key)


def _access_key() -> str:
    return "SCW" + "".join(random.choices(string.ascii_uppercase + string.digits, k=17))


def _zulu(ts: float) -> str:
    """The Block API's timestamps: microseconds and a Z (``2025-06-11T13:49:56.268067Z``)."""
    return iso(ts, micros=True).replace("+00:00", "Z")


def _body(req: Request) -> dict[str, Any]:
    try:
        body = req.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
