"""python-digitalocean, wrapped so that every request obeys maider's settings and errors are typed.

Imported only inside the provider's network methods (it imports the SDK and requests).

python-digitalocean 1.17 has four traits that matter here (shared notes §1.2, §2.2):

1. ``end_point=`` is honoured only by the object it is given to. Objects the SDK builds itself
   (``SSHKey`` inside ``Droplet.create`` for public-key strings, ``Account`` inside
   ``Manager.get_account``, ``Droplet(**json)`` in ``Manager.get_all_droplets``) read
   ``DIGITALOCEAN_END_POINT`` from the environment instead, and default to the real API.
   Setting that variable around our calls would work but is process-global (threads, the user's
   own value). Instead maider only ever calls methods on objects it built itself through
   :meth:`Client.make`, which passes ``end_point`` explicitly, and it never hands the SDK
   anything that makes it build one: SSH keys go in as ids, and lists are read through
   ``get_data`` as JSON (which also keeps ``meta.total``, see 4). As a last line, every
   absolute URL the SDK is told to follow (``links.pages.next``) is rebased onto the
   configured end point, so a proxy or simulator sees every page even when the server names
   another host.
2. The request timeout comes from ``PYTHON_DIGITALOCEAN_REQUEST_TIMEOUT_SEC`` via
   ``BaseAPI.get_timeout()``; our objects override that method with ``request_timeout``.
3. Errors lose their HTTP status: ``DataReadError`` carries only the body's message (and the SDK
   raises ``IndexError`` when the body lacks ``id`` or ``message``), 429 loses Retry-After.
   Every response is therefore recorded as it passes through ``BaseAPI``'s single transport
   method, and :func:`translate` reads the status and headers from there.
4. The paginator follows ``links.pages.next`` without checking the status of later pages: a
   404 or 5xx on page 2 silently returns page 1 alone. :meth:`Client.list` fails a listing in
   which any page was not OK (a 5xx or 429 is transient, a 404 a plain ProviderError, never
   "not found") and compares what it collected with ``meta.total``; :meth:`Client.run` checks
   every response of every call once more.

The SDK has no retries of its own (plain ``requests`` without retrying adapters), so
``maider.retry`` is the only retry layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import digitalocean  # noqa: TID253 - this module is itself imported lazily, by network methods only
import requests

from maider.provider import AuthError, CapacityError, NotFound, ProviderError, scrub
from maider.retry import TransientError, parse_retry_after

T = TypeVar("T")
PROVIDER = "digitalocean"

#: DigitalOcean's own wording when a size cannot be placed (422 ``unprocessable_entity``):
#: "Size is not available in this region." The other phrases guard against rewordings.
_CAPACITY = re.compile(
    r"not available in this region|size is not available|out of capacity|insufficient capacity|"
    r"no capacity|capacity is not available",
    re.IGNORECASE,
)


if not hasattr(digitalocean.baseapi.BaseAPI, "_BaseAPI__perform_request"):  # pragma: no cover
    # Without this hook the end point, timeout and error statuses below would silently not apply.
    raise ImportError(
        f"python-digitalocean {getattr(digitalocean, '__version__', '?')} no longer has "
        "BaseAPI.__perform_request; maider_digitalocean supports 1.17"
    )


class _Wire(digitalocean.baseapi.BaseAPI):
    """Mixed into every SDK class maider instantiates (see the module docstring, 1–3)."""

    _maider_client: Client
    #: The JSON of the last successful ``get_data`` (pages merged), for callers that need more
    #: than the attributes the SDK copies (``Droplet.create`` keeps only the id).
    _maider_data: Any = None

    def get_timeout(self) -> float:
        return self._maider_client.timeout

    def get_data(self, *args: Any, **kwargs: Any) -> Any:
        data = super().get_data(*args, **kwargs)
        self._maider_data = data
        return data

    # BaseAPI's private transport method (name-mangled ``__perform_request``): every request of
    # every SDK method goes through it, so this is where the end point and the answers are seen.
    def _BaseAPI__perform_request(self, url: str, type: str = "GET", params: Any = None) -> Any:
        response = super()._BaseAPI__perform_request(self._maider_client.rebase(url), type, params)
        self._maider_client.responses.append(response)
        return response


class Account(_Wire, digitalocean.Account):
    pass


class Droplet(_Wire, digitalocean.Droplet):
    pass


class Firewall(_Wire, digitalocean.Firewall):
    pass


class SSHKey(_Wire, digitalocean.SSHKey):
    pass


class Manager(_Wire, digitalocean.Manager):
    pass


InboundRule = digitalocean.InboundRule
OutboundRule = digitalocean.OutboundRule
Sources = digitalocean.Sources
Destinations = digitalocean.Destinations


class Client:
    """The token, end point and timeout every SDK object gets, plus the responses of one call."""

    def __init__(
        self, *, token: str, end_point: str, timeout: float, page_size: int, credentials_help: str
    ) -> None:
        self.token = token
        self.end_point = end_point
        self.timeout = timeout
        self.page_size = page_size
        self.credentials_help = credentials_help
        self.responses: list[requests.Response] = []
        #: SDK objects made since the last call ended: each holds a requests.Session to close.
        self._made: list[Any] = []

    def make(self, cls: Callable[..., T], **attrs: Any) -> T:
        """An SDK object bound to this client (explicit token and end point, our timeout).

        BaseAPI.__init__ sets every keyword as an attribute, ``_maider_client`` included.
        """
        obj = cls(token=self.token, end_point=self.end_point, _maider_client=self, **attrs)
        self._made.append(obj)
        return obj

    def rebase(self, url: str) -> str:
        """``url`` relative to the configured end point (absolute ``next`` links included)."""
        parts = urlsplit(url)
        if not parts.scheme:
            return url
        path = parts.path
        at = path.find("/v2/")
        return path[at + 4 :] if at >= 0 else path.lstrip("/")

    def run(self, fn: Callable[[], T]) -> T:
        """Run one SDK operation; its failures (including a failed later page) become typed errors."""
        self.responses = []
        try:
            return self._checked(fn)
        finally:
            # Every SDK object opens its own requests.Session: close them rather than leave
            # keep-alive sockets to the garbage collector (maider polls for minutes).
            made, self._made = self._made, []
            for obj in made:
                obj._session.close()

    def _checked(self, fn: Callable[[], T]) -> T:
        try:
            result = fn()
        except requests.Timeout as exc:
            raise self._transient(f"DigitalOcean did not answer within {self.timeout:g} s ({exc})") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise self._transient(f"connection to DigitalOcean at {self.end_point} failed ({exc})") from None
        except ProviderError:
            raise  # already typed (Client.list's own checks)
        except Exception as exc:
            last = self.responses[-1] if self.responses else None
            if isinstance(exc, digitalocean.Error) or (last is not None and not last.ok):
                # A failed answer (the SDK's parse of it may even have crashed): its status decides.
                raise translate(exc, last, [self.token], self.credentials_help) from None
            if isinstance(exc, requests.RequestException):
                raise ProviderError(
                    self._scrub(f"request to DigitalOcean failed ({exc})"), provider=PROVIDER
                ) from None
            raise  # the SDK choked on a successful answer: a bug worth a traceback
        self._raise_for_failed_pages()
        return result

    def _raise_for_failed_pages(self) -> None:
        """Safety net: fail if any response of the call was not OK (nothing may be swallowed)."""
        failed = [r for r in self.responses if not r.ok]
        if failed:
            raise self._page_failure(failed[0])

    def _page_failure(self, response: requests.Response) -> ProviderError:
        if response.status_code == 404:  # a list page that vanished: never read as "not found"
            return ProviderError(
                self._scrub(
                    f"DigitalOcean listing was cut short: {_short_url(response.url)} answered 404 "
                    f"({_message(response) or 'not found'})"
                ),
                provider=PROVIDER,
                status=404,
            )
        return translate(None, response, [self.token], self.credentials_help)

    def list(
        self, path: str, key: str, params: dict[str, Any] | None = None, *, missing_ok: bool = False
    ) -> list[dict[str, Any]]:
        """Every item of a paginated list (one request per page), checked page by page and
        against ``meta.total``.

        A 404 on the first page is a ProviderError (a list never reads as "not found"), or an
        empty list with ``missing_ok`` (a filter naming something that does not exist yet).
        """
        manager = self.make(Manager)
        query = {**(params or {}), "per_page": self.page_size}
        start = len(self.responses)
        try:
            data = manager.get_data(path, params=query)
        except digitalocean.NotFoundError:
            if missing_ok:
                del self.responses[start:]  # an answer ("no such thing"), not a failure
                return []
            raise ProviderError(
                self._scrub(f"DigitalOcean answered 404 for {path} (is api_url {self.end_point} right?)"),
                provider=PROVIDER,
                status=404,
            ) from None
        failed = [r for r in self.responses[start:] if not r.ok]
        if failed:  # the SDK's paginator ignores the status of later pages
            raise self._page_failure(failed[0])
        items: list[dict[str, Any]] = list(data.get(key) or [])
        unique = list(
            {str(item.get("id", item.get("slug", n))): item for n, item in enumerate(items)}.values()
        )
        total = (data.get("meta") or {}).get("total")
        if isinstance(total, int) and len(unique) < total:
            # The list changed between pages, or a page went missing: read it again.
            raise TransientError(
                f"DigitalOcean listing of {key} was truncated: {len(unique)} of {total} items",
                provider=PROVIDER,
            )
        return unique

    def _transient(self, message: str) -> TransientError:
        return TransientError(self._scrub(message), provider=PROVIDER)

    def _scrub(self, text: str) -> str:
        return scrub(text, [self.token])


def _message(response: requests.Response | None) -> str:
    if response is None:
        return ""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200]  # e.g. a proxy's HTML page: one short line
    if isinstance(body, dict):
        return str(body.get("message") or body.get("id") or "")
    return ""


def _short_url(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def translate(
    exc: BaseException | None,
    response: requests.Response | None,
    secrets: list[str | None],
    credentials_help: str,
) -> ProviderError:
    """The one place where DigitalOcean's failures become maider's typed errors.

    ``response`` is the failed HTTP answer when there was one (its status decides); ``exc`` is
    what the SDK raised. Every message is scrubbed of ``secrets``.
    """
    status = response.status_code if response is not None else None
    message = _message(response) or (str(exc) or type(exc).__name__ if exc is not None else "no details")
    if isinstance(exc, digitalocean.NotFoundError) and status is None:
        status = 404
    if isinstance(exc, digitalocean.DataReadError) and str(exc):
        message = str(exc)
    text = scrub(f"DigitalOcean: {message}" + (f" (HTTP {status})" if status else ""), secrets)

    if status is not None and _CAPACITY.search(message):
        return CapacityError(text, provider=PROVIDER, status=status)
    if status in (401, 403):
        return AuthError(
            scrub(f"DigitalOcean rejected the token ({message}, HTTP {status}): {credentials_help}", secrets),
            provider=PROVIDER,
            status=status,
        )
    if status == 404:
        return NotFound(text, provider=PROVIDER, status=404)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After") if response is not None else None)
        return TransientError(text, provider=PROVIDER, status=429, retry_after=retry_after)
    if status is not None and status >= 500:
        return TransientError(text, provider=PROVIDER, status=status)
    return ProviderError(text, provider=PROVIDER, status=status)
