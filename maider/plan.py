"""Turn settings into a complete, checked plan for `maider up` — before anything is spent.

`build_plan` resolves what the user left open (provider, region, type, context) to the cheapest
choice that fits, and checks everything that can be checked without an account: provider
installed, region sells the type, the model fits the GPUs, tensor parallelism, dtype support,
context length, SSH key. `validate`, `up --dry-run` and (later) `up` all go through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from maider import catalog as catalogs
from maider import plugins
from maider.errors import ConfigError, MaiderError, PlanError
from maider.provider import Catalog, Price, Provider, VMType

if TYPE_CHECKING:  # pragma: no cover
    from maider.config import MaiderSettings
    from maider.models import ModelSpec
    from maider.sizing import FitEstimate


@dataclass(frozen=True)
class Candidate:
    """A ranked (provider, region, type) with its fit and comparable price."""

    provider: str
    region: str
    vm_type: VMType
    price: Price
    usd_per_hour: float
    fit: FitEstimate


@dataclass
class SSHKeyPlan:
    public_key: Path
    managed: bool  # maider creates and keeps this key itself
    exists: bool


@dataclass
class Plan:
    provider_cls: type[Provider]
    catalog: Catalog
    region: str
    vm_type: VMType
    price: Price
    usd_per_hour: float
    model: ModelSpec
    fit: FitEstimate
    served_model_name: str
    ssh_key: SSHKeyPlan
    settings: MaiderSettings
    chosen: list[str] = field(default_factory=list)  # what maider picked for the user, and why
    runners_up: list[Candidate] = field(default_factory=list)

    @property
    def provider(self) -> str:
        return self.provider_cls.id

    @property
    def warnings(self) -> list[str]:
        return list(self.fit.warnings)


def default_served_name(model_id: str) -> str:
    """A short, stable name aider can address: the repo's basename, lower-cased."""
    base = model_id.rstrip("/").split("/")[-1].lower()
    return re.sub(r"[^a-z0-9._-]+", "-", base).strip("-") or "coder"


def resolve_model(settings: MaiderSettings, *, allow_network: bool = True) -> ModelSpec:
    from maider.hf import ModelLookupError
    from maider.hf import resolve_model as resolve

    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    try:
        return resolve(settings.model, token=token, allow_network=allow_network)
    except ModelLookupError as exc:
        raise ConfigError(str(exc)) from None


def ssh_key_plan(settings: MaiderSettings) -> SSHKeyPlan:
    from maider.paths import data_dir

    if settings.ssh_public_key is not None:
        path = settings.ssh_public_key.expanduser()
        if not path.is_file():
            raise ConfigError(
                f"SSH public key {path} does not exist: create it with `ssh-keygen -t ed25519 -f "
                f"{str(path).removesuffix('.pub')}`, or unset ssh_public_key to let maider manage its own key"
            )
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if not re.match(
            r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh.com) [A-Za-z0-9+/=]+", text
        ):
            raise ConfigError(
                f"{path} is not an OpenSSH public key (expected a line like 'ssh-ed25519 AAAA…'); "
                "did you point ssh_public_key at the private key?"
            )
        return SSHKeyPlan(path, managed=False, exists=True)
    path = data_dir() / "ssh" / "id_ed25519.pub"
    return SSHKeyPlan(path, managed=True, exists=path.is_file())


def _fit(model: ModelSpec, vm_type: VMType, settings: MaiderSettings) -> FitEstimate:
    from maider.sizing import estimate_fit

    return estimate_fit(
        model,
        vm_type,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        dtype=settings.dtype,
        kv_cache_dtype=settings.kv_cache_dtype,
        tensor_parallel_size=settings.tensor_parallel_size,
    )


def rank_candidates(
    model: ModelSpec,
    settings: MaiderSettings,
    *,
    provider_ids: list[str] | None = None,
    region: str | None = None,
    type_id: str | None = None,
    budget_usd: float | None = None,
) -> tuple[list[Candidate], list[Candidate]]:
    """(fitting candidates cheapest first, non-fitting ones) over the installed providers."""
    cats = catalogs.catalogs(provider_ids)
    fitting: list[Candidate] = []
    rejected: list[Candidate] = []
    fits_by_type: dict[tuple[str, str], FitEstimate] = {}
    for offer in catalogs.offers(cats, region):
        if type_id is not None and offer.vm_type.id != type_id:
            continue
        key = (offer.provider, offer.vm_type.id)
        if key not in fits_by_type:
            fits_by_type[key] = _fit(model, offer.vm_type, settings)
        fit = fits_by_type[key]
        try:
            usd = catalogs.to_usd(offer.price, settings.usd_per_eur)
        except ConfigError as exc:
            plugins.warn(f"{offer.provider} {offer.vm_type.id}: {exc}; left out of the comparison")
            continue
        cand = Candidate(offer.provider, offer.region, offer.vm_type, offer.price, usd, fit)
        if fit.fits and (budget_usd is None or usd <= budget_usd):
            fitting.append(cand)
        else:
            rejected.append(cand)
    order = lambda c: (c.usd_per_hour, c.vm_type.total_vram_gb, c.provider, c.region)  # noqa: E731
    return sorted(fitting, key=order), sorted(rejected, key=order)


def _installed_or_fail(settings: MaiderSettings) -> list[str] | None:
    """The provider the user named, or None for "every installed one" (a broken one then only warns)."""
    if settings.provider is not None:
        plugins.get_provider_class(settings.provider)  # raises a one-line error when unknown
        return [settings.provider]
    plugins.require_any()
    return None


def build_plan(settings: MaiderSettings, *, allow_network: bool = True) -> Plan:
    """A complete plan, or PlanError listing every problem found (ConfigError for the first hard one)."""
    problems: list[str] = []
    provider_ids = _installed_or_fail(settings)

    # Region and type must exist before anything else can be said about them.
    if settings.provider is not None:
        cat = catalogs.catalogs([settings.provider])[settings.provider]
        if settings.region is not None:
            catalogs.check_region(cat, settings.region)
        if settings.type is not None:
            vm_type = catalogs.lookup_type(cat, settings.type)
            if settings.region is not None:
                catalogs.check_type_in_region(cat, vm_type, settings.region)
    elif settings.type is not None or settings.region is not None:
        # Without a provider, the type or region id tells us which provider is meant.
        cats = catalogs.catalogs(provider_ids)
        owners = [
            pid
            for pid, cat in cats.items()
            if (settings.type is None or settings.type in cat.types)
            and (settings.region is None or settings.region in cat.regions)
        ]
        if not owners:
            what = " in region ".join(x for x in (settings.type, settings.region) if x)
            raise ConfigError(
                f"no installed provider sells {what!r}: set provider, or see `maider list-types`"
            )
        provider_ids = owners

    try:
        ssh = ssh_key_plan(settings)
    except ConfigError as exc:
        problems.append(str(exc))
        ssh = None

    model = resolve_model(settings, allow_network=allow_network)
    fitting, rejected = rank_candidates(
        model, settings, provider_ids=provider_ids, region=settings.region, type_id=settings.type
    )
    chosen_notes: list[str] = []
    if fitting:
        best = fitting[0]
        if settings.type is not None and settings.region is not None:
            pass
        else:
            left_open = [
                n
                for n, v in (
                    ("provider", settings.provider),
                    ("region", settings.region),
                    ("type", settings.type),
                )
                if v is None
            ]
            chosen_notes.append(
                f"{', '.join(left_open)} not set: picked the cheapest fitting choice "
                f"({best.provider} {best.vm_type.id} in {best.region})"
            )
    else:
        # Explain why the requested (or every) choice fails.
        if rejected:
            best = min(rejected, key=lambda c: (len(c.fit.problems), c.usd_per_hour))
            problems.extend(best.fit.problems or [f"{model.id} does not fit {best.vm_type.id}"])
        else:
            raise ConfigError("no GPU type matches the requested provider, region and type")
        raise PlanError(problems)

    if problems or ssh is None:
        raise PlanError(problems)
    served = settings.served_model_name or default_served_name(model.id)
    fit = _with_user_args(best.fit, served, settings)
    return Plan(
        provider_cls=plugins.get_provider_class(best.provider),
        catalog=catalogs.catalogs([best.provider])[best.provider],
        region=best.region,
        vm_type=best.vm_type,
        price=best.price,
        usd_per_hour=best.usd_per_hour,
        model=model,
        fit=fit,
        served_model_name=served,
        ssh_key=ssh,
        settings=settings,
        chosen=chosen_notes,
        runners_up=[c for c in fitting[1:] if (c.provider, c.vm_type.id) != (best.provider, best.vm_type.id)][
            :5
        ],
    )


def _with_user_args(fit: FitEstimate, served: str, settings: MaiderSettings) -> FitEstimate:
    """The fit with what the user adds on top of sizing: the served name and extra vLLM flags."""
    import dataclasses
    import shlex

    try:
        extra = tuple(shlex.split(settings.vllm_extra_args))
    except ValueError as exc:
        raise ConfigError(f"vllm_extra_args is not valid shell syntax ({exc}): check its quotes") from None
    vllm = dataclasses.replace(
        fit.settings, served_model_name=served, extra_args=(*fit.settings.extra_args, *extra)
    )
    return dataclasses.replace(fit, settings=vllm)


def validate_settings(settings: MaiderSettings) -> tuple[Plan | None, list[str]]:
    """Every problem with the configuration, one line each (empty when the plan is sound)."""
    try:
        return build_plan(settings), []
    except PlanError as exc:
        return None, exc.problems
    except MaiderError as exc:
        return None, [str(exc)]


def account_problems(plan: Plan) -> list[str]:
    """What a real `up` would need beyond a sound plan: credentials, and an HF token for gated models."""
    problems: list[str] = []
    provider = plan.provider_cls()
    if not provider.has_credentials():
        problems.append(
            f"{plan.provider_cls.display_name} credentials are missing: {plan.provider_cls.credentials_help}"
        )
    if plan.model.gated and plan.settings.hf_token is None:
        problems.append(
            f"{plan.model.id} is gated: set HF_TOKEN to a Hugging Face token whose account accepted the licence "
            f"at https://huggingface.co/{plan.model.id}"
        )
    return problems
