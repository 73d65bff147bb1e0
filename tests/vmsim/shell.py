"""The command interpreter of an emulated VM: what sshd's ``bash -c`` and cloud-init's runcmd run.

A small POSIX-shell subset, parsed properly (quotes, escapes, ``$VAR``/``${VAR:-x}``/``$?``
expanded at run time, comments): simple commands with ``NAME=value`` prefixes, pipelines
``|``, lists ``&&`` ``||`` ``;`` ``&`` (run in the foreground) and newlines, redirections
``> >> < 2> 2>&1 >&2 &> &>>``, ``set -e``/``-o pipefail``. Compound commands (``if``, ``for``,
subshells, ``{ …; }``) and command substitution are refused with a syntax error that says
"not emulated", so an unsupported construct fails loudly instead of doing something else.

Commands are stand-ins: the basic utilities here (``cat``, ``install``, ``test``, ``mkdir``…),
and the VM-level ones the VM registers (``cloud-init``, ``systemctl``, ``docker``,
``nvidia-smi``…). A command without a stand-in succeeds as a recorded "not emulated" no-op when
cloud-init runs it (bootcmd/runcmd), and is "command not found" (exit 127) over SSH.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vm import EmulatedVM

#: Where absolute command paths may point (``/usr/bin/docker`` runs the docker stand-in).
BIN_DIRS = frozenset({"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"})
RESERVED = frozenset(
    {"if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac", "function"}
)
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ASSIGN_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


class ShellSyntaxError(Exception):
    pass


class _ExitScript(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# ------------------------------------------------------------------------------------------
# Streams
# ------------------------------------------------------------------------------------------


class Stdin:
    """What a command reads. Lazy: the SSH channel is only read when a command wants stdin."""

    def read(self) -> bytes:
        return b""


class BytesStdin(Stdin):
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def read(self) -> bytes:
        data, self._data = self._data or b"", b""
        return data


class LazyStdin(Stdin):
    def __init__(self, fetch: Callable[[], bytes]) -> None:
        self._fetch: Callable[[], bytes] | None = fetch

    def read(self) -> bytes:
        fetch, self._fetch = self._fetch, None
        return fetch() if fetch is not None else b""


class Sink:
    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class BufferSink(Sink):
    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buf.write(data)

    def getvalue(self) -> bytes:
        return self.buf.getvalue()


class NullSink(Sink):
    def write(self, data: bytes) -> None:
        pass


class FileSink(Sink):
    """A redirection target in the VM (truncated when opened, like a shell; written on close)."""

    def __init__(self, vm: EmulatedVM, path: str, cwd: str, append: bool) -> None:
        self.vm, self.path, self.cwd, self.append = vm, path, cwd, append
        self.buf = io.BytesIO()
        host = vm.fs.host(path, cwd)
        if host.is_dir():
            raise IsADirectoryError(path)
        if not host.parent.is_dir():
            raise FileNotFoundError(path)
        if not append or not host.exists():
            vm.fs.write_bytes(path, b"", cwd=cwd, mode=None if host.exists() else 0o644)

    def write(self, data: bytes) -> None:
        self.buf.write(data)

    def close(self) -> None:
        self.vm.fs.write_bytes(self.path, self.buf.getvalue(), append=True, cwd=self.cwd)


# ------------------------------------------------------------------------------------------
# Lexer and parser
# ------------------------------------------------------------------------------------------


@dataclass
class Part:
    kind: str  # "lit" or "var"
    text: str  # literal text, or the variable name
    quoted: bool = False
    op: str = ""  # for ${NAME:-x} and friends: ":-", "-", ":=", ":+"
    arg: str = ""


@dataclass
class Word:
    parts: list[Part] = field(default_factory=list)

    @property
    def quoted(self) -> bool:
        return any(p.quoted for p in self.parts)

    def literal(self) -> str | None:
        """The text when the word has no expansion (for reserved words and operators)."""
        if all(p.kind == "lit" for p in self.parts):
            return "".join(p.text for p in self.parts)
        return None


@dataclass
class Tok:
    kind: str  # "word", "op", "io" (a redirection fd number)
    value: str = ""
    word: Word | None = None


OPS = ("&>>", "&&", "||", ";;", ">>", "&>", ">&", "<&", ";", "|", "&", ">", "<", "(", ")", "\n")


def lex(text: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n = 0, len(text)
    cur: Word | None = None

    def lit(s: str, quoted: bool) -> None:
        nonlocal cur
        if cur is None:
            cur = Word()
        if cur.parts and cur.parts[-1].kind == "lit" and cur.parts[-1].quoted == quoted:
            cur.parts[-1].text += s
        else:
            cur.parts.append(Part("lit", s, quoted))

    def end_word() -> None:
        nonlocal cur
        if cur is not None:
            toks.append(Tok("word", word=cur))
            cur = None

    def dollar(j: int, quoted: bool) -> int:
        """Parse an expansion at text[j] == '$'; return the index after it."""
        nonlocal cur
        if j + 1 >= n:
            lit("$", quoted)
            return j + 1
        c = text[j + 1]
        if c == "(":
            raise ShellSyntaxError("command substitution $(…) is not emulated")
        if c == "{":
            close = text.find("}", j + 2)
            if close < 0:
                raise ShellSyntaxError("bad substitution")
            body = text[j + 2 : close]
            m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*|\?|#|[0-9])(?:(:-|-|:=|:\+|\+)(.*))?", body, re.S)
            if m is None:
                raise ShellSyntaxError(f"${{{body}}}: bad substitution (not emulated)")
            if cur is None:
                cur = Word()
            cur.parts.append(Part("var", m.group(1), quoted, m.group(2) or "", m.group(3) or ""))
            return close + 1
        if c in "?$#!0123456789":
            if cur is None:
                cur = Word()
            cur.parts.append(Part("var", c, quoted))
            return j + 2
        m = NAME_RE.match(text, j + 1)
        if m is None:
            lit("$", quoted)
            return j + 1
        if cur is None:
            cur = Word()
        cur.parts.append(Part("var", m.group(0), quoted))
        return m.end()

    while i < n:
        c = text[i]
        if c in " \t\r":
            end_word()
            i += 1
        elif c == "#" and cur is None:
            while i < n and text[i] != "\n":
                i += 1
        elif c == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                i += 2
            else:
                if i + 1 < n:
                    lit(text[i + 1], True)
                i += 2
        elif c == "'":
            close = text.find("'", i + 1)
            if close < 0:
                raise ShellSyntaxError("unexpected EOF while looking for matching `''")
            lit(text[i + 1 : close], True)
            i = close + 1
        elif c == '"':
            i += 1
            if cur is None:
                cur = Word()
            lit("", True)
            while True:
                if i >= n:
                    raise ShellSyntaxError("unexpected EOF while looking for matching `\"'")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
                    if text[i + 1] != "\n":
                        lit(text[i + 1], True)
                    i += 2
                elif c == "$":
                    i = dollar(i, True)
                elif c == "`":
                    raise ShellSyntaxError("command substitution `…` is not emulated")
                else:
                    lit(c, True)
                    i += 1
        elif c == "$":
            i = dollar(i, False)
        elif c == "`":
            raise ShellSyntaxError("command substitution `…` is not emulated")
        elif text.startswith("<<", i):
            raise ShellSyntaxError("here-documents (<<) are not emulated; pipe the text on stdin")
        elif c in ";&|<>()\n":
            op = next(o for o in OPS if text.startswith(o, i))
            if (
                op[0] in "<>"
                and cur is not None
                and (lit_text := cur.literal()) is not None
                and lit_text.isdigit()
                and not cur.quoted
            ):
                toks.append(Tok("io", lit_text))
                cur = None
            else:
                end_word()
            toks.append(Tok("op", op))
            i += len(op)
        else:
            lit(c, False)
            i += 1
    end_word()
    return toks


@dataclass
class Redir:
    fd: int
    op: str  # ">", ">>", "<", ">&", "<&", "&>", "&>>"
    target: Word


@dataclass
class Simple:
    assigns: list[tuple[str, Word]]
    words: list[Word]
    redirs: list[Redir]


@dataclass
class Pipeline:
    cmds: list[Simple]
    negate: bool = False


@dataclass
class AndOr:
    first: Pipeline
    rest: list[tuple[str, Pipeline]]


def parse(text: str) -> list[AndOr]:
    toks = lex(text)
    pos = 0

    def peek() -> Tok | None:
        return toks[pos] if pos < len(toks) else None

    def is_op(t: Tok | None, *ops: str) -> bool:
        return t is not None and t.kind == "op" and t.value in ops

    def skip_newlines() -> None:
        nonlocal pos
        while is_op(peek(), "\n"):
            pos += 1

    def simple() -> Simple:
        nonlocal pos
        assigns: list[tuple[str, Word]] = []
        words: list[Word] = []
        redirs: list[Redir] = []
        while True:
            t = peek()
            if t is None:
                break
            if t.kind == "io" or is_op(t, ">", ">>", "<", ">&", "<&", "&>", "&>>"):
                fd = -1
                if t.kind == "io":
                    fd = int(t.value)
                    pos += 1
                    t = peek()
                    if t is None or t.kind != "op":
                        raise ShellSyntaxError("syntax error near unexpected token `newline'")
                op = t.value
                pos += 1
                target = peek()
                if target is None or target.kind != "word" or target.word is None:
                    shown = "newline" if target is None else target.value.replace("\n", "newline")
                    raise ShellSyntaxError(f"syntax error near unexpected token `{shown}'")
                pos += 1
                if fd < 0:
                    fd = 0 if op in ("<", "<&") else 1
                redirs.append(Redir(fd, op, target.word))
                continue
            if t.kind == "op":
                if t.value in ("(", ")"):
                    raise ShellSyntaxError("subshells ( … ) are not emulated")
                break
            assert t.word is not None
            lit_text = t.word.literal()
            reserved = lit_text in RESERVED or lit_text in ("{", "}")
            if not words and lit_text is not None and not t.word.quoted and reserved:
                raise ShellSyntaxError(f"compound command `{lit_text}' is not emulated")
            first = t.word.parts[0] if t.word.parts else None
            if not words and first is not None and first.kind == "lit" and not first.quoted:
                m = ASSIGN_RE.match(first.text)
                if m:
                    value = Word([Part("lit", m.group(2), False), *t.word.parts[1:]])
                    assigns.append((m.group(1), value))
                    pos += 1
                    continue
            words.append(t.word)
            pos += 1
        if not words and not assigns and not redirs:
            t = peek()
            shown = "newline" if t is None or t.value == "\n" else t.value
            raise ShellSyntaxError(f"syntax error near unexpected token `{shown}'")
        return Simple(assigns, words, redirs)

    def pipeline() -> Pipeline:
        nonlocal pos
        negate = False
        t = peek()
        if t is not None and t.kind == "word" and t.word is not None and t.word.literal() == "!":
            negate = True
            pos += 1
        cmds = [simple()]
        while is_op(peek(), "|"):
            pos += 1
            skip_newlines()
            cmds.append(simple())
        return Pipeline(cmds, negate)

    def and_or() -> AndOr:
        nonlocal pos
        first = pipeline()
        rest: list[tuple[str, Pipeline]] = []
        while is_op(peek(), "&&", "||"):
            op = toks[pos].value
            pos += 1
            skip_newlines()
            rest.append((op, pipeline()))
        return AndOr(first, rest)

    out: list[AndOr] = []
    skip_newlines()
    while pos < len(toks):
        out.append(and_or())
        t = peek()
        if t is None:
            break
        if is_op(t, ";", "&", "\n"):
            pos += 1
            while is_op(peek(), ";", "\n"):
                pos += 1
            continue
        shown = t.value if t.kind != "word" else (t.word.literal() if t.word else "") or "word"
        raise ShellSyntaxError(f"syntax error near unexpected token `{shown}'")
    return out


# ------------------------------------------------------------------------------------------
# Execution
# ------------------------------------------------------------------------------------------


@dataclass
class CommandRecord:
    """One simple command the VM ran."""

    source: str  # "ssh", "bootcmd", "runcmd", "systemd", "api"
    argv: list[str]
    rc: int
    emulated: bool

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


@dataclass
class Ctx:
    """What a command stand-in gets: arguments, streams, environment."""

    shell: Shell
    argv: list[str]
    stdin: Stdin
    out: Sink
    err: Sink
    env: dict[str, str]

    @property
    def vm(self) -> EmulatedVM:
        return self.shell.vm

    @property
    def cwd(self) -> str:
        return self.shell.cwd

    @property
    def boot(self) -> bool:
        return self.shell.boot

    def print(self, text: str = "", end: str = "\n") -> None:
        self.out.write((text + end).encode())

    def eprint(self, text: str = "", end: str = "\n") -> None:
        self.err.write((text + end).encode())

    def fail(self, text: str, rc: int = 1) -> int:
        self.eprint(text)
        return rc


Command = Callable[[Ctx], int]


class Shell:
    """One shell process: ``bash -c <command>`` for an SSH exec, or cloud-init's script."""

    def __init__(
        self,
        vm: EmulatedVM,
        *,
        source: str,
        user: str = "root",
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: Stdin | None = None,
    ) -> None:
        self.vm = vm
        self.source = source
        self.boot = source in ("bootcmd", "runcmd")
        self.user = user
        home = "/root" if user == "root" else f"/home/{user}"
        self.cwd = cwd or home
        self.env: dict[str, str] = {
            "HOME": home,
            "USER": user,
            "LOGNAME": user,
            "SHELL": "/bin/bash",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            **(env or {}),
        }
        self.stdin = stdin or Stdin()
        self.last_rc = 0
        self.errexit = False
        self.pipefail = False
        self.lineno = 1

    # -- entry points ----------------------------------------------------------------------

    def run(self, script: str, out: Sink, err: Sink) -> int:
        """Run a script; its exit status is the last command's (or the ``exit`` code)."""
        try:
            return self._run_script(script, out, err)
        except _ExitScript as e:
            return e.code

    def run_lines(self, lines: list[str], out: Sink, err: Sink) -> list[int]:
        """Run script lines one by one (cloud-init's runcmd); the exit code of each line.
        ``exit`` stops the script."""
        rcs: list[int] = []
        for line in lines:
            try:
                rcs.append(self._run_script(line, out, err))
            except _ExitScript as e:
                rcs.append(e.code)
                break
            self.lineno += line.count("\n") + 1
        return rcs

    def run_argv(self, argv: list[str], out: Sink, err: Sink, env: dict[str, str] | None = None) -> int:
        """Run one command without shell parsing (systemd's Exec lines)."""
        ctx = Ctx(self, list(argv), self.stdin, out, err, {**self.env, **(env or {})})
        try:
            rc = self.dispatch(ctx)
        except _ExitScript as e:
            rc = e.code
        self.last_rc = rc
        return rc

    def _run_script(self, script: str, out: Sink, err: Sink) -> int:
        try:
            lists = parse(script)
        except ShellSyntaxError as e:
            self.vm.note_not_emulated(f"shell syntax: {e} in {script.strip()[:200]!r}")
            err.write(f"bash: line {self.lineno}: {e}\n".encode())
            self.last_rc = 2
            return 2
        rc = 0
        for item in lists:
            rc = self._and_or(item, out, err)
        return rc

    # -- evaluation ------------------------------------------------------------------------

    def _and_or(self, node: AndOr, out: Sink, err: Sink) -> int:
        chain = [("", node.first), *node.rest]
        rc = 0
        for idx, (op, pipe) in enumerate(chain):
            if op == "&&" and rc != 0:
                continue
            if op == "||" and rc == 0:
                continue
            rc = self._pipeline(pipe, out, err)
            self.last_rc = rc
            last = idx == len(chain) - 1
            if self.errexit and rc != 0 and last and not pipe.negate:
                raise _ExitScript(rc)
        return rc

    def _pipeline(self, pipe: Pipeline, out: Sink, err: Sink) -> int:
        data: bytes | None = None
        rcs: list[int] = []
        for idx, cmd in enumerate(pipe.cmds):
            last = idx == len(pipe.cmds) - 1
            stage_in: Stdin = self.stdin if data is None else BytesStdin(data)
            stage_out: Sink = out if last else BufferSink()
            rcs.append(self._simple(cmd, stage_in, stage_out, err))
            if not last:
                assert isinstance(stage_out, BufferSink)
                data = stage_out.getvalue()
        rc = rcs[-1]
        if self.pipefail:
            rc = next((r for r in reversed(rcs) if r != 0), 0)
        if pipe.negate:
            rc = 0 if rc != 0 else 1
        return rc

    def expand(self, word: Word, env: dict[str, str] | None = None) -> str:
        env = self.env if env is None else env
        out: list[str] = []
        for p in word.parts:
            if p.kind == "lit":
                out.append(p.text)
                continue
            value: str | None
            if p.text == "?":
                value = str(self.last_rc)
            elif p.text == "$":
                value = "4242"
            elif p.text == "#":
                value = "0"
            elif p.text == "0":
                value = "bash"
            else:
                value = env.get(p.text)
            if p.op in (":-", ":="):
                if not value:
                    value = p.arg
                    if p.op == ":=":
                        self.env[p.text] = value
            elif p.op == "-":
                value = p.arg if value is None else value
            elif p.op == ":+":
                value = p.arg if value else ""
            elif p.op == "+":
                value = p.arg if value is not None else ""
            out.append(value or "")
        return "".join(out)

    def _expand_words(self, words: list[Word]) -> list[str]:
        argv: list[str] = []
        for w in words:
            text = self.expand(w)
            # An unquoted expansion that yields nothing disappears, as in sh (no field splitting).
            if text == "" and not w.quoted and any(p.kind == "var" for p in w.parts):
                continue
            argv.append(text)
        return argv

    def _simple(self, cmd: Simple, stdin: Stdin, out: Sink, err: Sink) -> int:
        assigns = {name: self.expand(w) for name, w in cmd.assigns}
        argv = self._expand_words(cmd.words)
        if not argv:
            self.env.update(assigns)
            return 0
        opened: list[Sink] = []
        cur_in, cur_out, cur_err = stdin, out, err
        try:
            for r in cmd.redirs:
                target = self.expand(r.target)
                if r.op in (">&", "<&"):
                    if target == "-":
                        continue
                    if not target.isdigit():
                        if r.op == ">&":  # ">& file" is "&> file" in bash
                            sink = self._open_sink(target, False)
                            opened.append(sink)
                            cur_out = cur_err = sink
                        continue
                    src = cur_out if target == "1" else cur_err if target == "2" else None
                    if src is None:
                        raise ShellSyntaxError(f"{target}: bad file descriptor")
                    if r.fd == 1:
                        cur_out = src
                    elif r.fd == 2:
                        cur_err = src
                    continue
                if r.op == "<":
                    if target in ("/dev/stdin", "-"):
                        continue
                    if target == "/dev/null":
                        cur_in = BytesStdin(b"")
                        continue
                    host = self.vm.fs.host(target, self.cwd)
                    if not host.is_file():
                        err.write(f"bash: line {self.lineno}: {target}: No such file or directory\n".encode())
                        return 1
                    cur_in = BytesStdin(host.read_bytes())
                    continue
                append = r.op in (">>", "&>>")
                sink = self._open_sink(target, append)
                if sink is not cur_out and sink is not cur_err and isinstance(sink, FileSink):
                    opened.append(sink)
                if r.op in ("&>", "&>>"):
                    cur_out = cur_err = sink
                elif r.fd == 2:
                    cur_err = sink
                else:
                    cur_out = sink
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            what = "Is a directory" if isinstance(e, IsADirectoryError) else "No such file or directory"
            err.write(f"bash: line {self.lineno}: {e.args[0] if e.args else ''}: {what}\n".encode())
            return 1
        except ShellSyntaxError as e:
            err.write(f"bash: line {self.lineno}: {e}\n".encode())
            return 1
        env = {**self.env, **assigns}
        ctx = Ctx(self, argv, cur_in, cur_out, cur_err, env)
        try:
            rc = self.dispatch(ctx)
        finally:
            for sink in opened:
                sink.close()
        return rc

    def _open_sink(self, target: str, append: bool) -> Sink:
        if target == "/dev/null":
            return NullSink()
        return FileSink(self.vm, target, self.cwd, append)

    # -- dispatch --------------------------------------------------------------------------

    def resolve(self, name: str) -> Command | None:
        if "/" in name:
            d, base = posixpath.split(name)
            if posixpath.normpath(d) not in BIN_DIRS:
                return None
            name = base
        return BUILTINS.get(name) or self.vm.commands.get(name)

    def known(self, name: str) -> bool:
        return self.resolve(name) is not None

    def dispatch(self, ctx: Ctx) -> int:
        name = ctx.argv[0]
        handler = self.resolve(name)
        if handler is None and "/" in name:
            host = self.vm.fs.host(name, self.cwd)
            if host.is_file():
                return self._run_file(ctx, name)
        if handler is None:
            self.vm.note_not_emulated(shlex.join(ctx.argv), source=self.source)
            if self.boot:
                self.vm.record_command(CommandRecord(self.source, ctx.argv, 0, emulated=False))
                return 0
            ctx.eprint(f"bash: line {self.lineno}: {name}: command not found")
            self.vm.record_command(CommandRecord(self.source, ctx.argv, 127, emulated=False))
            return 127
        try:
            rc = handler(ctx)
        except _ExitScript:
            raise
        except Exception as e:  # a stand-in bug: fail the command loudly, and the test too
            self.vm.farm_error(f"stand-in {name!r} crashed on {shlex.join(ctx.argv)!r}: {e!r}")
            ctx.eprint(f"vmsim: internal error in the {name} stand-in: {e!r}")
            rc = 70
        self.vm.record_command(CommandRecord(self.source, ctx.argv, rc, emulated=True))
        return rc

    def _run_file(self, ctx: Ctx, path: str) -> int:
        host = self.vm.fs.host(path, self.cwd)
        if not (host.stat().st_mode & 0o111):
            return ctx.fail(f"bash: line {self.lineno}: {path}: Permission denied", 126)
        text = host.read_text(errors="replace")
        first = text.splitlines()[0] if text else ""
        if first.startswith("#!") and not re.search(r"\b(ba|da)?sh\b", first):
            self.vm.note_not_emulated(f"script interpreter {first[2:].strip()} ({path})", source=self.source)
            if self.boot:
                return 0
            return ctx.fail(f"vmsim: {path}: interpreter {first[2:].strip()} is not emulated", 126)
        sub = Shell(self.vm, source=self.source, user=self.user, cwd=self.cwd, env=ctx.env, stdin=ctx.stdin)
        return sub.run(text, ctx.out, ctx.err)


# ------------------------------------------------------------------------------------------
# Basic utilities
# ------------------------------------------------------------------------------------------


def parse_mode(text: str, current: int = 0) -> int:
    """Octal (``600``, ``0o644``) or simple symbolic (``u+x``, ``go-rwx``, ``a=r``) modes."""
    if re.fullmatch(r"(0o)?[0-7]{1,4}", text):
        return int(text, 8)
    mode = current
    for clause in text.split(","):
        m = re.fullmatch(r"([ugoa]*)([+\-=])([rwxX]*)", clause)
        if m is None:
            raise ValueError(f"invalid mode: '{text}'")
        who = m.group(1) or "a"
        bits = 0
        for perm in m.group(3):
            bits |= {"r": 4, "w": 2, "x": 1, "X": 1}[perm]
        mask = 0
        for w in who.replace("a", "ugo"):
            mask |= bits << {"u": 6, "g": 3, "o": 0}[w]
        full = 0
        for w in who.replace("a", "ugo"):
            full |= 7 << {"u": 6, "g": 3, "o": 0}[w]
        if m.group(2) == "+":
            mode |= mask
        elif m.group(2) == "-":
            mode &= ~mask
        else:
            mode = (mode & ~full) | mask
    return mode


def _split_opts(args: list[str], with_value: str = "") -> Iterator[tuple[str, str | None]]:
    """Yield (option, value) for short/long options and ("", arg) for operands."""
    it = iter(range(len(args)))
    only_operands = False
    for i in it:
        a = args[i]
        if only_operands or a == "-" or not a.startswith("-"):
            yield "", a
            continue
        if a == "--":
            only_operands = True
            continue
        if a.startswith("--"):
            name, eq, value = a.partition("=")
            yield name, value if eq else None
            continue
        for j, ch in enumerate(a[1:], start=1):
            if ch in with_value:
                rest = a[j + 1 :]
                if rest:
                    yield "-" + ch, rest
                else:
                    nxt = next(it, None)
                    yield "-" + ch, args[nxt] if nxt is not None else None
                break
            yield "-" + ch, None


def _echo(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    newline, escapes = True, False
    while args and re.fullmatch(r"-[neE]+", args[0]):
        for ch in args[0][1:]:
            newline = newline and ch != "n"
            escapes = (escapes or ch == "e") and ch != "E"
        args = args[1:]
    text = " ".join(args)
    if escapes:
        text = text.encode().decode("unicode_escape")
    ctx.out.write((text + ("\n" if newline else "")).encode())
    return 0


def _printf(ctx: Ctx) -> int:
    if len(ctx.argv) < 2:
        return ctx.fail("printf: usage: printf [-v var] format [arguments]", 2)
    fmt, args = ctx.argv[1], ctx.argv[2:]
    fmt = fmt.replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")
    spec = re.compile(r"%([-0-9.]*)([sdbq%])")
    out: list[str] = []
    while True:
        consumed = 0
        pending = list(args)

        def sub(m: re.Match[str], pending: list[str] = pending) -> str:
            nonlocal consumed
            if m.group(2) == "%":
                return "%"
            value = pending[consumed] if consumed < len(pending) else ""
            consumed += 1
            if m.group(2) == "d":
                return ("%" + m.group(1) + "d") % int(value or 0)
            if m.group(2) == "b":
                return value.replace("\\n", "\n").replace("\\t", "\t")
            if m.group(2) == "q":
                return shlex.quote(value)
            return ("%" + m.group(1) + "s") % value

        out.append(spec.sub(sub, fmt))
        args = args[consumed:]
        if not args or consumed == 0:
            break
    ctx.out.write("".join(out).encode())
    return 0


def _cat(ctx: Ctx) -> int:
    files = [a for a in ctx.argv[1:] if a == "-" or not a.startswith("-")] or ["-"]
    rc = 0
    for f in files:
        if f in ("-", "/dev/stdin"):
            ctx.out.write(ctx.stdin.read())
            continue
        if f == "/dev/null":
            continue
        host = ctx.vm.fs.host(f, ctx.cwd)
        if host.is_dir():
            rc = ctx.fail(f"cat: {f}: Is a directory")
        elif not host.is_file():
            rc = ctx.fail(f"cat: {f}: No such file or directory")
        else:
            ctx.out.write(host.read_bytes())
    return rc


def _test(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    if ctx.argv[0] == "[":
        if not args or args[-1] != "]":
            return ctx.fail("bash: [: missing `]'", 2)
        args = args[:-1]
    fs = ctx.vm.fs

    def unary(op: str, arg: str) -> bool:
        host = fs.host(arg, ctx.cwd)
        checks: dict[str, Callable[[], bool]] = {
            "-f": host.is_file,
            "-d": host.is_dir,
            "-e": host.exists,
            "-a": host.exists,
            "-s": lambda: host.is_file() and host.stat().st_size > 0,
            "-x": lambda: host.exists() and bool(host.stat().st_mode & 0o111),
            "-r": host.exists,
            "-w": host.exists,
            "-L": host.is_symlink,
            "-h": host.is_symlink,
            "-n": lambda: arg != "",
            "-z": lambda: arg == "",
        }
        if op not in checks:
            raise ValueError(op)
        return checks[op]()

    def evaluate(a: list[str]) -> bool:
        if a and a[0] == "!":
            return not evaluate(a[1:])
        if len(a) == 0:
            return False
        if len(a) == 1:
            return a[0] != ""
        if len(a) == 2:
            return unary(a[0], a[1])
        if len(a) == 3:
            left, op, right = a
            if op in ("=", "=="):
                return left == right
            if op == "!=":
                return left != right
            ints = {"-eq": "__eq__", "-ne": "__ne__", "-lt": "__lt__", "-gt": "__gt__"}
            ints |= {"-le": "__le__", "-ge": "__ge__"}
            if op in ints:
                return bool(getattr(int(left), ints[op])(int(right)))
        if "-a" in a:
            i = a.index("-a")
            return evaluate(a[:i]) and evaluate(a[i + 1 :])
        if "-o" in a:
            i = a.index("-o")
            return evaluate(a[:i]) or evaluate(a[i + 1 :])
        raise ValueError(" ".join(a))

    try:
        return 0 if evaluate(args) else 1
    except ValueError as e:
        return ctx.fail(f"bash: {ctx.argv[0]}: {e}: unary operator expected", 2)


def _mkdir(ctx: Ctx) -> int:
    parents, mode, rc = False, 0o755, 0
    dirs: list[str] = []
    for opt, val in _split_opts(ctx.argv[1:], "m"):
        if opt in ("-p", "--parents"):
            parents = True
        elif opt in ("-m", "--mode"):
            try:
                mode = parse_mode(val or "")
            except ValueError as e:
                return ctx.fail(f"mkdir: {e}")
        elif opt in ("-v", "--verbose"):
            pass
        elif opt == "":
            dirs.append(val or "")
        else:
            return ctx.fail(f"mkdir: invalid option -- '{opt.lstrip('-')}'")
    if not dirs:
        return ctx.fail("mkdir: missing operand")
    for d in dirs:
        host = ctx.vm.fs.host(d, ctx.cwd)
        if host.exists():
            if not parents or not host.is_dir():
                rc = ctx.fail(f"mkdir: cannot create directory '{d}': File exists")
            continue
        if not parents and not host.parent.is_dir():
            rc = ctx.fail(f"mkdir: cannot create directory '{d}': No such file or directory")
            continue
        ctx.vm.fs.mkdir(d, parents=parents, mode=mode, cwd=ctx.cwd)
    return rc


def _install(ctx: Ctx) -> int:
    mode, owner, group = 0o755, None, None
    make_dirs, leading = False, False
    operands: list[str] = []
    for opt, val in _split_opts(ctx.argv[1:], "mogtS"):
        if opt in ("-m", "--mode"):
            try:
                mode = parse_mode(val or "", 0o755)
            except ValueError:
                return ctx.fail(f"install: invalid mode '{val}'")
        elif opt in ("-o", "--owner"):
            owner = val
        elif opt in ("-g", "--group"):
            group = val
        elif opt in ("-d", "--directory"):
            make_dirs = True
        elif opt == "-D":
            leading = True
        elif opt in ("-v", "-C", "-T", "-p", "-c", "--compare", "--verbose", "--preserve-timestamps"):
            pass
        elif opt == "":
            operands.append(val or "")
        else:
            return ctx.fail(f"install: invalid option -- '{opt.lstrip('-')}'")
    fs = ctx.vm.fs
    who = f"{owner or 'root'}:{group or 'root'}" if owner or group else None
    if make_dirs:
        for d in operands:
            fs.mkdir(d, parents=True, mode=mode, cwd=ctx.cwd)
            if who:
                fs.chown(d, who, ctx.cwd)
        return 0 if operands else ctx.fail("install: missing file operand")
    if len(operands) < 2:
        return ctx.fail(
            f"install: missing destination file operand after '{operands[0]}'"
            if operands
            else "install: missing file operand"
        )
    *sources, dest = operands
    dest_host = fs.host(dest, ctx.cwd)
    if len(sources) > 1 and not dest_host.is_dir():
        return ctx.fail(f"install: target '{dest}' is not a directory")
    rc = 0
    for src in sources:
        if src in ("/dev/stdin", "-"):
            data = ctx.stdin.read()
        else:
            src_host = fs.host(src, ctx.cwd)
            if not src_host.is_file():
                rc = ctx.fail(f"install: cannot stat '{src}': No such file or directory")
                continue
            data = src_host.read_bytes()
        target = dest
        if dest_host.is_dir():
            target = posixpath.join(dest, posixpath.basename(src))
        if leading:
            fs.host(target, ctx.cwd).parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.write_bytes(target, data, mode=mode, cwd=ctx.cwd, owner=who, replace=True)
        except FileNotFoundError:
            rc = ctx.fail(f"install: cannot create regular file '{target}': No such file or directory")
    return rc


def _chmod(ctx: Ctx) -> int:
    args = [a for a in ctx.argv[1:] if a not in ("-R", "--recursive", "-v", "-f")]
    if len(args) < 2:
        return ctx.fail("chmod: missing operand")
    rc = 0
    for f in args[1:]:
        if not ctx.vm.fs.exists(f, ctx.cwd):
            rc = ctx.fail(f"chmod: cannot access '{f}': No such file or directory")
            continue
        try:
            ctx.vm.fs.chmod(f, parse_mode(args[0], ctx.vm.fs.mode(f, ctx.cwd)), ctx.cwd)
        except ValueError:
            return ctx.fail(f"chmod: invalid mode: '{args[0]}'")
    return rc


def _chown(ctx: Ctx) -> int:
    args = [a for a in ctx.argv[1:] if a not in ("-R", "--recursive", "-v", "-f", "-h")]
    if len(args) < 2:
        return ctx.fail("chown: missing operand")
    owner = args[0] if ":" in args[0] else f"{args[0]}:{args[0]}"
    rc = 0
    for f in args[1:]:
        try:
            ctx.vm.fs.chown(f, owner, ctx.cwd)
        except FileNotFoundError:
            rc = ctx.fail(f"chown: cannot access '{f}': No such file or directory")
    return rc


def _rm(ctx: Ctx) -> int:
    force = recursive = False
    files: list[str] = []
    for opt, val in _split_opts(ctx.argv[1:]):
        if opt in ("-f", "--force"):
            force = True
        elif opt in ("-r", "-R", "--recursive"):
            recursive = True
        elif opt == "":
            files.append(val or "")
    rc = 0
    for f in files:
        host = ctx.vm.fs.host(f, ctx.cwd)
        if host == ctx.vm.fs.root:
            rc = ctx.fail("rm: it is dangerous to operate recursively on '/'")
        elif host.is_dir():
            if not recursive:
                rc = ctx.fail(f"rm: cannot remove '{f}': Is a directory")
            else:
                import shutil

                shutil.rmtree(host)
        elif host.exists() or host.is_symlink():
            host.unlink()
        elif not force:
            rc = ctx.fail(f"rm: cannot remove '{f}': No such file or directory")
    return rc


def _touch(ctx: Ctx) -> int:
    rc = 0
    for f in [a for a in ctx.argv[1:] if not a.startswith("-")]:
        host = ctx.vm.fs.host(f, ctx.cwd)
        if not host.parent.is_dir():
            rc = ctx.fail(f"touch: cannot touch '{f}': No such file or directory")
        elif host.exists():
            host.touch()
        else:
            ctx.vm.fs.write_bytes(f, b"", mode=0o644, cwd=ctx.cwd)
    return rc


def _tee(ctx: Ctx) -> int:
    append = any(a in ("-a", "--append") for a in ctx.argv[1:])
    data = ctx.stdin.read()
    rc = 0
    for f in [a for a in ctx.argv[1:] if not a.startswith("-")]:
        try:
            ctx.vm.fs.write_bytes(f, data, append=append, cwd=ctx.cwd, mode=None)
        except FileNotFoundError:
            rc = ctx.fail(f"tee: {f}: No such file or directory")
    ctx.out.write(data)
    return rc


def _ls(ctx: Ctx) -> int:
    targets = [a for a in ctx.argv[1:] if not a.startswith("-")] or ["."]
    rc = 0
    for t in targets:
        host = ctx.vm.fs.host(t, ctx.cwd)
        if host.is_dir():
            for name in sorted(p.name for p in host.iterdir()):
                ctx.print(name)
        elif host.exists():
            ctx.print(t)
        else:
            rc = ctx.fail(f"ls: cannot access '{t}': No such file or directory", 2)
    return rc


def _sleep(ctx: Ctx) -> int:
    try:
        seconds = sum(float(a.rstrip("s")) for a in ctx.argv[1:])
    except ValueError:
        return ctx.fail(f"sleep: invalid time interval '{' '.join(ctx.argv[1:])}'")
    if not ctx.boot:  # over SSH time is real; cloud-init's time is the simulator's
        ctx.vm.stopped.wait(seconds)
    return 0


def _cd(ctx: Ctx) -> int:
    target = ctx.argv[1] if len(ctx.argv) > 1 else ctx.env.get("HOME", "/root")
    if not ctx.vm.fs.is_dir(target, ctx.cwd):
        return ctx.fail(f"bash: cd: {target}: No such file or directory")
    ctx.shell.cwd = ctx.vm.fs.normalize(target, ctx.cwd)
    return 0


def _export(ctx: Ctx) -> int:
    for a in ctx.argv[1:]:
        if a.startswith("-"):
            continue
        name, eq, value = a.partition("=")
        if eq:
            ctx.shell.env[name] = value
    return 0


def _set(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-o", "+o") and i + 1 < len(args):
            if args[i + 1] == "pipefail":
                ctx.shell.pipefail = a == "-o"
            elif args[i + 1] == "errexit":
                ctx.shell.errexit = a == "-o"
            i += 2
            continue
        if re.fullmatch(r"[-+][a-zA-Z]+", a):
            on = a[0] == "-"
            for ch in a[1:]:
                if ch == "e":
                    ctx.shell.errexit = on
                elif ch == "o" and i + 1 < len(args):
                    i += 1
                    if args[i] == "pipefail":
                        ctx.shell.pipefail = on
        i += 1
    return 0


def _exit(ctx: Ctx) -> int:
    code = int(ctx.argv[1]) if len(ctx.argv) > 1 and ctx.argv[1].lstrip("-").isdigit() else ctx.shell.last_rc
    raise _ExitScript(code & 0xFF)


def _sub(ctx: Ctx, argv: list[str], env: dict[str, str] | None = None) -> int:
    if not argv:
        return 0
    sub_ctx = Ctx(ctx.shell, argv, ctx.stdin, ctx.out, ctx.err, env if env is not None else ctx.env)
    return ctx.shell.dispatch(sub_ctx)


def _sudo(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag in ("-u", "-g", "-C", "-p") and args:
            args.pop(0)
        if flag == "--":
            break
    env = dict(ctx.env)
    while args and ASSIGN_RE.match(args[0]):
        name, _, value = args.pop(0).partition("=")
        env[name] = value
    return _sub(ctx, args, env)


def _env(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    env = dict(ctx.env)
    if args and args[0] in ("-i", "--ignore-environment"):
        env = {}
        args = args[1:]
    while args and ASSIGN_RE.match(args[0]):
        name, _, value = args.pop(0).partition("=")
        env[name] = value
    if not args:
        for k, v in sorted(env.items()):
            ctx.print(f"{k}={v}")
        return 0
    return _sub(ctx, args, env)


def _exec(ctx: Ctx) -> int:
    return _sub(ctx, ctx.argv[1:])


def _sh(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    script: str | None = None
    errexit = pipefail = False
    while args and args[0].startswith(("-", "+")) and args[0] not in ("-", "--"):
        flag = args.pop(0)
        if flag == "-o" and args:
            pipefail = pipefail or args.pop(0) == "pipefail"
            continue
        for ch in flag[1:]:
            if ch == "c":
                if not args:
                    return ctx.fail(f"{ctx.argv[0]}: -c: option requires an argument", 2)
                script = args.pop(0)
            elif ch == "e":
                errexit = True
    sub = Shell(
        ctx.vm, source=ctx.shell.source, user=ctx.shell.user, cwd=ctx.cwd, env=ctx.env, stdin=ctx.stdin
    )
    sub.errexit, sub.pipefail = errexit, pipefail
    if script is None:
        if args and args[0] != "-":
            host = ctx.vm.fs.host(args[0], ctx.cwd)
            if not host.is_file():
                return ctx.fail(f"{ctx.argv[0]}: {args[0]}: No such file or directory", 127)
            script = host.read_text(errors="replace")
        else:
            script = ctx.stdin.read().decode(errors="replace")
            sub.stdin = Stdin()
    return sub.run(script, ctx.out, ctx.err)


def _command(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    if args and args[0] in ("-v", "-V"):
        rc = 1
        for name in args[1:]:
            if ctx.shell.known(name):
                ctx.print(name if name in BUILTINS and name in SHELL_BUILTINS else f"/usr/bin/{name}")
                rc = 0
        return rc
    return _sub(ctx, args)


def _which(ctx: Ctx) -> int:
    rc = 0 if ctx.argv[1:] else 1
    for name in ctx.argv[1:]:
        if ctx.shell.known(name) and name not in SHELL_BUILTINS:
            ctx.print(f"/usr/bin/{name}")
        else:
            rc = 1
    return rc


def _whoami(ctx: Ctx) -> int:
    ctx.print(ctx.shell.user)
    return 0


def _hostname(ctx: Ctx) -> int:
    with contextlib.suppress(OSError):
        ctx.print(ctx.vm.fs.read_text("/etc/hostname").strip())
        return 0
    ctx.print("localhost")
    return 0


def _true(ctx: Ctx) -> int:
    return 0


def _false(ctx: Ctx) -> int:
    return 1


def _lines_opt(args: list[str], default: int = 10) -> tuple[int, bool, list[str]]:
    """(-n N, "from line N" for tail +N, files) of head/tail."""
    n, plus, files = default, False, []
    it = iter(args)
    for a in it:
        value: str | None = None
        if a in ("-n", "--lines"):
            value = next(it, str(default))
        elif a.startswith("--lines="):
            value = a.split("=", 1)[1]
        elif re.fullmatch(r"-n?\d+", a):
            value = a.lstrip("-n")
        elif a.startswith("-n"):
            value = a[2:]
        elif a.startswith("-") and a != "-":
            continue
        else:
            files.append(a)
            continue
        plus = value.startswith("+")
        n = int(value.lstrip("+"))
    return n, plus, files


def _read_inputs(ctx: Ctx, files: list[str], name: str) -> tuple[bytes, int]:
    if not files:
        return ctx.stdin.read(), 0
    data, rc = b"", 0
    for f in files:
        host = ctx.vm.fs.host(f, ctx.cwd)
        if f == "-":
            data += ctx.stdin.read()
        elif host.is_file():
            data += host.read_bytes()
        else:
            rc = ctx.fail(f"{name}: cannot open '{f}' for reading: No such file or directory")
    return data, rc


def _head(ctx: Ctx) -> int:
    n, _, files = _lines_opt(ctx.argv[1:])
    data, rc = _read_inputs(ctx, files, "head")
    ctx.out.write(b"".join(data.splitlines(keepends=True)[:n]))
    return rc


def _tail(ctx: Ctx) -> int:
    n, plus, files = _lines_opt(ctx.argv[1:])
    data, rc = _read_inputs(ctx, files, "tail")
    lines = data.splitlines(keepends=True)
    ctx.out.write(b"".join(lines[n - 1 :] if plus else lines[-n:] if n else []))
    return rc


def _grep(ctx: Ctx) -> int:
    flags: set[str] = set()
    operands: list[str] = []
    patterns: list[str] = []
    it = iter(ctx.argv[1:])
    for a in it:
        if a == "-e":
            patterns.append(next(it, ""))
        elif a.startswith("--"):
            flags.add(a)
        elif a.startswith("-") and len(a) > 1:
            flags.update("-" + ch for ch in a[1:])
        else:
            operands.append(a)
    if not patterns:
        if not operands:
            return ctx.fail("Usage: grep [OPTION]... PATTERNS [FILE]...", 2)
        patterns.append(operands.pop(0))
    fixed = "-F" in flags or "--fixed-strings" in flags
    regexes = [re.compile(re.escape(p) if fixed else p, re.I if "-i" in flags else 0) for p in patterns]
    data, rc = _read_inputs(ctx, operands, "grep")
    if rc:
        return 2
    invert = "-v" in flags
    hits = [
        line
        for line in data.decode(errors="replace").splitlines()
        if any(r.search(line) for r in regexes) != invert
    ]
    if "-c" in flags:
        ctx.print(str(len(hits)))
    elif "-q" not in flags:
        for line in hits:
            ctx.print(line)
    return 0 if hits else 1


SHELL_BUILTINS = frozenset(
    {"cd", "export", "set", "exit", "exec", "command", ":", "true", "false", "echo", "wait"}
)

BUILTINS: dict[str, Command] = {
    "echo": _echo,
    "printf": _printf,
    "cat": _cat,
    "test": _test,
    "[": _test,
    "mkdir": _mkdir,
    "install": _install,
    "chmod": _chmod,
    "chown": _chown,
    "rm": _rm,
    "touch": _touch,
    "tee": _tee,
    "head": _head,
    "tail": _tail,
    "grep": _grep,
    "ls": _ls,
    "sleep": _sleep,
    "cd": _cd,
    "export": _export,
    "set": _set,
    "exit": _exit,
    "sudo": _sudo,
    "env": _env,
    "exec": _exec,
    "sh": _sh,
    "bash": _sh,
    "dash": _sh,
    "command": _command,
    "which": _which,
    "whoami": _whoami,
    "hostname": _hostname,
    "true": _true,
    "false": _false,
    ":": _true,
    "wait": _true,  # `&` runs in the foreground here, so there is never a job to wait for
}
