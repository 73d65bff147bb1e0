"""Errors the user can fix. The CLI prints each as one line (no traceback) and exits non-zero."""

from __future__ import annotations


class MaiderError(Exception):
    """Something the user can fix: the message says what is wrong and how to fix it."""

    exit_code = 1


class ConfigError(MaiderError):
    """A setting is missing, malformed or contradicts another one."""


class UnknownProviderError(ConfigError):
    pass


class PlanError(MaiderError):
    """The requested plan cannot work (type not sold in region, model does not fit...).

    Carries every problem found, one line each, so `validate` can print them all at once.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] if len(problems) == 1 else f"{len(problems)} problems found")
        self.problems = problems
