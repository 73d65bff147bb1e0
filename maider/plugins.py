"""Provider discovery through the ``maider.providers`` entry-point group.

Modelled on httpie/keyring/llm: the core never names a provider, built-ins register exactly like
third-party packages, a broken plugin costs one warning (never the whole CLI), and
``MAIDER_PROVIDERS=linode,scaleway`` restricts what is loaded (handy to rule out a broken plugin).

Listing reads entry-point metadata only. Loading imports the provider class, whose module must not
import its SDK (the SDK is imported by the methods that use the network).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from maider.errors import UnknownProviderError

if TYPE_CHECKING:  # pragma: no cover
    from maider.provider import Provider

ENTRY_POINT_GROUP = "maider.providers"
RESTRICT_ENV = "MAIDER_PROVIDERS"


@dataclass(frozen=True)
class ProviderInfo:
    """What entry-point metadata says about an installed provider (no import needed)."""

    id: str
    target: str  # "module:Class"
    distribution: str
    version: str

    @property
    def uninstall_hint(self) -> str:
        return f"pip uninstall {self.distribution}" if self.distribution != "?" else "uninstall its package"


@dataclass(frozen=True)
class LoadFailure:
    info: ProviderInfo
    reason: str

    def message(self) -> str:
        return (
            f"provider {self.info.id!r} from {self.info.distribution} {self.info.version} was not loaded: "
            f"{self.reason}. The other providers still work; to remove it: {self.info.uninstall_hint}"
        )


def _restriction() -> set[str] | None:
    raw = os.environ.get(RESTRICT_ENV, "").strip()
    if not raw:
        return None
    return {name.strip().lower() for name in raw.split(",") if name.strip()}


def _info(ep: EntryPoint) -> ProviderInfo:
    dist = ep.dist
    return ProviderInfo(
        id=ep.name.lower(),
        target=ep.value,
        distribution=dist.name if dist is not None else "?",
        version=dist.version if dist is not None else "?",
    )


@cache
def discover() -> tuple[ProviderInfo, ...]:
    """Installed providers, from metadata only, honouring MAIDER_PROVIDERS."""
    seen: dict[str, ProviderInfo] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        info = _info(ep)
        if info.id in seen:
            if seen[info.id].distribution != info.distribution:
                warn(
                    f"provider {info.id!r} is registered by both {seen[info.id].distribution} and "
                    f"{info.distribution}; using {seen[info.id].distribution}"
                )
            continue
        seen[info.id] = info
    allowed = _restriction()
    if allowed is not None:
        for name in sorted(allowed - set(seen)):
            warn(f"{RESTRICT_ENV} names {name!r}, which is not installed")
        seen = {k: v for k, v in seen.items() if k in allowed}
    return tuple(sorted(seen.values(), key=lambda i: i.id))


def _load_class(info: ProviderInfo) -> type[Provider]:
    from maider.provider import SUPPORTED_CONTRACT_VERSIONS, Provider

    module_name, _, attr = info.target.partition(":")
    try:
        module = __import__(module_name, fromlist=["_"])
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # any failure in third-party code must not break the CLI
        raise _Failure(f"{type(exc).__name__}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Provider)):
        raise _Failure(f"{info.target} is not a maider.provider.Provider subclass")
    version = getattr(obj, "contract_version", None)
    if version is None:
        raise _Failure(
            f"{info.target} does not declare contract_version (set it to maider.provider.CONTRACT_VERSION)"
        )
    if version not in SUPPORTED_CONTRACT_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_CONTRACT_VERSIONS))
        raise _Failure(
            f"it implements provider contract v{version}, this maider supports v{supported}; "
            f"upgrade maider or install a {info.distribution} release for contract v{supported}"
        )
    if getattr(obj, "id", info.id) != info.id:
        warn(
            f"provider class {info.target} says id {obj.id!r}, its entry point says {info.id!r}; using {info.id!r}"
        )
    return obj


class _Failure(Exception):
    pass


@cache
def load_all() -> tuple[dict[str, type[Provider]], tuple[LoadFailure, ...]]:
    """Load every discovered provider; failures become warnings (printed once), never crashes."""
    loaded: dict[str, type[Provider]] = {}
    failures: list[LoadFailure] = []
    for info in discover():
        try:
            loaded[info.id] = _load_class(info)
        except _Failure as exc:
            failure = LoadFailure(info, str(exc))
            failures.append(failure)
            warn(failure.message())
    return loaded, tuple(failures)


def installed_ids() -> list[str]:
    return list(load_all()[0])


def get_provider_class(provider_id: str) -> type[Provider]:
    loaded, failures = load_all()
    key = provider_id.strip().lower()
    if key in loaded:
        return loaded[key]
    for failure in failures:
        if failure.info.id == key:
            raise UnknownProviderError(f"provider {key!r} is installed but failed to load: {failure.reason}")
    raise UnknownProviderError(unknown_provider_message(key))


def unknown_provider_message(provider_id: str) -> str:
    import difflib

    available = installed_ids()
    if not available:
        return f"unknown provider {provider_id!r}: {no_provider_message()}"
    close = difflib.get_close_matches(provider_id, available, n=1)
    if close:
        return f"unknown provider {provider_id!r}: did you mean {close[0]!r}? (installed: {', '.join(available)})"
    return (
        f"unknown provider {provider_id!r} (installed: {', '.join(available)}); use one of those, "
        "or install the provider's package (see `maider providers`)"
    )


def require_any() -> list[str]:
    """The loaded provider ids, or a one-line error saying how to get one."""
    loaded, failures = load_all()
    if loaded:
        return list(loaded)
    if failures:
        names = ", ".join(f"{f.info.id} ({f.reason})" for f in failures)
        raise UnknownProviderError(f"no provider could be loaded: {names}")
    raise UnknownProviderError(no_provider_message())


def no_provider_message() -> str:
    return (
        "no provider is installed: install one with pip install 'maider[linode]' "
        "(or [digitalocean], [scaleway], [all])"
    )


_warned: set[str] = set()


def warn(message: str) -> None:
    # Plain stderr: loading providers must not pull in rich.
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def reset_cache() -> None:
    """Forget discovered providers (tests install and remove providers at run time)."""
    discover.cache_clear()
    load_all.cache_clear()
    _warned.clear()
    from maider.catalog import forget_catalogs

    forget_catalogs()
