"""Helpers for pytest (kept out of the plugin module so test modules can import them freely)."""

from __future__ import annotations

import os

import pytest

from .spec import missing_spec_reason

#: Fake Scaleway credentials that pass the SDK's validation (notes §1.3).
SCW_ACCESS_KEY = "SCWXXXXXXXXXXXXXXXXX"
SCW_SECRET_KEY = "11111111-2222-3333-4444-555555555555"
SCW_PROJECT_ID = "11111111-2222-3333-4444-555555555555"
DO_TOKEN = "cloudsim-do-token"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_spec(vendor: str) -> None:
    """Skip (locally) or fail (when CI=true) a test that needs the vendor's OpenAPI spec."""
    reason = missing_spec_reason(vendor)
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def validate_mode(vendor: str) -> bool | None:
    """``validate=`` for a simulator in tests: in CI a missing spec must fail (checker
    required); locally a missing spec only turns the checks off."""
    return True if in_ci() and vendor in ("linode", "digitalocean") else None
