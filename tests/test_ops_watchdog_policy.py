"""The idle watchdog's decisions: idle, traffic, extend, max lifetime, warnings, the shared JSON."""

from __future__ import annotations

import json

import pytest

from maider.ops.watchdog_policy import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_LIFETIME_S,
    DEFAULT_WARN_BEFORE_S,
    FORMAT_VERSION,
    WatchdogConfig,
    WatchdogState,
    decide,
    dumps,
    extend,
    initial_state,
    loads,
    mark_warned,
    needs_warning,
    record_activity,
)

T0 = 1_750_000_000.0
MIN = 60.0
HOUR = 3600.0
CONFIG = WatchdogConfig()  # idle 45 min, lifetime 8 h, warn 10 min


def test_defaults_are_conservative() -> None:
    assert (DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_LIFETIME_S, DEFAULT_WARN_BEFORE_S) == (
        45 * 60,
        8 * 3600,
        10 * 60,
    )
    assert CONFIG.idle_timeout_s == 45 * MIN


def test_idle_vm_is_destroyed_on_schedule() -> None:
    state = initial_state(T0)
    assert decide(CONFIG, state, T0).action == "none"
    assert decide(CONFIG, state, T0 + 34 * MIN).action == "none"
    warn = decide(CONFIG, state, T0 + 35 * MIN)
    assert (warn.action, warn.reason, warn.at, warn.seconds_left) == ("warn", "idle", T0 + 45 * MIN, 10 * MIN)
    assert decide(CONFIG, state, T0 + 45 * MIN - 1).action == "warn"
    done = decide(CONFIG, state, T0 + 45 * MIN)
    assert (done.action, done.reason, done.seconds_left) == ("destroy", "idle", 0.0)
    assert decide(CONFIG, state, T0 + 5 * HOUR).action == "destroy"


def test_idle_clock_can_start_when_vllm_is_ready() -> None:
    state = initial_state(T0, ready_at=T0 + 20 * MIN)  # a long model download
    assert decide(CONFIG, state, T0 + 50 * MIN).action == "none"
    assert decide(CONFIG, state, T0 + 65 * MIN).action == "destroy"


def test_traffic_keeps_the_vm() -> None:
    state = initial_state(T0)
    now = T0
    for _ in range(12):  # a request every 30 minutes for six hours
        now += 30 * MIN
        state = record_activity(state, now)
        assert decide(CONFIG, state, now + 1).action == "none"
    assert state.last_activity_at == T0 + 6 * HOUR
    # Old activity reported late never moves the clock back.
    assert record_activity(state, T0).last_activity_at == T0 + 6 * HOUR


def test_max_lifetime_destroys_even_under_traffic() -> None:
    state = initial_state(T0)
    now = T0 + 8 * HOUR - 5 * MIN
    state = record_activity(state, now)
    d = decide(CONFIG, state, now)
    assert (d.action, d.reason, d.at) == ("warn", "max_lifetime", T0 + 8 * HOUR)
    state = record_activity(state, T0 + 8 * HOUR)
    d = decide(CONFIG, state, T0 + 8 * HOUR)
    assert (d.action, d.reason) == ("destroy", "max_lifetime")


def test_earliest_rule_wins_and_lifetime_wins_a_tie() -> None:
    cfg = WatchdogConfig(idle_timeout_s=HOUR, max_lifetime_s=HOUR, warn_before_s=0)
    d = decide(cfg, initial_state(T0), T0)
    assert (d.reason, d.at) == ("max_lifetime", T0 + HOUR)
    state = record_activity(initial_state(T0), T0 + 7 * HOUR + 30 * MIN)
    assert decide(CONFIG, state, T0 + 7 * HOUR + 31 * MIN).reason == "max_lifetime"


def test_extend_postpones_idle() -> None:
    state = initial_state(T0)
    now = T0 + 40 * MIN  # warned, 5 minutes left
    assert decide(CONFIG, state, now).action == "warn"
    state = extend(state, now, 60)
    assert state.extended_until == now + HOUR
    assert state.last_activity_at == T0  # extending is not activity
    d = decide(CONFIG, state, now)
    assert (d.action, d.reason, d.at, d.extended) == ("none", "idle", now + HOUR, True)
    assert decide(CONFIG, state, now + 50 * MIN).action == "warn"
    assert decide(CONFIG, state, now + HOUR).action == "destroy"


def test_extend_postpones_max_lifetime() -> None:
    state = initial_state(T0)
    now = T0 + 8 * HOUR - 5 * MIN
    state = record_activity(state, now)
    state = extend(state, now, 120)
    d = decide(CONFIG, state, T0 + 8 * HOUR + 30 * MIN)
    assert (d.action, d.reason, d.extended) == ("none", "max_lifetime", True)
    assert decide(CONFIG, state, now + 2 * HOUR).action == "destroy"


def test_traffic_can_outlast_an_extension() -> None:
    state = extend(initial_state(T0), T0, 30)
    # Traffic beyond the extension moves the idle deadline past it.
    state = record_activity(state, T0 + 25 * MIN)
    d = decide(CONFIG, state, T0 + 31 * MIN)
    assert (d.action, d.at, d.extended) == ("none", T0 + 70 * MIN, False)


def test_extensions_add_up_and_are_capped() -> None:
    state = extend(initial_state(T0), T0, 60)
    state = extend(state, T0 + 10 * MIN, 60)
    assert state.extended_until == T0 + 2 * HOUR  # counted from the current extension
    capped = extend(state, T0 + 10 * MIN, 24 * 60)
    assert capped.extended_until == T0 + 10 * MIN + 8 * HOUR  # max_extension_s ahead of now
    small_cap = WatchdogConfig(max_extension_s=HOUR)
    assert extend(initial_state(T0), T0, 600, config=small_cap).extended_until == T0 + HOUR
    # A cap below an existing extension leaves it as it was.
    assert extend(capped, T0 + 10 * MIN, 5, config=small_cap).extended_until == capped.extended_until
    with pytest.raises(ValueError):
        extend(state, T0, 0)
    with pytest.raises(ValueError):
        extend(state, T0, float("nan"))


def test_warning_is_sent_once_per_deadline() -> None:
    state = initial_state(T0)
    d = decide(CONFIG, state, T0 + 36 * MIN)
    assert needs_warning(state, d)
    state = mark_warned(state, d)
    assert not needs_warning(state, decide(CONFIG, state, T0 + 40 * MIN))
    # After an extension the new deadline is warned about again.
    state = extend(state, T0 + 40 * MIN, 30)
    assert not needs_warning(state, decide(CONFIG, state, T0 + 41 * MIN))  # "none" now
    later = decide(CONFIG, state, T0 + 62 * MIN)
    assert later.action == "warn" and needs_warning(state, later)
    assert not needs_warning(state, decide(CONFIG, state, T0 + 2 * HOUR))  # destroy is not a warning


def test_idle_rule_can_be_disabled_but_not_the_lifetime() -> None:
    cfg = WatchdogConfig(idle_timeout_s=None)
    state = initial_state(T0)
    assert decide(cfg, state, T0 + 7 * HOUR).action == "none"
    assert decide(cfg, state, T0 + 8 * HOUR).reason == "max_lifetime"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"idle_timeout_s": 0},
        {"idle_timeout_s": -5},
        {"max_lifetime_s": 0},
        {"max_lifetime_s": float("inf")},
        {"warn_before_s": -1},
        {"max_extension_s": 0},
    ],
)
def test_config_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WatchdogConfig(**kwargs)


def test_state_is_validated() -> None:
    with pytest.raises(ValueError):
        WatchdogState(started_at=float("nan"), last_activity_at=T0)
    with pytest.raises(ValueError):
        WatchdogState(started_at=T0, last_activity_at=T0, extended_until=float("inf"))


def test_json_round_trip() -> None:
    cfg = WatchdogConfig(idle_timeout_s=30 * MIN, max_lifetime_s=4 * HOUR, warn_before_s=5 * MIN)
    state = mark_warned(
        extend(initial_state(T0), T0 + MIN, 30), decide(cfg, initial_state(T0), T0 + 26 * MIN)
    )
    text = dumps(cfg, state)
    doc = json.loads(text)
    assert doc["version"] == FORMAT_VERSION
    assert set(doc) == {"version", "config", "state"}
    assert loads(text) == (cfg, state)
    disabled = WatchdogConfig(idle_timeout_s=None)
    assert loads(dumps(disabled, initial_state(T0)))[0].idle_timeout_s is None


def test_json_tolerates_unknown_keys_and_defaults_missing_config() -> None:
    doc = {
        "version": 1,
        "config": {"max_lifetime_s": 7200, "future_knob": True},
        "state": {"started_at": T0, "last_activity_at": T0 + 5, "note": "x"},
        "extra": [],
    }
    cfg, state = loads(json.dumps(doc))
    assert cfg == WatchdogConfig(max_lifetime_s=7200)
    assert state == WatchdogState(started_at=T0, last_activity_at=T0 + 5)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not json", "not JSON"),
        ("[]", "JSON object"),
        ('{"config": {}, "state": {}}', "no version"),
        ('{"version": 2, "config": {}, "state": {}}', "upgrade maider"),
        ('{"version": 1, "config": [], "state": {}}', "'config' must be an object"),
        ('{"version": 1, "config": {}, "state": {"started_at": 1}}', "'last_activity_at' is missing"),
        (
            '{"version": 1, "config": {}, "state": {"started_at": "yesterday", "last_activity_at": 1}}',
            "must be a number",
        ),
        ('{"version": 1, "config": {"max_lifetime_s": null}, "state": {}}', "got null"),
        ('{"version": 1, "config": {"warn_before_s": true}, "state": {}}', "must be a number"),
    ],
)
def test_json_errors_are_clear(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        loads(text)
