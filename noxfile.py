"""Test matrix: the core alone, each provider alone, everything together, plus lint, types, packaging.

`python3 -m nox` runs every session; `python3 -m nox -s "tests(linode)"` one of them (`nox -l` lists).
Test sessions install the distributions non-editable and ignore the uv workspace sources
(`--no-sources`), the way a user's pip would; the repository root is still on sys.path for the
test helpers, so the `packaging` session is the one that proves the built wheels themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = False

PROVIDERS = ("linode", "digitalocean", "scaleway")
TEST_DEPS = (
    "pytest>=8",
    "pytest-mock>=3.12",
    "pytest-timeout>=2.3",
    "jsonschema>=4.20",
    "pyyaml>=6",
    "openapi-core>=0.19",
    "asyncssh>=2.14",
)
PYTEST_ARGS = ("-m", "not packaging", "-p", "no:cacheprovider")


def _install(session: nox.Session, *args: str) -> None:
    # uv would otherwise honour [tool.uv.sources] and install the workspace editable.
    extra = ("--no-sources",) if session.venv_backend == "uv" else ()
    session.install(*extra, *args)


def _pytest(session: nox.Session, *extra: str) -> None:
    env = {"MAIDER_SPECS_DIR": os.environ.get("MAIDER_SPECS_DIR", str(Path("../shared/specs").resolve()))}
    session.run("pytest", *PYTEST_ARGS, *extra, *session.posargs, env=env)


@nox.session(name="tests-core")
def tests_core(session: nox.Session) -> None:
    """The core with no provider installed: it must run and say how to add one."""
    _install(session, ".", *TEST_DEPS)
    _pytest(session)


@nox.session(name="tests")
@nox.parametrize("provider", PROVIDERS, ids=list(PROVIDERS))
def tests_provider(session: nox.Session, provider: str) -> None:
    """One provider alone: its catalog, settings, SDK and simulator tests."""
    _install(session, ".", f"./maider_{provider}", *TEST_DEPS)
    _pytest(session)


@nox.session(name="tests-all")
def tests_all(session: nox.Session) -> None:
    """All three providers together (recommendations across clouds, currencies)."""
    _install(session, ".", *(f"./maider_{p}" for p in PROVIDERS), *TEST_DEPS)
    _pytest(session)


@nox.session(venv_backend="virtualenv")  # the test drives pip itself
def packaging(session: nox.Session) -> None:
    """Build the four wheels (plus the example plugin) and install them as users do, offline."""
    # The suite's conftest loads the simulator and VM-emulator fixtures, hence the test deps.
    session.install("build>=1.2", *TEST_DEPS)
    session.run(
        "pytest", "-m", "packaging", "-p", "no:cacheprovider", "tests/test_packaging.py", *session.posargs
    )


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(".", *(f"./maider_{p}" for p in PROVIDERS), "mypy>=1.10", "types-PyYAML")
    session.run("mypy")
