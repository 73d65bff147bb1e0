"""The configuration wizard: provider → model → region → GPU type → context → credentials.

Every step's choices come from the installed providers' catalogs and the sizing module, so the
wizard can only offer combinations that exist and fit. Answers given as flags skip their step;
with ``--yes`` nothing is asked and open choices take the cheapest fitting option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maider import catalog as catalogs
from maider import plan as planning
from maider import plugins
from maider.config import MaiderSettings, load_settings, read_config_file, write_config_file
from maider.errors import ConfigError, MaiderError
from maider.paths import config_file_path

if TYPE_CHECKING:  # pragma: no cover
    from maider.plan import Candidate
    from maider.provider import Provider


OTHER_MODEL = "other (type a Hugging Face model id)"


@dataclass
class WizardAnswers:
    provider: str | None = None
    model: str | None = None
    region: str | None = None
    type: str | None = None
    context: int | None = None
    credentials: dict[str, str] = field(default_factory=dict)
    hf_token: str | None = None


class _Asker:
    """Thin layer over questionary so a non-interactive run never imports or touches it."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive

    def _ask(self, question: Any) -> Any:
        answer = question.ask()
        if answer is None:  # Ctrl-C / Ctrl-D inside questionary
            raise MaiderError("wizard cancelled; nothing was written")
        return answer

    def select(self, message: str, choices: list[Any], default: Any = None) -> Any:
        import questionary

        return self._ask(questionary.select(message, choices=choices, default=default))

    def text(self, message: str, default: str = "", validate: Any = None) -> str:
        import questionary

        return str(self._ask(questionary.text(message, default=default, validate=validate)))

    def secret(self, message: str) -> str:
        import questionary

        return str(self._ask(questionary.password(message)))

    def confirm(self, message: str, default: bool = False) -> bool:
        import questionary

        return bool(self._ask(questionary.confirm(message, default=default)))


def run_wizard(answers: WizardAnswers, *, interactive: bool, force: bool, say: Any = print) -> Path:
    """Ask what is missing, validate the result as `up` would, and write the config file."""
    path = config_file_path()
    asker = _Asker(interactive)
    existing = read_config_file(path) if path.exists() else {}
    if path.exists() and not force:
        if not interactive:
            raise ConfigError(f"config file {path} already exists: pass --force to overwrite it")
        if not asker.confirm(f"{path} exists. Overwrite it?", default=False):
            raise MaiderError(f"kept {path} unchanged")

    installed = plugins.require_any()

    base = load_settings({})
    provider_id = _choose_provider(asker, answers, installed)
    provider_cls = plugins.get_provider_class(provider_id)
    cat = catalogs.catalogs([provider_id])[provider_id]
    model_id = _choose_model(asker, answers, base)
    settings = base.model_copy(
        update={
            "provider": provider_id,
            "model": model_id,
            "max_model_len": None,
            "region": None,
            "type": None,
        }
    )
    model = planning.resolve_model(settings)
    region = _choose_region(asker, answers, cat, model, settings)
    candidate = _choose_type(asker, answers, model, settings, provider_id, region)
    context = _choose_context(asker, answers, candidate)

    final = settings.model_copy(
        update={"region": region, "type": candidate.vm_type.id, "max_model_len": context}
    )
    plan = planning.build_plan(final)  # the same checks `up` runs

    # Keep what the wizard does not ask about (other providers' tables, hf_token, images...).
    data: dict[str, Any] = {k: v for k, v in existing.items() if k != provider_id}
    data.update(
        {
            "provider": provider_id,
            "region": region,
            "type": candidate.vm_type.id,
            "model": model_id,
            "max_model_len": plan.fit.settings.max_model_len,
        }
    )
    table = dict(existing.get(provider_id, {})) if isinstance(existing.get(provider_id), dict) else {}
    table.update(_credentials(asker, answers, provider_cls, say))
    if table:
        data[provider_id] = table
    hf = _hf_token(asker, answers, plan, say)
    if hf:
        data["hf_token"] = hf
    written = write_config_file(data, path)
    say(
        f"Wrote {written} (mode 0600): {provider_id} {candidate.vm_type.id} in {region}, {model_id}, "
        f"context {plan.fit.settings.max_model_len}, {plan.price}/h."
    )
    say("Next: `maider up --dry-run` to review the plan.")
    return written


def _choose_provider(asker: _Asker, answers: WizardAnswers, installed: list[str]) -> str:
    if answers.provider:
        plugins.get_provider_class(answers.provider)
        return answers.provider.lower()
    if not asker.interactive and base_provider(answers) in installed:
        return str(base_provider(answers))
    if len(installed) == 1 or not asker.interactive:
        return installed[0] if len(installed) == 1 else _cheapest_provider(answers)
    import questionary

    choices = []
    for pid in installed:
        cls = plugins.get_provider_class(pid)
        configured = cls().has_credentials()
        choices.append(
            questionary.Choice(
                f"{cls.display_name}{'  (credentials found)' if configured else ''}", value=pid
            )
        )
    return str(asker.select("Cloud provider", choices))


def base_provider(answers: WizardAnswers) -> str | None:
    """The provider already configured (config file, .env, environment), if any."""
    return load_settings({}).provider


def _cheapest_provider(answers: WizardAnswers) -> str:
    settings = load_settings({"model": answers.model} if answers.model else {})
    model = planning.resolve_model(settings)
    fitting, _ = planning.rank_candidates(model, settings, region=answers.region, type_id=answers.type)
    if not fitting:
        raise ConfigError(f"no installed provider has a GPU type that fits {model.id}")
    return fitting[0].provider


def _choose_model(asker: _Asker, answers: WizardAnswers, base: MaiderSettings) -> str:
    if answers.model:
        return answers.model
    if not asker.interactive:
        return base.model
    import questionary

    from maider.models import MODELS

    choices = [
        questionary.Choice(
            f"{m.id}  ({m.params_b:g}B, {m.quantization or 'bf16'}, ~{m.weights_size_gb:.0f} GB)", value=m.id
        )
        for m in sorted(MODELS.values(), key=lambda m: m.weights_size_gb)
    ]
    choices.append(questionary.Choice(OTHER_MODEL, value=OTHER_MODEL))
    default = next((c for c in choices if c.value == base.model), None)
    picked = asker.select("Model", choices, default=default)
    if picked == OTHER_MODEL:
        return asker.text(
            "Hugging Face model id (org/name)", validate=lambda v: "/" in v or "use the form org/name"
        )
    return str(picked)


def _choose_region(
    asker: _Asker, answers: WizardAnswers, cat: Any, model: Any, settings: MaiderSettings
) -> str:
    if answers.region:
        catalogs.check_region(cat, answers.region)
        return answers.region
    fitting, _ = planning.rank_candidates(model, settings, provider_ids=[cat.provider], type_id=answers.type)
    if not fitting:
        raise ConfigError(
            f"{cat.provider} has no GPU type that fits {model.id}; try another provider or model"
        )
    if not asker.interactive:
        return fitting[0].region
    import questionary

    cheapest: dict[str, Candidate] = {}
    for cand in fitting:
        cheapest.setdefault(cand.region, cand)
    choices = []
    for rid, region in sorted(cat.regions.items()):
        best = cheapest.get(rid)
        label = f"{rid}  {region.label}, {region.country}"
        if best:
            choices.append(questionary.Choice(f"{label}  — from {best.price}/h", value=rid))
        else:
            choices.append(questionary.Choice(label, value=rid, disabled="no fitting type here"))
    default = next(c for c in choices if c.value == fitting[0].region)
    return str(asker.select("Region", choices, default=default))


def _choose_type(
    asker: _Asker, answers: WizardAnswers, model: Any, settings: MaiderSettings, provider_id: str, region: str
) -> Candidate:
    cat = catalogs.catalogs([provider_id])[provider_id]
    if answers.type:
        vm_type = catalogs.lookup_type(cat, answers.type)
        catalogs.check_type_in_region(cat, vm_type, region)
    fitting, rejected = planning.rank_candidates(model, settings, provider_ids=[provider_id], region=region)
    if answers.type:
        for cand in fitting:
            if cand.vm_type.id == answers.type:
                return cand
        reason = next((c.fit.problems for c in rejected if c.vm_type.id == answers.type), [])
        raise ConfigError(reason[0] if reason else f"{answers.type} does not fit {model.id}")
    if not fitting:
        raise ConfigError(f"no GPU type in {region} fits {model.id}: pick another region or a smaller model")
    if not asker.interactive:
        return fitting[0]
    import questionary

    choices = []
    for i, cand in enumerate(fitting):
        t = cand.vm_type
        mark = "  ★ cheapest fit" if i == 0 else ""
        choices.append(
            questionary.Choice(
                f"{t.id}  {t.gpu_count}× {t.gpu.name} {t.gpu.vram_gb:g} GB  {cand.price}/h  "
                f"context ≤ {cand.fit.max_context_fit}{mark}",
                value=i,
            )
        )
    for cand in rejected:
        t = cand.vm_type
        why = cand.fit.problems[0] if cand.fit.problems else "does not fit"
        choices.append(
            questionary.Choice(
                f"{t.id}  {t.gpu_count}× {t.gpu.name}  {cand.price}/h", value=-1, disabled=why[:80]
            )
        )
    return fitting[int(asker.select("GPU type", choices, default=choices[0]))]


def _choose_context(asker: _Asker, answers: WizardAnswers, cand: Candidate) -> int:
    auto = int(cand.fit.settings.max_model_len)
    limit = int(cand.fit.max_context_fit)
    if answers.context is not None:
        if answers.context > limit:
            raise ConfigError(
                f"context {answers.context} does not fit {cand.vm_type.id}: use at most {limit}"
            )
        return answers.context
    if not asker.interactive:
        return auto

    def ok(text: str) -> bool | str:
        if not text.isdigit() or int(text) < 256:
            return "a whole number of tokens, at least 256"
        return int(text) <= limit or f"at most {limit} fits on this type"

    return int(asker.text(f"Context length in tokens (max {limit})", default=str(auto), validate=ok))


def _credentials(
    asker: _Asker, answers: WizardAnswers, provider_cls: type[Provider], say: Any
) -> dict[str, str]:
    fields = provider_cls.credential_fields
    if answers.credentials:
        unknown = set(answers.credentials) - set(fields)
        if unknown:
            raise ConfigError(
                f"{provider_cls.id} has no credential {sorted(unknown)[0]!r}; it uses {', '.join(fields)}"
            )
        return dict(answers.credentials)
    try:
        configured = provider_cls().has_credentials()
    except MaiderError:
        configured = False
    if configured:
        say(f"{provider_cls.display_name} credentials found (environment, .env or config file).")
        return {}
    if not asker.interactive:
        say(
            f"{provider_cls.display_name} credentials not set; before `maider up`, {provider_cls.credentials_help}."
        )
        return {}
    from pydantic import SecretStr

    say(f"{provider_cls.display_name} credentials: {provider_cls.credentials_help}.")
    say("They are stored in the config file (mode 0600). Leave empty to set them in the environment instead.")
    values: dict[str, str] = {}
    settings_cls = provider_cls.settings_class()
    for name in fields:
        annotation = str(settings_cls.model_fields[name].annotation)
        secret = SecretStr.__name__ in annotation
        value = asker.secret(f"{name}") if secret else asker.text(f"{name}")
        if value.strip():
            values[name] = value.strip()
    return values


def _hf_token(asker: _Asker, answers: WizardAnswers, plan: Any, say: Any) -> str | None:
    if answers.hf_token:
        return answers.hf_token
    if not plan.model.gated or plan.settings.hf_token is not None:
        return None
    if not asker.interactive:
        say(f"{plan.model.id} is gated: set HF_TOKEN before `maider up`.")
        return None
    token = asker.secret(f"{plan.model.id} is gated. Hugging Face token (empty: set HF_TOKEN later)")
    return token.strip() or None
