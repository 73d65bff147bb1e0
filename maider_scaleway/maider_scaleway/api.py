"""The scaleway SDK boundary: building the API objects, request timeouts and error translation.

Importing this module loads the SDK (about 200 ms, shared notes §3), so ``provider.py`` imports
it only inside its network methods; the module-level SDK imports below are therefore fine.

Request timeouts. ``scaleway_core.api.API._request`` calls the module-level
``requests.request(...)`` without a ``timeout`` (shared notes §1.3): no session, adapter or
setting of the SDK could add one. So the name ``requests`` inside ``scaleway_core.api`` is
replaced, once, by :class:`_TimeoutRequests`, which forwards everything to the real module. Its
``request`` adds ``timeout=`` only while one of *our* API objects (:class:`InstanceAPI`,
:class:`IamAPI`, :class:`BlockAPI`) is making the call, as told by a context variable; any other SDK user in the
process gets the SDK's behaviour unchanged. The same hook remembers the last response, which
is how an error answer that is not JSON (the SDK then raises a bare ``JSONDecodeError``) still
gets its HTTP status.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple, TypeVar

import requests
import scaleway_core.api as _core_api
from scaleway import Client  # noqa: TID253 - this module is only imported lazily
from scaleway.block.v1alpha1 import BlockV1Alpha1API  # noqa: TID253
from scaleway.iam.v1alpha1 import IamV1Alpha1API, RuleSpecs  # noqa: TID253
from scaleway.instance.v1 import SetSecurityGroupRulesRequestRule, VolumeServerTemplate  # noqa: TID253
from scaleway.instance.v1.custom_api import InstanceUtilsV1API  # noqa: TID253
from scaleway_core.api import ScalewayException, ValidationError
from scaleway_core.validations.string_validation import (
    is_access_key,
    is_project_id,
    is_secret_key,
    is_url,
    is_zone,
)

from maider.provider import AuthError, CapacityError, NotFound, ProviderError, scrub
from maider.retry import TransientError, parse_retry_after

__all__ = [
    "APIs",
    "BlockAPI",
    "IamAPI",
    "InstanceAPI",
    "SetSecurityGroupRulesRequestRule",
    "VolumeServerTemplate",
    "build_apis",
    "project_rule",
    "translate",
]

T = TypeVar("T")
PROVIDER = "scaleway"


# --------------------------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------------------------


@dataclass
class _Scope:
    timeout: float
    response: requests.Response | None = None


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("maider_scaleway_scope", default=None)
#: The last HTTP response one of our API objects received (for error answers the SDK cannot parse).
_LAST_RESPONSE: contextvars.ContextVar[requests.Response | None] = contextvars.ContextVar(
    "maider_scaleway_last_response", default=None
)


class _TimeoutRequests:
    """Stands in for the ``requests`` module inside ``scaleway_core.api`` (see the module docstring)."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        scope = _SCOPE.get()
        if scope is None:  # not one of maider's calls: exactly what the SDK would have done
            return self._real.request(method, url, **kwargs)
        kwargs.setdefault("timeout", scope.timeout)
        response: requests.Response = self._real.request(method, url, **kwargs)
        scope.response = response
        return response


def _install_timeout_hook() -> None:
    if not isinstance(_core_api.requests, _TimeoutRequests):
        _core_api.requests = _TimeoutRequests(_core_api.requests)  # type: ignore[assignment]


_install_timeout_hook()


class _TimedAPI(_core_api.API):
    """Every request made through this object carries ``timeout`` seconds (connect and read)."""

    timeout: float = 30.0

    def _request(self, *args: Any, **kwargs: Any) -> requests.Response:
        scope = _Scope(self.timeout)
        token = _SCOPE.set(scope)
        try:
            return super()._request(*args, **kwargs)
        finally:
            _SCOPE.reset(token)
            _LAST_RESPONSE.set(scope.response)


class InstanceAPI(_TimedAPI, InstanceUtilsV1API):
    """Instance v1 with the user-data helpers (the exported InstanceV1API lacks them, notes §2.3)."""


class IamAPI(_TimedAPI, IamV1Alpha1API):
    """IAM v1alpha1: SSH keys live in the project."""


class BlockAPI(_TimedAPI, BlockV1Alpha1API):
    """Block Storage v1alpha1: the sbs_volume root disks, which a server's deletion only detaches."""


class APIs(NamedTuple):
    instance: InstanceAPI
    iam: IamAPI
    block: BlockAPI


def project_rule(permission_set: str, project_id: str) -> RuleSpecs:
    """An IAM policy rule granting one permission set on one project."""
    return RuleSpecs(
        # The rule's newer "condition" field is optional on the API; None leaves it out of the
        # request (the SDK marshals it only when set), where "" would send an empty condition.
        condition=None,
        permission_set_names=[permission_set],
        project_ids=[project_id],
    )


# --------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    access_key: str | None
    secret_key: str | None
    project_id: str | None


def build_apis(
    creds: Credentials, *, zone: str, api_url: str, timeout: float, help_text: str, auth: bool = True
) -> APIs:
    """The API objects (Instance, IAM, Block Storage), built from explicit values only.

    ``Client.from_config_file_and_env()`` is never used: a developer's ``~/.config/scw`` profile
    or stray ``SCW_*`` variables must not decide which account maider spends money on. The
    SDK's own validation would echo the bad key in its ValueError, so the values are checked
    here with its validators and the message names the setting, never the value.
    ``auth=False`` allows missing credentials (the GPU catalog endpoints are public).
    """
    url = api_url.rstrip("/")  # the SDK refuses a trailing slash
    if not is_url(url):
        raise ProviderError(
            f"Scaleway API URL {api_url!r} is not a URL (MAIDER_SCALEWAY_API_URL)", provider=PROVIDER
        )
    if not is_zone(zone):
        raise ProviderError(
            f"Scaleway zone {zone!r} is not a zone like fr-par-2 (MAIDER_SCALEWAY_ZONE)", provider=PROVIDER
        )
    has_all = bool(creds.access_key and creds.secret_key and creds.project_id)
    if auth or has_all:
        problems = []
        if not creds.access_key or not is_access_key(creds.access_key):
            problems.append("the access key must look like SCWXXXXXXXXXXXXXXXXX")
        if not creds.secret_key or not is_secret_key(creds.secret_key):
            problems.append("the secret key must be a UUID")
        if not creds.project_id or not is_project_id(creds.project_id):
            problems.append("the project id must be a UUID")
        if problems:
            missing = not (creds.access_key or creds.secret_key or creds.project_id)
            what = "are missing" if missing else f"are malformed ({'; '.join(problems)})"
            raise AuthError(f"Scaleway credentials {what}: {help_text}", provider=PROVIDER)
    client = Client(
        access_key=creds.access_key if has_all else None,
        secret_key=creds.secret_key if has_all else None,
        default_project_id=creds.project_id if has_all else None,
        default_zone=zone,
        api_url=url,
    )
    # Checked above (without echoing secrets); the SDK's check would refuse a public client.
    apis = APIs(
        InstanceAPI(client, bypass_validation=True),
        IamAPI(client, bypass_validation=True),
        BlockAPI(client, bypass_validation=True),
    )
    for one in apis:
        one.timeout = timeout
    return apis


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _body(response: requests.Response | None) -> dict[str, Any]:
    if response is None:
        return {}
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _status_error(
    status: int | None,
    response: requests.Response | None,
    message: str,
    kind: str,
    help_text: str,
) -> ProviderError:
    """The typed error for an HTTP error answer (message already scrubbed)."""
    lowered = message.lower()
    if kind == "out_of_stock" or "out of stock" in lowered:
        return CapacityError(
            f"Scaleway has no capacity for this: {message}", provider=PROVIDER, status=status
        )
    if status in (401, 403):
        if kind == "quotas_exceeded":
            # A 403 that is about the account's quota, not the key: typed as a plain error.
            return ProviderError(
                f"Scaleway quota exceeded: {message} (ask for more in the console: Organization → Quotas)",
                provider=PROVIDER,
                status=status,
            )
        if kind == "permissions_denied" or status == 403:
            return AuthError(
                f"Scaleway API key lacks a permission ({message}): give its IAM policy InstancesFullAccess, "
                f"BlockStorageFullAccess and SSHKeysFullAccess on the project, or {help_text}",
                provider=PROVIDER,
                status=status,
            )
        return AuthError(
            f"Scaleway rejected the API key ({message}): {help_text}", provider=PROVIDER, status=status
        )
    if status == 404:
        return NotFound(f"Scaleway: {message}", provider=PROVIDER, status=status)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
        return TransientError(
            f"Scaleway rate limit: {message}", provider=PROVIDER, status=status, retry_after=retry_after
        )
    if status is not None and status >= 500:
        return TransientError(f"Scaleway server error {status}: {message}", provider=PROVIDER, status=status)
    return ProviderError(f"Scaleway: {message}", provider=PROVIDER, status=status)


def translate(exc: BaseException, *, secrets: list[str | None], help_text: str) -> ProviderError:
    """Turn what the SDK raised into maider's typed errors, with every secret scrubbed.

    A 404 is NotFound (for a delete: gone); an "out_of_stock" answer is CapacityError whatever
    its status; 401/403 are AuthError (except a quota); 429, 5xx, dropped connections and
    timeouts are TransientError, which maider.retry retries.
    """

    def clean(text: str) -> str:
        return scrub(" ".join(text.split()), secrets)[:500]

    if isinstance(exc, ScalewayException):
        response = exc.response
        body = _body(response)
        message = str(body.get("message") or "") or (response.text if response is not None else "")
        if isinstance(exc, ValidationError):
            fields = "; ".join(
                f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in exc.errors.items()
            )
            message = f"{message} ({fields})" if fields else message
        if not message:
            message = f"HTTP {exc.status_code}"
        return _status_error(
            exc.status_code, response, clean(message), str(body.get("type") or ""), help_text
        )
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        # An error answer whose body is not JSON (a proxy's HTML page): judge it by its status.
        last = _LAST_RESPONSE.get()
        status = last.status_code if last is not None else None
        text = clean(last.text[:200]) if last is not None else ""
        return _status_error(status, last, f"unexpected answer (HTTP {status}): {text}", "", help_text)
    if isinstance(exc, requests.exceptions.Timeout):
        return TransientError(f"Scaleway API timed out: {clean(str(exc))}", provider=PROVIDER)
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        return TransientError(f"cannot reach the Scaleway API: {clean(str(exc))}", provider=PROVIDER)
    return ProviderError(f"Scaleway: {clean(str(exc))}", provider=PROVIDER)


#: What the SDK raises for a failed call (ValueError: a path parameter it refused).
SDK_ERRORS: tuple[type[BaseException], ...] = (
    ScalewayException,
    requests.exceptions.RequestException,
    ValueError,
)


def attempt(fn: Callable[[], T], *, secrets: list[str | None], help_text: str) -> T:
    """Run one SDK call (no retry); its failure comes out as a typed ProviderError."""
    _LAST_RESPONSE.set(None)
    try:
        return fn()
    except ProviderError:
        raise
    except SDK_ERRORS as exc:
        raise translate(exc, secrets=secrets, help_text=help_text) from None
