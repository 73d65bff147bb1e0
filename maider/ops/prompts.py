"""The benchmark prompt set: fixed coding tasks, versioned, and the cost-per-token arithmetic.

Results are only comparable across GPUs, models and providers if every run sends the same
prompts with the same limits. So the set is frozen: changing a prompt's text, its ``max_tokens``
or the list means a new :data:`PROMPT_SET_VERSION` (``tests/test_ops_benchdb.py`` pins the
digest of each version, so an edit without a bump fails), and benchmark history records the name
and version it ran, so ``compare`` never mixes versions unknowingly.

The previous generation had 12 prompts with an ``expected_tokens`` it stored and never used
(prior-art-maider.md §6). Here ``max_tokens`` is the limit actually sent, with :data:`TEMPERATURE` 0,
and the categories span the output lengths aider produces: short answers (a commit message, an
explanation), medium edits (a function with tests), long ones (a refactor of a whole file).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Literal

PROMPT_SET_NAME = "maider-coding"
PROMPT_SET_VERSION = 1
#: Sampling temperature of every request: greedy decoding, so output lengths repeat across runs.
TEMPERATURE = 0.0

Length = Literal["short", "medium", "long"]


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    category: str
    #: The output length the task asks for; ``max_tokens`` is sized for it.
    length: Length
    max_tokens: int
    prompt: str
    system: str = "You are an expert software engineer. Answer with code and brief explanations only."


_DIFF = "\n".join(
    [
        "--- a/cache.py",
        "+++ b/cache.py",
        "@@ -1,12 +1,20 @@",
        "-import time",
        "+import threading",
        "+import time",
        " ",
        " class TTLCache:",
        "     def __init__(self, ttl):",
        "         self.ttl = ttl",
        "         self._data = {}",
        "+        self._lock = threading.Lock()",
        " ",
        "     def get(self, key):",
        "-        value, expires = self._data.get(key, (None, 0))",
        "-        if time.time() > expires:",
        "-            return None",
        "-        return value",
        "+        with self._lock:",
        "+            value, expires = self._data.get(key, (None, 0))",
        "+            if time.monotonic() > expires:",
        "+                self._data.pop(key, None)",
        "+                return None",
        "+            return value",
        "+",
        "+    def set(self, key, value):",
        "+        with self._lock:",
        "+            self._data[key] = (value, time.monotonic() + self.ttl)",
        "",
    ]
)

_LEGACY = """\
def process(orders):
    result = []
    for o in orders:
        if o['status'] == 'paid':
            if o['country'] == 'US':
                tax = o['amount'] * 0.07
            elif o['country'] == 'DE':
                tax = o['amount'] * 0.19
            elif o['country'] == 'FR':
                tax = o['amount'] * 0.20
            else:
                tax = 0
            total = o['amount'] + tax
            if o.get('coupon') == 'SAVE10':
                total = total * 0.9
            elif o.get('coupon') == 'SAVE20':
                total = total * 0.8
            result.append({'id': o['id'], 'total': round(total, 2), 'tax': round(tax, 2)})
        elif o['status'] == 'refunded':
            result.append({'id': o['id'], 'total': -o['amount'], 'tax': 0})
    return result
"""

PROMPTS: tuple[BenchPrompt, ...] = (
    BenchPrompt(
        id="commit-message",
        category="explain",
        length="short",
        max_tokens=96,
        prompt="Write a one-line conventional commit message (at most 72 characters) for this diff. "
        "Reply with the message only.\n\n" + _DIFF,
    ),
    BenchPrompt(
        id="explain-diff",
        category="explain",
        length="short",
        max_tokens=256,
        prompt="Explain in at most five bullet points what this diff changes and why each change "
        "matters.\n\n" + _DIFF,
    ),
    BenchPrompt(
        id="regex-function",
        category="implement",
        length="short",
        max_tokens=256,
        prompt="Write a Python function `parse_duration(text: str) -> int` that converts strings "
        "like '1h30m', '45s' or '2h' into seconds and raises ValueError on anything else. Code only.",
    ),
    BenchPrompt(
        id="implement-lru",
        category="implement",
        length="medium",
        max_tokens=768,
        prompt="Implement a thread-safe LRU cache class in Python with `get`, `put` and a "
        "`max_size` limit, without functools.lru_cache, using only the standard library. "
        "Include type hints and docstrings.",
    ),
    BenchPrompt(
        id="write-tests",
        category="tests",
        length="medium",
        max_tokens=1024,
        prompt="Write pytest tests for this function covering every branch, including refunds, "
        "unknown countries and both coupons. Use parametrize where it helps.\n\n" + _LEGACY,
    ),
    BenchPrompt(
        id="fix-bug",
        category="debug",
        length="medium",
        max_tokens=768,
        prompt="This function should return the k most frequent words, ties broken "
        "alphabetically, but it returns wrong results. Find the bugs and give the corrected "
        "function.\n\n"
        "def top_k(words, k):\n"
        "    counts = {}\n"
        "    for w in words:\n"
        "        counts[w] = counts.get(w, 1) + 1\n"
        "    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))\n"
        "    return [w for w, _ in ranked[:k]]\n",
    ),
    BenchPrompt(
        id="refactor-file",
        category="refactor",
        length="long",
        max_tokens=2048,
        prompt="Refactor this function into small, well-named functions with a tax-rate table and "
        "a coupon table, dataclasses instead of dicts, and type hints. Keep the behaviour "
        "identical and show the complete new module.\n\n" + _LEGACY,
    ),
    BenchPrompt(
        id="cli-tool",
        category="implement",
        length="long",
        max_tokens=2048,
        prompt="Write a complete Python command-line tool (argparse, standard library only) that "
        "walks a directory, finds duplicate files by size then SHA-256, prints the groups as a "
        "table, and with --delete keeps the oldest file of each group. Include a main() and "
        "error handling.",
    ),
)


def by_id(prompt_id: str) -> BenchPrompt:
    for p in PROMPTS:
        if p.id == prompt_id:
            return p
    raise KeyError(prompt_id)


def digest(prompts: tuple[BenchPrompt, ...] = PROMPTS) -> str:
    """SHA-256 over everything that is sent: a changed prompt changes it."""
    payload: list[object] = [TEMPERATURE]
    payload += [[p.id, p.category, p.length, p.max_tokens, p.system, p.prompt] for p in prompts]
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def cost_per_million_tokens(hourly_price: float, tokens_per_second: float) -> float:
    """What a million output tokens cost at ``hourly_price`` and a steady ``tokens_per_second``.

    ``hourly_price / (tokens_per_second × 3600) × 1 000 000``, in the price's currency. It is
    the cost of one stream: a GPU serving several requests at once produces more per hour.
    """
    if not (math.isfinite(hourly_price) and hourly_price >= 0):
        raise ValueError(f"hourly_price must be a non-negative number, got {hourly_price}")
    if not (math.isfinite(tokens_per_second) and tokens_per_second > 0):
        raise ValueError(f"tokens_per_second must be positive, got {tokens_per_second}")
    return hourly_price / (tokens_per_second * 3600) * 1_000_000
