"""maider's idle watchdog, ON THE VM: ``/usr/bin/python3 /opt/maider/watchdog/maider_watchdog.py``.

Standard library only. The user-data installs this file with ``metrics.py`` and
``watchdog_policy.py`` (maider/ops) next to it, and the systemd unit ``maider-watchdog.service``
runs ``… run``, so the VM stops its own spending with the laptop closed. The VM's clock is the
authority: the laptop only reads (``status``), extends (``extend``) and announces maider's own
inference traffic (``probe-begin``/``probe-end``) over SSH.

Subcommands (each prints one JSON object, the ``status``, on stdout):

- ``run``: the service. Every ``poll_s`` it asks vLLM's ``/health`` and scrapes ``/metrics``;
  an increase of vLLM's finished requests or tokens, or a running/waiting request, is activity
  (:func:`metrics.activity_between`). Idle time counts from when vLLM first answered
  ``/health`` (a long model download does not eat it); the lifetime counts from the service's
  first start (kept across restarts and reboots). ``warn_before_s`` before acting: a journal
  line and ``wall``. Then it deletes the VM with the calls in the 0600 credential file
  (``/etc/maider/watchdog-destroy.json``, written by maider over SSH), or, without one, after
  failing calls for ``destroy_retry_s``, or ``poweroff_margin_s`` past the deadline, powers off
  with ``systemctl poweroff``.
- ``status``: the state, the decision and the phase, read-only.
- ``extend --seconds N``: keep the VM at least N seconds longer (both rules wait).
- ``probe-begin`` / ``probe-end --requests N --prompt-tokens P --generation-tokens G``: while a
  probe window is open (and younger than ``probe_stale_s``) activity is not judged; at its end
  the probe's own totals are subtracted.

The credential never reaches stdout, stderr or the journal: messages name the method and the
URL's host and path only, and the secrets listed in the credential file are scrubbed from any
error text.

For the VM emulator only (tests/vmsim), the environment may move the program's view of the
machine: ``MAIDER_WATCHDOG_ROOT`` prefixes every file path (the emulated VM's root directory)
and ``MAIDER_WATCHDOG_VLLM_URL`` replaces ``http://127.0.0.1:8000``. A real VM sets neither.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__:
    from maider.ops import metrics
    from maider.ops import watchdog_policy as policy
else:  # on the VM: the two modules are shipped next to this file (also found under `python3 -I`)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    metrics = importlib.import_module("metrics")
    policy = importlib.import_module("watchdog_policy")

INSTALL_DIR = "/opt/maider/watchdog"
PROGRAM_NAME = "maider_watchdog.py"
PROGRAM_PATH = f"{INSTALL_DIR}/{PROGRAM_NAME}"
CONFIG_PATH = "/etc/maider/watchdog.json"
#: The SelfDestruct calls with their credential: 0600, written over SSH stdin, never in user-data.
DESTROY_PATH = "/etc/maider/watchdog-destroy.json"
STATE_DIR = "/var/lib/maider/watchdog"
STATE_PATH = f"{STATE_DIR}/state.json"
LOCK_PATH = f"{STATE_DIR}/state.lock"
DEFAULT_VLLM_URL = "http://127.0.0.1:8000"

#: Defaults of the non-secret config (maider writes every key; these cover a hand-edited file).
DEFAULTS: dict[str, float] = {
    "poll_s": 30.0,
    "probe_stale_s": 600.0,
    "destroy_retry_s": 600.0,
    "poweroff_margin_s": 900.0,
    "http_timeout_s": 10.0,
}


class WatchdogError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def vm_path(path: str) -> str:
    """``path`` on this machine (the emulator's root prefix, if any)."""
    root = os.environ.get("MAIDER_WATCHDOG_ROOT", "")
    return root.rstrip("/") + path if root else path


def vllm_url() -> str:
    return os.environ.get("MAIDER_WATCHDOG_VLLM_URL", DEFAULT_VLLM_URL).rstrip("/")


def atomic_write(path: str, text: str, mode: int = 0o644) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(mode)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """The state file's lock: the service's tick, ``extend`` and the probe commands take turns."""
    import fcntl

    path = Path(vm_path(LOCK_PATH))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def load_settings() -> dict[str, Any]:
    """The non-secret config written by the user-data."""
    try:
        with open(vm_path(CONFIG_PATH), encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        raise WatchdogError(f"cannot read {CONFIG_PATH}: {exc}") from None
    if not isinstance(raw, dict):
        raise WatchdogError(f"{CONFIG_PATH} must hold a JSON object")
    out: dict[str, Any] = {**DEFAULTS, **raw}
    out["policy"] = policy.WatchdogConfig(
        idle_timeout_s=raw.get("idle_timeout_s", policy.DEFAULT_IDLE_TIMEOUT_S),
        max_lifetime_s=raw.get("max_lifetime_s", policy.DEFAULT_MAX_LIFETIME_S),
        warn_before_s=raw.get("warn_before_s", policy.DEFAULT_WARN_BEFORE_S),
        max_extension_s=raw.get("max_extension_s", policy.DEFAULT_MAX_EXTENSION_S),
    )
    return out


class Doc:
    """The state file: the policy's JSON (``watchdog_policy.dumps``) plus the service's status."""

    def __init__(self, config: Any, state: Any, status: dict[str, Any]) -> None:
        self.config = config
        self.state = state
        self.status = status

    @classmethod
    def load(cls, settings: dict[str, Any], now: float) -> Doc:
        path = vm_path(STATE_PATH)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            # First start on this VM: the lifetime counts from now; idle waits for vLLM.
            return cls(settings["policy"], policy.initial_state(now), new_status())
        _, state = policy.loads(text)
        status = json.loads(text).get("status")
        # The config comes from the config file (a newer maider may have rewritten it).
        return cls(
            settings["policy"], state, {**new_status(), **(status if isinstance(status, dict) else {})}
        )

    def save(self) -> None:
        doc = json.loads(policy.dumps(self.config, self.state))
        doc["status"] = self.status
        atomic_write(vm_path(STATE_PATH), json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def report(self, now: float) -> dict[str, Any]:
        decision = policy.decide(self.config, self.state, now)
        return {
            "now": now,
            "config": asdict(self.config),
            "state": asdict(self.state),
            "status": self.status,
            "decision": asdict(decision),
        }


def new_status() -> dict[str, Any]:
    return {
        "phase": "watching",  # watching, warned, destroying, destroyed, powering-off
        "ready_at": None,  # when vLLM first answered /health
        "last_scrape_at": None,
        "last_error": None,
        "baseline": None,  # the last counted metrics snapshot
        "probe": None,  # {"open": n, "since": t, "requests": n, "prompt_tokens": n, "generation_tokens": n}
        "acted_at": None,
        "acted_reason": None,
        "delete_failing_since": None,
        "extend_capped_at": None,  # `extend` stopped where the deletion credential expires
    }


# --------------------------------------------------------------------------------------------
# vLLM
# --------------------------------------------------------------------------------------------


def _get(path: str, timeout: float) -> tuple[int, str]:
    request = urllib.request.Request(vllm_url() + path, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def vllm_ready(timeout: float) -> bool:
    try:
        return _get("/health", timeout)[0] == 200
    except (OSError, ValueError):
        return False


def scrape(timeout: float) -> Any:
    """A :class:`metrics.MetricsSnapshot`; raises WatchdogError when vLLM does not answer."""
    try:
        code, text = _get("/metrics", timeout)
    except (OSError, ValueError) as exc:
        raise WatchdogError(f"GET /metrics: {exc}") from None
    if code != 200:
        raise WatchdogError(f"GET /metrics answered HTTP {code}")
    try:
        return metrics.parse_metrics(text)
    except metrics.MetricsParseError as exc:
        raise WatchdogError(f"GET /metrics: {exc}") from None


def _snapshot(raw: Any) -> Any:
    return metrics.MetricsSnapshot(**{k: v for k, v in raw.items() if k != "models"}) if raw else None


def _raw(snapshot: Any) -> dict[str, Any]:
    data = asdict(snapshot)
    data["models"] = list(data["models"])
    return data


def observe(doc: Doc, settings: dict[str, Any], now: float, *, judge: bool = True) -> None:
    """Read vLLM and move ``last_activity_at`` if somebody used it since the baseline.

    Not ready yet: idle time does not run. ``judge`` False (a probe window is open): only check
    readiness. A scrape that fails leaves the baseline alone and lets idle time run: a vLLM that
    does not answer serves nobody.
    """
    status = doc.status
    timeout = float(settings["http_timeout_s"])
    if status["ready_at"] is None:
        if not vllm_ready(timeout):
            doc.state = policy.record_activity(doc.state, now)
            return
        status["ready_at"] = now
        doc.state = policy.record_activity(doc.state, now)
        log("vLLM answers /health: idle time counts from now")
    if not judge:
        return
    try:
        current = scrape(timeout)
    except WatchdogError as exc:
        status["last_error"] = str(exc)
        return
    status["last_scrape_at"] = now
    status["last_error"] = None
    previous = _snapshot(status["baseline"])
    probe = status["probe"] or {}
    exclude = {
        "exclude_requests": int(probe.get("requests", 0)),
        "exclude_prompt_tokens": int(probe.get("prompt_tokens", 0)),
        "exclude_generation_tokens": int(probe.get("generation_tokens", 0)),
    }
    if previous is None:  # the first scrape: only a request in flight shows use
        active = current.requests_running + current.requests_waiting > 0
    else:
        active = metrics.activity_between(previous, current, **exclude)
    if active:
        doc.state = policy.record_activity(doc.state, now)
    status["baseline"] = _raw(current)
    status["probe"] = None


def probe_open(status: dict[str, Any], settings: dict[str, Any], now: float) -> bool:
    probe = status.get("probe")
    if not probe or int(probe.get("open", 0)) <= 0:
        return False
    if now - float(probe.get("since", now)) > float(settings["probe_stale_s"]):
        # A laptop that died mid-probe: its traffic counts from now on (the safe side for nobody).
        status["probe"] = None
        log("a probe window was left open; closing it")
        return False
    return True


# --------------------------------------------------------------------------------------------
# Acting
# --------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """A journal line (stderr: stdout carries the subcommands' JSON)."""
    print(f"maider-watchdog: {message}", file=sys.stderr, flush=True)


def wall(message: str) -> None:
    if shutil.which("wall"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["wall", message], timeout=10, check=False, capture_output=True)


def poweroff() -> None:
    log("powering off (systemctl poweroff)")
    subprocess.run(["systemctl", "poweroff"], timeout=60, check=False)


def load_destroy() -> dict[str, Any] | None:
    """The credential file, or None when maider wrote none (power-off mode)."""
    try:
        with open(vm_path(DESTROY_PATH), encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log(f"{DESTROY_PATH} is unreadable: powering off instead")
        return None
    return doc if isinstance(doc, dict) and doc.get("calls") else None


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def run_call(call: dict[str, Any], timeout: float, secrets: list[str]) -> tuple[bool, str]:
    """One HTTP call of the credential file: (done, what happened, without the credential)."""
    method = str(call.get("method", "POST")).upper()
    url = str(call["url"])
    body = call.get("json")
    data = json.dumps(body).encode() if body is not None else None
    headers = {str(k): str(v) for k, v in (call.get("headers") or {}).items()}
    if data is not None:
        headers.setdefault("Content-Type", "application/json")
    ok = {int(s) for s in call.get("ok_statuses") or (200, 201, 202, 204, 404)}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (OSError, ValueError) as exc:
        return False, scrub(f"{method} {_where(url)}: {exc}", secrets)
    return code in ok, f"{method} {_where(url)} answered HTTP {code}"


def destroy(settings: dict[str, Any], reason: str, stop: Any) -> str:
    """Delete this VM through the provider API, else power off. Returns the outcome."""
    doc = load_destroy()
    if doc is None:
        log(f"no deletion credential on this VM: powering off ({reason})")
        wall(f"maider: this VM powers off now ({reason}).")
        return "powering-off"
    calls = [c for c in doc.get("calls", []) if isinstance(c, dict)]
    secrets = [str(s) for s in doc.get("secrets") or []]
    deadline = time.monotonic() + float(settings["destroy_retry_s"])
    wait = 1.0
    wall(f"maider: this VM deletes itself now ({reason}).")
    index = 0
    while index < len(calls):
        done, what = run_call(calls[index], float(settings["http_timeout_s"]), secrets)
        log(what)
        if done:
            index += 1
            wait = 1.0
            continue
        if time.monotonic() + wait > deadline or stop():
            log(f"the provider API kept failing for {settings['destroy_retry_s']:.0f} s: powering off")
            return "powering-off"
        time.sleep(wait)
        wait = min(wait * 2, 60.0)
    log("deletion accepted by the provider; waiting to be switched off")
    return "destroyed"


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------


def tick(settings: dict[str, Any], now: float) -> tuple[Doc, Any]:
    """One round: observe, decide, warn, persist. Returns the document and the decision."""
    with locked():
        doc = Doc.load(settings, now)
        probe_window = probe_open(doc.status, settings, now)
        if doc.status["phase"] in ("watching", "warned"):
            observe(doc, settings, now, judge=not probe_window)
        decision = policy.decide(doc.config, doc.state, now)
        if decision.action == "none" and doc.status["phase"] == "warned":
            doc.status["phase"] = "watching"  # activity or an extension moved the deadline
        if policy.needs_warning(doc.state, decision):
            doc.state = policy.mark_warned(doc.state, decision)
            doc.status["phase"] = "warned"
            what = "deletes itself" if load_destroy() else "powers off"
            message = (
                f"maider: this VM {what} in {decision.seconds_left / 60:.0f} min "
                f"({_reason_text(decision.reason)}); run `maider extend` on your laptop to keep it"
            )
            log(message)
            wall(message)
        if decision.action == "destroy" and decision.reason == "idle" and probe_window:
            # maider itself is sending requests (a benchmark, `maider check`): somebody is there.
            # The lifetime rule still holds.
            lifetime_at = policy.deadlines(doc.config, doc.state)["max_lifetime"]
            if lifetime_at <= now:
                decision = policy.Decision("destroy", "max_lifetime", lifetime_at, 0.0)
            else:
                decision = policy.Decision("none", "max_lifetime", lifetime_at, lifetime_at - now)
        if decision.action == "destroy" and doc.status["phase"] in ("watching", "warned"):
            doc.status["phase"] = "destroying"
            doc.status["acted_at"] = now
            doc.status["acted_reason"] = decision.reason
        doc.save()
        return doc, decision


def _reason_text(reason: str) -> str:
    return "max lifetime reached" if reason == "max_lifetime" else "idle"


def _set_phase(settings: dict[str, Any], phase: str) -> None:
    with locked():
        doc = Doc.load(settings, time.time())
        doc.status["phase"] = phase
        doc.save()


def serve(settings: dict[str, Any]) -> int:
    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    poll = float(settings["poll_s"])
    cfg = settings["policy"]
    log(
        f"watching vLLM at {vllm_url()}: idle timeout {_minutes(cfg.idle_timeout_s)}, max lifetime "
        f"{_minutes(cfg.max_lifetime_s)}, poll every {poll:g} s"
    )
    _after_power_on(settings, time.time())
    while not stopping:
        now = time.time()
        try:
            doc, _ = tick(settings, now)
        except (WatchdogError, OSError, ValueError) as exc:
            log(f"error: {exc}")
            time.sleep(poll)
            continue
        phase = doc.status["phase"]
        if phase == "destroying":
            log(f"acting: {_reason_text(str(doc.status['acted_reason']))}")
            outcome = destroy(settings, _reason_text(str(doc.status["acted_reason"])), lambda: stopping)
            _set_phase(settings, outcome)
            if outcome == "powering-off":
                poweroff()
        elif phase == "destroyed":
            overdue = now - float(doc.status["acted_at"] or now)
            if overdue > float(settings["poweroff_margin_s"]):
                log("the VM still runs long after its deletion was accepted: powering off")
                _set_phase(settings, "powering-off")
                poweroff()
        elif phase == "powering-off":
            poweroff()  # the service restarted before the power-off happened
        _sleep(poll, lambda: stopping)
    return 0


def _after_power_on(settings: dict[str, Any], now: float) -> None:
    """Somebody powered the VM on again after the watchdog powered it off: give them the warning
    time to ``maider extend`` before acting again, instead of powering off at once."""
    with locked():
        doc = Doc.load(settings, now)
        if doc.status["phase"] != "powering-off":
            return
        grace = now + max(float(doc.config.warn_before_s), 60.0)
        doc.state = policy.WatchdogState(
            started_at=doc.state.started_at,
            last_activity_at=doc.state.last_activity_at,
            extended_until=max(grace, doc.state.extended_until or grace),
            warned_for=None,
        )
        doc.status["phase"] = "watching"
        doc.save()
        log(
            "powered on again after the watchdog powered this VM off: acting again in a few minutes unless extended"
        )


def _sleep(seconds: float, stop: Any) -> None:
    end = time.monotonic() + seconds
    while not stop() and time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))


def _minutes(seconds: float | None) -> str:
    return "off" if seconds is None else f"{seconds / 60:g} min"


# --------------------------------------------------------------------------------------------
# Commands for the laptop
# --------------------------------------------------------------------------------------------


def cmd_status(settings: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    return Doc.load(settings, now).report(now)


#: An extension ends this long before the deletion credential expires, so the calls still work.
CREDENTIAL_EXPIRY_MARGIN_S = 15 * 60


def cmd_extend(settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    if not (math.isfinite(seconds) and seconds > 0):
        raise WatchdogError(f"--seconds must be positive, not {seconds}")
    now = time.time()
    with locked():
        doc = Doc.load(settings, now)
        if doc.status["phase"] not in ("watching", "warned"):
            raise WatchdogError(f"too late to extend: the watchdog already acted ({doc.status['phase']})")
        doc.state = policy.extend(doc.state, now, seconds / 60, config=doc.config)
        credential = load_destroy()
        expires = credential.get("expires_at") if credential else None
        if isinstance(expires, (int, float)) and doc.state.extended_until is not None:
            limit = float(expires) - CREDENTIAL_EXPIRY_MARGIN_S
            if doc.state.extended_until > limit:
                # Past the credential's expiry the deletion would be refused and the VM would only
                # power off (still billed): keep the promise the credential can keep.
                doc.state = policy.WatchdogState(
                    started_at=doc.state.started_at,
                    last_activity_at=doc.state.last_activity_at,
                    extended_until=max(limit, now),
                    warned_for=doc.state.warned_for,
                )
                doc.status["extend_capped_at"] = limit
                log("extension capped where the deletion credential expires")
        if doc.status["phase"] == "warned":
            doc.status["phase"] = "watching"
        doc.save()
        log(f"extended until {time.strftime('%H:%M:%S', time.gmtime(doc.state.extended_until or now))} UTC")
        return doc.report(now)


def cmd_probe_begin(settings: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    with locked():
        doc = Doc.load(settings, now)
        if not probe_open(doc.status, settings, now):
            # Judge the traffic before the probe, so a user's requests are not subtracted.
            observe(doc, settings, now)
            doc.status["probe"] = {
                "open": 0,
                "since": now,
                "requests": 0,
                "prompt_tokens": 0,
                "generation_tokens": 0,
            }
        doc.status["probe"]["open"] = int(doc.status["probe"]["open"]) + 1
        doc.save()
        return doc.report(now)


def cmd_probe_end(
    settings: dict[str, Any], requests: int, prompt_tokens: int, generation_tokens: int
) -> dict[str, Any]:
    if min(requests, prompt_tokens, generation_tokens) < 0:
        raise WatchdogError("probe totals cannot be negative")
    now = time.time()
    with locked():
        doc = Doc.load(settings, now)
        probe = doc.status.get("probe")
        if probe:
            probe["requests"] = int(probe.get("requests", 0)) + requests
            probe["prompt_tokens"] = int(probe.get("prompt_tokens", 0)) + prompt_tokens
            probe["generation_tokens"] = int(probe.get("generation_tokens", 0)) + generation_tokens
            probe["open"] = int(probe.get("open", 1)) - 1
            if probe["open"] <= 0:
                observe(doc, settings, now)  # subtracts the totals, then closes the window
        doc.save()
        return doc.report(now)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM_NAME, description="maider's idle watchdog on the VM")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the service (systemd runs it)")
    sub.add_parser("status", help="print the state as JSON")
    ext = sub.add_parser("extend", help="keep the VM at least this much longer")
    ext.add_argument("--seconds", type=float, required=True)
    sub.add_parser("probe-begin", help="maider's own inference traffic starts")
    end = sub.add_parser("probe-end", help="maider's own inference traffic ended: subtract it")
    end.add_argument("--requests", type=int, default=0)
    end.add_argument("--prompt-tokens", type=int, default=0)
    end.add_argument("--generation-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "run":
            return serve(settings)
        if args.command == "status":
            result = cmd_status(settings)
        elif args.command == "extend":
            result = cmd_extend(settings, args.seconds)
        elif args.command == "probe-begin":
            result = cmd_probe_begin(settings)
        else:
            result = cmd_probe_end(settings, args.requests, args.prompt_tokens, args.generation_tokens)
    except (WatchdogError, OSError, ValueError) as exc:
        print(f"maider-watchdog: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
