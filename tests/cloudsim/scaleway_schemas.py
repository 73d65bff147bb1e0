"""Hand-written JSON Schemas for the Scaleway calls maider makes (no public spec is stored here).

Shapes come from the notes (§2.3), the wire capture of the scaleway SDK 2.12.0 and the SDK's own
dataclasses (scaleway/instance/v1/types.py, scaleway/iam/v1alpha1/types.py,
scaleway/block/v1alpha1/types.py), and for Block Storage also a real recording (scaleway-cli's
cassette test-create-server-volumes-create-sbs-root-volume, 2025-06-11). Request bodies are
closed (``additionalProperties: false``) so a typo in maider's call is caught; responses list
the fields the SDK reads as required and stay open, like the real API's growing objects.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

UUID = {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
ZONE = {"type": "string", "pattern": "^[a-z]{2}-[a-z]{3}-[1-9]$"}
NUUID = {"anyOf": [{"type": "null"}, UUID]}
DATE = {"type": "string", "format": "date-time"}
NDATE = {"type": ["string", "null"], "format": "date-time"}
TAGS = {"type": "array", "items": {"type": "string"}}
STATES = ["running", "stopped", "stopped_in_place", "starting", "stopping", "locked"]
ACTIONS = ["poweron", "backup", "stop_in_place", "poweroff", "terminate", "reboot", "enable_routed_ip"]


def _obj(required: list[str], props: dict[str, Any], *, closed: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": props}
    if closed:
        schema["additionalProperties"] = False
    return schema


ERROR = _obj(
    ["message", "type"],
    {
        "message": {"type": "string"},
        "type": {"type": "string"},
        "resource": {"type": "string"},
        "resource_id": {"type": "string"},
        "fields": {"type": "object"},
    },
)

SERVER_IP = _obj(
    ["id", "address", "dynamic", "family", "provisioning_mode"],
    {
        "id": UUID,
        "address": {"type": "string", "format": "ipv4"},
        "dynamic": {"type": "boolean"},
        "family": {"enum": ["inet", "inet6"]},
        "provisioning_mode": {"enum": ["manual", "dhcp", "slaac"]},
        "gateway": {"type": ["string", "null"]},
        "netmask": {"type": "string"},
        "tags": TAGS,
        "state": {"enum": ["unknown_state", "detached", "attached", "pending", "error"]},
    },
)
VOLUME_SERVER = _obj(
    ["id", "volume_type", "boot", "zone"],
    {
        "id": UUID,
        "volume_type": {"enum": ["l_ssd", "b_ssd", "sbs_volume", "scratch"]},
        "boot": {"type": "boolean"},
        "zone": ZONE,
        "size": {"type": ["integer", "null"]},
        "name": {"type": ["string", "null"]},
    },
)
SERVER = _obj(
    [
        "id",
        "name",
        "organization",
        "project",
        "allowed_actions",
        "tags",
        "commercial_type",
        "dynamic_ip_required",
        "hostname",
        "protected",
        "public_ips",
        "state",
        "volumes",
        "zone",
        "arch",
        "creation_date",
        "modification_date",
        "security_group",
        "state_detail",
        "boot_type",
        "end_of_service",
    ],
    {
        "id": UUID,
        "name": {"type": "string"},
        "organization": UUID,
        "project": UUID,
        "allowed_actions": {"type": "array", "items": {"enum": ACTIONS}},
        "tags": TAGS,
        "commercial_type": {"type": "string"},
        "dynamic_ip_required": {"type": "boolean"},
        "hostname": {"type": "string"},
        "protected": {"type": "boolean"},
        "public_ips": {"type": "array", "items": SERVER_IP},
        "public_ip": {"anyOf": [{"type": "null"}, SERVER_IP]},
        "state": {"enum": STATES},
        "state_detail": {"type": "string"},
        "volumes": {"type": "object", "additionalProperties": VOLUME_SERVER},
        "zone": ZONE,
        "arch": {"enum": ["x86_64", "arm", "arm64"]},
        "creation_date": DATE,
        "modification_date": DATE,
        "security_group": _obj(["id", "name"], {"id": UUID, "name": {"type": "string"}}),
        "image": {
            "anyOf": [{"type": "null"}, _obj(["id", "name"], {"id": UUID, "name": {"type": "string"}})]
        },
        "boot_type": {"enum": ["local", "bootscript", "rescue"]},
        "end_of_service": {"type": "boolean"},
        "mac_address": {"type": "string"},
        "private_nics": {"type": "array"},
        "maintenances": {"type": "array"},
        "filesystems": {"type": "array"},
        "enable_ipv6": {"type": ["boolean", "null"]},
        "routed_ip_enabled": {"type": ["boolean", "null"]},
    },
)
SERVER_TYPE = _obj(
    ["hourly_price", "ncpus", "ram", "arch", "gpu", "alt_names", "end_of_service", "volumes_constraint"],
    {
        "hourly_price": {"type": "number"},
        "monthly_price": {"type": ["number", "null"]},
        "ncpus": {"type": "integer"},
        "ram": {"type": "integer"},
        "arch": {"enum": ["x86_64", "arm", "arm64"]},
        "gpu": {"type": ["integer", "null"]},
        "alt_names": TAGS,
        "end_of_service": {"type": "boolean"},
        "gpu_info": {
            "anyOf": [
                {"type": "null"},
                _obj(
                    ["gpu_manufacturer", "gpu_name", "gpu_memory"],
                    {
                        "gpu_manufacturer": {"type": "string"},
                        "gpu_name": {"type": "string"},
                        "gpu_memory": {"type": "integer"},
                    },
                ),
            ]
        },
        "volumes_constraint": _obj(
            ["min_size", "max_size"], {"min_size": {"type": "integer"}, "max_size": {"type": "integer"}}
        ),
        "mig_profile": {"type": ["string", "null"]},
        "scratch_storage_max_size": {"type": ["integer", "null"]},
    },
)
TASK = _obj(
    ["id", "description", "status", "href_from", "href_result", "progress", "zone"],
    {
        "id": UUID,
        "description": {"type": "string"},
        "status": {"enum": ["pending", "started", "success", "failure", "retry"]},
        "href_from": {"type": "string"},
        "href_result": {"type": "string"},
        "progress": {"type": "integer"},
        "zone": ZONE,
        "started_at": NDATE,
        "terminated_at": NDATE,
    },
)
RULE = _obj(
    ["id", "protocol", "direction", "action", "ip_range", "position", "editable", "zone"],
    {
        "id": UUID,
        "protocol": {"enum": ["TCP", "UDP", "ICMP", "ANY"]},
        "direction": {"enum": ["inbound", "outbound"]},
        "action": {"enum": ["accept", "drop"]},
        "ip_range": {"type": "string"},
        "position": {"type": "integer"},
        "editable": {"type": "boolean"},
        "zone": ZONE,
        "dest_port_from": {"type": ["integer", "null"]},
        "dest_port_to": {"type": ["integer", "null"]},
    },
)
SECURITY_GROUP = _obj(
    [
        "id",
        "name",
        "description",
        "inbound_default_policy",
        "outbound_default_policy",
        "project",
        "organization",
        "tags",
        "stateful",
        "state",
        "zone",
        "servers",
        "project_default",
        "enable_default_security",
    ],
    {
        "id": UUID,
        "name": {"type": "string"},
        "description": {"type": "string"},
        "inbound_default_policy": {"enum": ["accept", "drop"]},
        "outbound_default_policy": {"enum": ["accept", "drop"]},
        "project": UUID,
        "organization": UUID,
        "tags": TAGS,
        "stateful": {"type": "boolean"},
        "state": {"enum": ["available", "syncing", "syncing_error"]},
        "zone": ZONE,
        "servers": {"type": "array", "items": _obj(["id", "name"], {"id": UUID, "name": {"type": "string"}})},
        "project_default": {"type": "boolean"},
        "enable_default_security": {"type": "boolean"},
        "creation_date": NDATE,
        "modification_date": NDATE,
    },
)
SSH_KEY = _obj(
    ["id", "name", "public_key", "fingerprint", "organization_id", "project_id", "disabled"],
    {
        "id": UUID,
        "name": {"type": "string"},
        "public_key": {"type": "string"},
        "fingerprint": {"type": "string"},
        "organization_id": UUID,
        "project_id": UUID,
        "disabled": {"type": "boolean"},
        "created_at": NDATE,
        "updated_at": NDATE,
    },
)

# Block Storage v1alpha1 (enums from scaleway/block/v1alpha1/types.py).
VOLUME_STATUSES = [
    "unknown_status",
    "creating",
    "available",
    "in_use",
    "deleting",
    "deleted",
    "resizing",
    "error",
    "snapshotting",
    "locked",
    "updating",
]
REFERENCE = _obj(
    ["id", "product_resource_type", "product_resource_id", "type", "status"],
    {
        "id": UUID,
        "product_resource_type": {"type": "string"},
        "product_resource_id": UUID,
        "type": {"enum": ["unknown_type", "link", "exclusive", "read_only"]},
        "status": {
            "enum": ["unknown_status", "attaching", "attached", "detaching", "detached", "creating", "error"]
        },
        "created_at": NDATE,
    },
)
BLOCK_VOLUME = _obj(
    [
        "id",
        "name",
        "type",
        "size",
        "project_id",
        "references",
        "status",
        "tags",
        "zone",
        "created_at",
        "updated_at",
        "specs",
        "last_detached_at",
        "parent_snapshot_id",
    ],
    {
        "id": UUID,
        "name": {"type": "string"},
        "type": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "project_id": UUID,
        "references": {"type": "array", "items": REFERENCE},
        "status": {"enum": VOLUME_STATUSES},
        "tags": TAGS,
        "zone": ZONE,
        "created_at": NDATE,
        "updated_at": NDATE,
        "last_detached_at": NDATE,
        "parent_snapshot_id": NUUID,
        "specs": {
            "anyOf": [
                {"type": "null"},
                _obj(
                    ["class"],
                    {
                        "class": {"enum": ["unknown_storage_class", "unspecified", "bssd", "sbs"]},
                        "perf_iops": {"type": ["integer", "null"]},
                    },
                ),
            ]
        },
    },
)

# -- request bodies ------------------------------------------------------------------------

VOLUME_TEMPLATE = _obj(
    [],
    {
        "id": UUID,
        "name": {"type": "string"},
        "size": {"type": "integer", "minimum": 1},
        "volume_type": {"enum": ["l_ssd", "b_ssd", "sbs_volume", "scratch"]},
        "base_snapshot": UUID,
        "project": UUID,
        "organization": UUID,
        "boot": {"type": "boolean"},
    },
    closed=True,
)
CREATE_SERVER = _obj(
    ["commercial_type"],
    {
        "project": UUID,
        "organization": UUID,
        "commercial_type": {"type": "string", "minLength": 1},
        "name": {"type": "string"},
        "dynamic_ip_required": {"type": "boolean"},
        "routed_ip_enabled": {"type": "boolean"},
        "image": {"type": "string"},
        "volumes": {"type": "object", "additionalProperties": VOLUME_TEMPLATE},
        "enable_ipv6": {"type": "boolean"},
        "protected": {"type": "boolean"},
        "public_ip": UUID,
        "public_ips": {"type": "array", "items": UUID},
        "boot_type": {"enum": ["local", "bootscript", "rescue"]},
        "tags": TAGS,
        "security_group": UUID,
        "placement_group": UUID,
        "admin_password_encryption_ssh_key_id": UUID,
    },
    closed=True,
)
SERVER_ACTION = _obj(
    ["action"],
    {
        "action": {"enum": ACTIONS},
        "name": {"type": "string"},
        "volumes": {"type": "object"},
        "disable_ipv6": {"type": "boolean"},
    },
    closed=True,
)
CREATE_SG = _obj(
    ["name"],
    {
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "project": UUID,
        "organization": UUID,
        "tags": TAGS,
        "organization_default": {"type": "boolean"},
        "project_default": {"type": "boolean"},
        "stateful": {"type": "boolean"},
        "inbound_default_policy": {"enum": ["accept", "drop"]},
        "outbound_default_policy": {"enum": ["accept", "drop"]},
        "enable_default_security": {"type": "boolean"},
    },
    closed=True,
)
RULE_IN = _obj(
    ["action", "protocol", "direction", "ip_range"],
    {
        "id": UUID,
        "action": {"enum": ["accept", "drop"]},
        "protocol": {"enum": ["TCP", "UDP", "ICMP", "ANY"]},
        "direction": {"enum": ["inbound", "outbound"]},
        "ip_range": {"type": "string"},
        "dest_port_from": {"type": ["integer", "null"], "minimum": 0, "maximum": 65535},
        "dest_port_to": {"type": ["integer", "null"], "minimum": 0, "maximum": 65535},
        "position": {"type": "integer"},
        "editable": {"type": ["boolean", "null"]},
        "zone": ZONE,
    },
    closed=True,
)
SET_RULES = _obj(["rules"], {"rules": {"type": "array", "items": RULE_IN}}, closed=True)
UPDATE_SG = _obj(
    [],
    {
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "enable_default_security": {"type": "boolean"},
        "inbound_default_policy": {"enum": ["accept", "drop"]},
        "outbound_default_policy": {"enum": ["accept", "drop"]},
        "tags": TAGS,
        "organization_default": {"type": "boolean"},
        "project_default": {"type": "boolean"},
        "stateful": {"type": "boolean"},
    },
    closed=True,
)
UPDATE_VOLUME = _obj(
    [],
    {
        "name": {"type": "string"},
        "size": {"type": "integer", "minimum": 1},
        "tags": TAGS,
        "perf_iops": {"type": "integer", "minimum": 0},
    },
    closed=True,
)
CREATE_SSH_KEY = _obj(
    ["public_key"],
    {"name": {"type": "string"}, "public_key": {"type": "string", "minLength": 1}, "project_id": UUID},
    closed=True,
)
EMPTY = {"anyOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}]}  # the SDK's {} on GET/DELETE

# IAM applications, policies and API keys: the watchdog's credential. Shapes from the SDK's
# dataclasses and marshalling (scaleway/iam/v1alpha1/types.py, marshalling.py); the permission
# set names are Scaleway's documented ones (e.g. InstancesFullAccess).
ACCESS_KEY = {"type": "string", "pattern": "^SCW[A-Z0-9]{17}$"}
CREATE_APPLICATION = _obj(
    ["name", "description", "organization_id"],
    {
        "name": {"type": "string", "minLength": 1, "maxLength": 64},
        "description": {"type": "string", "maxLength": 200},
        "organization_id": UUID,
        "tags": TAGS,
    },
    closed=True,
)
APPLICATION = _obj(
    [
        "id",
        "name",
        "description",
        "organization_id",
        "editable",
        "deletable",
        "managed",
        "nb_api_keys",
        "tags",
    ],
    {
        "id": UUID,
        "name": {"type": "string"},
        "description": {"type": "string"},
        "organization_id": UUID,
        "editable": {"type": "boolean"},
        "deletable": {"type": "boolean"},
        "managed": {"type": "boolean"},
        "nb_api_keys": {"type": "integer"},
        "tags": TAGS,
        "created_at": NDATE,
        "updated_at": NDATE,
    },
)
RULE_SPECS = {
    "type": "object",
    "properties": {
        "permission_set_names": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "project_ids": {"type": "array", "items": UUID, "minItems": 1},
        "organization_id": UUID,
        "condition": {"type": "string"},
    },
    "required": ["permission_set_names"],
    "additionalProperties": False,
    # One of: the rule is scoped to projects, or to the whole organization.
    "oneOf": [{"required": ["project_ids"]}, {"required": ["organization_id"]}],
}
CREATE_POLICY = {
    **_obj(
        ["name", "description", "organization_id"],
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "description": {"type": "string", "maxLength": 200},
            "organization_id": UUID,
            "rules": {"type": "array", "items": RULE_SPECS},
            "tags": TAGS,
            "user_id": UUID,
            "group_id": UUID,
            "application_id": UUID,
            "no_principal": {"type": "boolean"},
        },
        closed=True,
    ),
    # One principal at most (the SDK's one-of).
    "not": {
        "anyOf": [{"required": ["application_id", "user_id"]}, {"required": ["application_id", "group_id"]}]
    },
}
POLICY = _obj(
    ["id", "name", "description", "organization_id", "editable", "deletable", "managed", "nb_rules",
     "nb_scopes", "nb_permission_sets", "tags"],
    {
        "id": UUID,
        "name": {"type": "string"},
        "description": {"type": "string"},
        "organization_id": UUID,
        "editable": {"type": "boolean"},
        "deletable": {"type": "boolean"},
        "managed": {"type": "boolean"},
        "nb_rules": {"type": "integer"},
        "nb_scopes": {"type": "integer"},
        "nb_permission_sets": {"type": "integer"},
        "tags": TAGS,
        "application_id": NUUID,
        "created_at": NDATE,
        "updated_at": NDATE,
    },
)  # fmt: skip
CREATE_API_KEY = _obj(
    ["description"],
    {
        "application_id": UUID,
        "user_id": UUID,
        "description": {"type": "string", "maxLength": 200},
        "expires_at": DATE,
        "default_project_id": UUID,
    },
    closed=True,
)
API_KEY = _obj(
    ["access_key", "description", "default_project_id", "editable", "deletable", "managed", "creation_ip"],
    {
        "access_key": ACCESS_KEY,
        "secret_key": {"anyOf": [{"type": "null"}, UUID]},
        "description": {"type": "string"},
        "default_project_id": UUID,
        "application_id": NUUID,
        "user_id": NUUID,
        "editable": {"type": "boolean"},
        "deletable": {"type": "boolean"},
        "managed": {"type": "boolean"},
        "creation_ip": {"type": "string"},
        "created_at": NDATE,
        "updated_at": NDATE,
        "expires_at": NDATE,
    },
)


def _list_of(key: str, item: dict[str, Any], *, map_: bool = False, total: bool = False) -> dict[str, Any]:
    coll = {"type": "object", "additionalProperties": item} if map_ else {"type": "array", "items": item}
    props = {key: coll}
    req = [key]
    if total:
        props["total_count"] = {"type": "integer"}
        req.append("total_count")
    return _obj(req, props)


Z = r"/instance/v1/zones/[a-z]{2}-[a-z]{3}-[1-9]"
B = r"/block/v1alpha1/zones/[a-z]{2}-[a-z]{3}-[1-9]"
U = r"[0-9a-f-]{36}"
AVAILABILITY = _obj(["availability"], {"availability": {"enum": ["available", "scarce", "shortage"]}})

#: (method, path regex) -> (request body schema or None for "read and ignore", {status: schema})
OPERATIONS: list[tuple[str, str, dict[str, Any] | None, dict[int, dict[str, Any] | None]]] = [
    ("GET", Z + "/products/servers", EMPTY, {200: _list_of("servers", SERVER_TYPE, map_=True)}),
    ("GET", Z + "/products/servers/availability", EMPTY, {200: _list_of("servers", AVAILABILITY, map_=True)}),
    ("GET", Z + "/security_groups", EMPTY, {200: _list_of("security_groups", SECURITY_GROUP)}),
    (
        "POST",
        Z + "/security_groups",
        CREATE_SG,
        {201: _obj(["security_group"], {"security_group": SECURITY_GROUP})},
    ),
    (
        "GET",
        Z + f"/security_groups/{U}",
        EMPTY,
        {200: _obj(["security_group"], {"security_group": SECURITY_GROUP})},
    ),
    (
        "PATCH",
        Z + f"/security_groups/{U}",
        UPDATE_SG,
        {200: _obj(["security_group"], {"security_group": SECURITY_GROUP})},
    ),
    ("GET", Z + f"/security_groups/{U}/rules", EMPTY, {200: _list_of("rules", RULE)}),
    ("PUT", Z + f"/security_groups/{U}/rules", SET_RULES, {200: _list_of("rules", RULE)}),
    ("POST", Z + f"/security_groups/{U}/rules", RULE_IN, {201: _obj(["rule"], {"rule": RULE})}),
    ("GET", Z + "/servers", EMPTY, {200: _list_of("servers", SERVER)}),
    ("POST", Z + "/servers", CREATE_SERVER, {201: _obj(["server"], {"server": SERVER})}),
    ("GET", Z + f"/servers/{U}", EMPTY, {200: _obj(["server"], {"server": SERVER})}),
    ("DELETE", Z + f"/servers/{U}", EMPTY, {204: None}),
    ("POST", Z + f"/servers/{U}/action", SERVER_ACTION, {202: _obj(["task"], {"task": TASK})}),
    ("GET", Z + f"/servers/{U}/user_data", EMPTY, {200: _obj(["user_data"], {"user_data": TAGS})}),
    ("PATCH", Z + f"/servers/{U}/user_data/[A-Za-z0-9_-]+", None, {204: None}),
    ("GET", Z + f"/servers/{U}/user_data/[A-Za-z0-9_-]+", EMPTY, {200: None}),
    ("DELETE", Z + f"/servers/{U}/user_data/[A-Za-z0-9_-]+", EMPTY, {204: None}),
    ("GET", B + "/volumes", EMPTY, {200: _list_of("volumes", BLOCK_VOLUME, total=True)}),
    ("GET", B + f"/volumes/{U}", EMPTY, {200: BLOCK_VOLUME}),
    ("PATCH", B + f"/volumes/{U}", UPDATE_VOLUME, {200: BLOCK_VOLUME}),
    ("DELETE", B + f"/volumes/{U}", EMPTY, {204: None}),
    ("GET", "/iam/v1alpha1/ssh-keys", EMPTY, {200: _list_of("ssh_keys", SSH_KEY, total=True)}),
    ("POST", "/iam/v1alpha1/ssh-keys", CREATE_SSH_KEY, {200: SSH_KEY}),
    ("GET", f"/iam/v1alpha1/ssh-keys/{U}", EMPTY, {200: SSH_KEY}),
    ("DELETE", f"/iam/v1alpha1/ssh-keys/{U}", EMPTY, {204: None}),
    ("POST", "/iam/v1alpha1/applications", CREATE_APPLICATION, {200: APPLICATION}),
    ("GET", f"/iam/v1alpha1/applications/{U}", EMPTY, {200: APPLICATION}),
    ("DELETE", f"/iam/v1alpha1/applications/{U}", EMPTY, {204: None}),
    ("POST", "/iam/v1alpha1/policies", CREATE_POLICY, {200: POLICY}),
    ("GET", f"/iam/v1alpha1/policies/{U}", EMPTY, {200: POLICY}),
    ("DELETE", f"/iam/v1alpha1/policies/{U}", EMPTY, {204: None}),
    ("POST", "/iam/v1alpha1/api-keys", CREATE_API_KEY, {200: API_KEY}),
    ("GET", "/iam/v1alpha1/api-keys/SCW[A-Z0-9]{17}", EMPTY, {200: API_KEY}),
    ("DELETE", "/iam/v1alpha1/api-keys/SCW[A-Z0-9]{17}", EMPTY, {204: None}),
]


class ScalewayChecker:
    """Same interface as spec.OpenAPIChecker, over the schemas above."""

    def __init__(self) -> None:
        from jsonschema import Draft202012Validator

        fmt = Draft202012Validator.FORMAT_CHECKER
        self._ops = [
            (
                m,
                re.compile(p),
                Draft202012Validator(rq, format_checker=fmt) if rq else None,
                {s: Draft202012Validator(sc, format_checker=fmt) if sc else None for s, sc in rs.items()},
            )
            for m, p, rq, rs in OPERATIONS
        ]
        self._error = Draft202012Validator(ERROR, format_checker=fmt)
        self._lock = threading.Lock()

    def _op(self, method: str, path: str) -> Any:
        for m, p, rq, rs in self._ops:
            if m == method and p.fullmatch(path):
                return rq, rs
        return None

    @staticmethod
    def _errors(validator: Any, data: Any) -> list[str]:
        out = []
        for err in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in err.absolute_path) or "<root>"
            out.append(f"at {where}: {err.message[:300]}")
        return out

    def check_request(
        self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> list[str]:
        import json

        op = self._op(method, path)
        if op is None:
            return [f"{method} {path} is not a documented operation"]
        validator = op[0]
        if validator is None:
            return []
        try:
            data = json.loads(body) if body else None
        except ValueError:
            return ["request body is not JSON"]
        with self._lock:
            return self._errors(validator, data)

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
        import json

        op = self._op(method, path)
        if status >= 400:
            validator = self._error
        elif op is None:
            return [f"{method} {path} is not a documented operation"]
        elif status not in op[1]:
            return [f"status {status} is not a documented answer of {method} {path}"]
        else:
            validator = op[1][status]
            if validator is None:
                if status == 204 and response_body:
                    return ["a 204 answer must have no body"]
                return []
        try:
            data = json.loads(response_body)
        except ValueError:
            return ["response body is not JSON"]
        with self._lock:
            return self._errors(validator, data)
