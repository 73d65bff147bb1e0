"""The machinery shared by the three simulators: HTTP server, routing, auth, log, faults, checks.

A vendor simulator subclasses :class:`SimServer`, declares its routes and its error shapes,
and renders its objects. Everything else (threads, the request log, fault injection, spec
validation, the violation list) lives here so the three behave alike.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from . import faults as fk
from .clock import Clock, FakeClock
from .faults import Fault, FaultPlan
from .ledger import GONE, SECRET_HEADERS, InstanceRecord, Ledger, RequestLog, RequestRecord, path_matches

# ------------------------------------------------------------------------------------------
# Public IPv4 addresses for simulated instances
# ------------------------------------------------------------------------------------------

IPAllocator = Callable[[str, str], str]  # (vendor, instance id) -> IPv4 address


class LoopbackAllocator:
    """Hands out 127.x.y.z addresses, one per instance, never twice (thread-safe).

    Each vendor gets its own /16 by default (Linode 127.1.x.x, DO 127.2.x.x, Scaleway 127.3.x.x)
    so three simulators in one test never collide. Linux routes all of 127.0.0.0/8 to lo, so a
    later SSH emulator can bind each address without root.
    """

    def __init__(self, network: str = "127.1.0.0/16") -> None:
        self.network = ipaddress.ip_network(network)
        if not isinstance(self.network, ipaddress.IPv4Network) or not self.network.subnet_of(
            ipaddress.IPv4Network("127.0.0.0/8")
        ):
            raise ValueError("simulated instances only get loopback addresses")
        self._hosts = self.network.hosts()
        self._lock = threading.Lock()
        self.assigned: dict[tuple[str, str], str] = {}

    def __call__(self, vendor: str, instance_id: str) -> str:
        with self._lock:
            while True:
                addr = str(next(self._hosts))
                if not addr.endswith((".0", ".1", ".255")):  # keep .1 for "the host" by habit
                    break
            self.assigned[(vendor, instance_id)] = addr
            return addr


# ------------------------------------------------------------------------------------------
# Exchanges
# ------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any = None  # JSON-able object, bytes (sent as is), or None (no body)
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "application/json"

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Request:
    method: str
    path: str  # as received, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names, full (credentials included)
    raw: bytes
    params: dict[str, str] = field(default_factory=dict)  # from the route pattern
    fault: Fault | None = None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def json(self) -> Any:
        if not self.raw.strip():
            return None
        return json.loads(self.raw)


@dataclass
class Violation:
    vendor: str
    kind: str  # "request", "response" or "unimplemented"
    method: str
    path: str
    status: int | None
    message: str

    def __str__(self) -> str:
        return f"[{self.vendor}] {self.kind} {self.method} {self.path} -> {self.status}:\n{self.message}"


class DropConnection(Exception):
    """Raised inside a handler to close the socket without an answer."""


Route = tuple[str, "re.Pattern[str]", Callable[[Request], Reply]]


class SimServer:
    """Base class of a vendor simulator. Use as a context manager or start()/stop()."""

    vendor: ClassVar[str] = ""
    #: The path prefix the SDK is pointed at (base URL = root URL + prefix).
    api_prefix: ClassVar[str] = ""
    #: Default /16 for LoopbackAllocator.
    ip_network: ClassVar[str] = "127.9.0.0/16"
    #: (method, path regex) pairs the real API serves without credentials.
    public: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        ledger: Ledger | None = None,
        ip_allocator: IPAllocator | None = None,
        validate: bool | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        if ipaddress.ip_address(host) not in ipaddress.ip_network("127.0.0.0/8"):
            raise ValueError("the simulator only listens on loopback")
        self.clock: Clock = clock or FakeClock()
        self.ledger = ledger if ledger is not None else Ledger()
        self.log = RequestLog()
        self.faults = FaultPlan()
        self.ip_allocator: IPAllocator = ip_allocator or LoopbackAllocator(self.ip_network)
        #: When set, only this token/secret is accepted; otherwise any well-formed one is.
        self.token = token
        #: Seconds per lifecycle phase, in simulated time (see each vendor's DEFAULT_TIMINGS).
        self.timings: dict[str, float] = {**self.default_timings(), **(timings or {})}
        self.violations: list[Violation] = []
        #: Known, documented deviations of a real SDK from the spec that the real API accepts.
        self.tolerated: list[str] = []
        #: Called with the InstanceRecord after a create / a deletion (e.g. start an SSH emulator).
        self.on_create: list[Callable[[InstanceRecord], None]] = []
        self.on_delete: list[Callable[[InstanceRecord], None]] = []
        self._tamperers: list[tuple[str | None, str | None, Callable[[Any], Any]]] = []
        self.lock = threading.RLock()  # one state change at a time
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._routes: list[Route] = [(m, re.compile(p), h) for m, p, h in self.routes()]
        self.checker: Any = None
        if validate is not False:
            self.checker = self.make_checker(required=validate is True)

    # -- to be provided by vendors ---------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Callable[[Request], Reply]]]:
        raise NotImplementedError

    def default_timings(self) -> dict[str, float]:
        return {}

    def make_checker(self, *, required: bool) -> Any:
        """Build the spec checker; None when there is no spec (unless ``required``)."""
        return None

    def error(self, status: int, code: str, message: str, **extra: Any) -> Reply:
        raise NotImplementedError

    def is_authenticated(self, headers: dict[str, str]) -> bool:
        raise NotImplementedError

    def unauthorized(self) -> Reply:
        raise NotImplementedError

    def authorize(self, req: Request) -> Reply | None:
        """Refuse a routed request its credential may not make (scoped credentials); None: go on.

        Runs after authentication, under ``self.lock``, with ``req.params`` set. The main
        credential may do anything; vendors with narrow credentials override this.
        """
        return None

    def not_found(self, what: str = "", ident: str = "") -> Reply:
        raise NotImplementedError

    def capacity_error(self, req: Request) -> Reply:
        raise NotImplementedError

    def rate_limited(self, fault: Fault) -> Reply:
        raise NotImplementedError

    def server_error(self, fault: Fault) -> Reply:
        raise NotImplementedError

    def normalize_path(self, path: str) -> str:
        """The path the routes and the spec see (DigitalOcean strips the trailing slash)."""
        return path

    def check_request_body(self, req: Request, body: bytes) -> bytes:
        """Hook to tolerate documented SDK quirks before the spec check (see DigitalOcean)."""
        return body

    def instance_id_from_path(self, path: str) -> str | None:
        return None

    def delete_instance(self, rec: InstanceRecord, *, by: str) -> None:
        """Vendor-specific deletion (immediate or delayed)."""
        now = self.clock.now()
        rec.cancel_after(now)
        rec.schedule(now, GONE)
        rec.deleted_at, rec.deleted_by = now, by
        self._fire(self.on_delete, rec)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> SimServer:
        if self._server is not None:
            return self
        sim = self

        class Handler(_Handler):
            simulator = sim

        server = ThreadingHTTPServer((self._host, self._port), Handler)
        server.daemon_threads = True
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"cloudsim-{self.vendor}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes SLOW faults
        server.shutdown()
        server.server_close()
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:  # idle keep-alive connections would otherwise linger
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL to hand to the SDK."""
        return self.root_url + self.api_prefix

    # -- test helpers ----------------------------------------------------------------------

    def take_violations(self) -> list[Violation]:
        """Return and forget the violations (for tests that provoke one on purpose)."""
        with self.lock:
            out, self.violations = self.violations, []
        return out

    def assert_no_violations(self) -> None:
        if self.violations:
            text = "\n\n".join(str(v) for v in self.violations[:10])
            raise AssertionError(f"{len(self.violations)} spec/simulator violation(s):\n{text}")

    def tamper(self, fn: Callable[[Any], Any], *, method: str | None = None, path: str | None = None) -> None:
        """Rewrite matching JSON responses before they are checked and sent (test doubles)."""
        self._tamperers.append((method.upper() if method else None, path, fn))

    def instance(self, instance_id: str | int) -> InstanceRecord:
        return self.ledger.get(instance_id, self.vendor)

    def set_ssh_port(self, instance_id: str | int, port: int | None) -> None:
        self.instance(instance_id).ssh_port = port

    def vanish(self, instance_id: str | int) -> InstanceRecord:
        """Delete an instance behind the client's back (the vendor or another user did it)."""
        with self.lock:
            rec = self.instance(instance_id)
            if rec.exists:
                now = self.clock.now()
                rec.cancel_after(now)
                rec.schedule(now, GONE)
                if rec.deleted_at is None:
                    rec.deleted_at, rec.deleted_by = now, "vendor"
                self._close_power(rec, now)
                self._fire(self.on_delete, rec)
            return rec

    def stick(self, instance_id: str | int) -> InstanceRecord:
        """Freeze an instance in its current state (e.g. provisioning forever)."""
        with self.lock:
            rec = self.instance(instance_id)
            now = self.clock.now()
            state = rec.state
            rec.cancel_after(now)
            rec.schedule(now, state)
            rec.stuck = True
            return rec

    def known_instances(self) -> list[InstanceRecord]:
        return [r for r in self.ledger.instances(self.vendor) if r.exists]

    # -- helpers for vendors ---------------------------------------------------------------

    def new_record(self, **kw: Any) -> InstanceRecord:
        rec = InstanceRecord(vendor=self.vendor, clock=self.clock, created_at=self.clock.now(), **kw)
        rec.ipv4 = self.ip_allocator(self.vendor, rec.id)
        return rec

    def register(self, rec: InstanceRecord) -> None:
        self.ledger.add(rec)
        self._fire(self.on_create, rec)

    @staticmethod
    def _close_power(rec: InstanceRecord, now: float) -> None:
        for interval in rec.power_intervals:
            if interval[1] is None:
                interval[1] = now

    @staticmethod
    def _fire(hooks: list[Callable[[InstanceRecord], None]], rec: InstanceRecord) -> None:
        for hook in hooks:
            hook(rec)

    def request_id(self) -> str:
        return str(uuid.uuid4())

    # -- the request pipeline (runs in the handler thread) ---------------------------------

    def _route(self, method: str, path: str) -> tuple[Callable[[Request], Reply], dict[str, str]] | None:
        for m, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match and m == method:
                return handler, match.groupdict()
        return None

    def _record_violation(self, kind: str, method: str, path: str, status: int | None, message: str) -> None:
        with self.lock:
            self.violations.append(Violation(self.vendor, kind, method, path, status, message))

    def handle(self, handler: _Handler, method: str) -> None:
        split = urlsplit(handler.path)
        raw_path = split.path
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        raw = handler.read_body()
        path = self.normalize_path(raw_path)
        authenticated = self.is_authenticated(headers)
        rec = RequestRecord(
            seq=self.log.next_seq(),
            vendor=self.vendor,
            at=self.clock.now(),
            method=method,
            path=raw_path,
            query=query,
            headers={k: v for k, v in headers.items() if k not in SECRET_HEADERS},
            body=_maybe_json(raw),
            body_text=raw.decode("utf-8", errors="replace"),
            authenticated=authenticated,
            client=handler.client_address[0],
        )
        self.log.append(rec)
        req = Request(method=method, path=path, query=query, headers=headers, raw=raw)

        fault = self.faults.check(method, raw_path)
        req.fault = fault
        if fault is not None:
            rec.fault = fault.kind
        if fault is not None and fault.kind == fk.DROP:
            raise DropConnection
        if fault is not None and fault.kind == fk.SLOW and self._stopping.wait(fault.delay):
            raise DropConnection  # the simulator is shutting down

        allowed = authenticated or any(m == method and re.fullmatch(p, path) for m, p in self.public)
        # An unimplemented route is reported once, as such (the spec check would only add noise).
        if allowed and self.checker is not None and self._route(method, path) is not None:
            body = self.check_request_body(req, raw)
            for msg in self.checker.check_request(method, path, query, headers, body):
                self._record_violation("request", method, raw_path, None, msg)

        reply = self._reply(req, fault, allowed)
        reply = self._apply_tamper(method, path, reply)
        payload = reply.encoded()
        out_headers = dict(reply.headers)
        if reply.content_type is not None and (payload or reply.status == 204):
            out_headers.setdefault("Content-Type", reply.content_type)

        if self.checker is not None and reply.status != 501:
            lower = {k.lower(): v for k, v in out_headers.items()}
            for msg in self.checker.check_response(
                method, path, query, headers, raw, reply.status, lower, payload
            ):
                self._record_violation("response", method, raw_path, reply.status, msg)

        rec.status = reply.status
        rec.response = _maybe_json(payload)
        rec.response_headers = out_headers
        if fault is not None and fault.kind == fk.LOST_RESPONSE:
            raise DropConnection
        handler.send(reply.status, out_headers, payload)

    def _reply(self, req: Request, fault: Fault | None, authenticated: bool) -> Reply:
        if fault is not None:
            if fault.kind == fk.RATE_LIMIT:
                return self.rate_limited(fault)
            if fault.kind == fk.SERVER_ERROR:
                return self.server_error(fault)
            if fault.kind == fk.NO_CAPACITY:
                return self.capacity_error(req)
            if fault.kind == fk.VANISH:
                target = fault.target_id or self.instance_id_from_path(req.path)
                if target is not None:
                    with contextlib.suppress(KeyError):
                        self.vanish(target)
        if not authenticated:
            return self.unauthorized()
        found = self._route(req.method, req.path)
        if found is None:
            msg = f"the {self.vendor} simulator does not implement {req.method} {req.path}"
            self._record_violation("unimplemented", req.method, req.path, 501, msg)
            return self.error(501, "not_implemented", msg)
        handler, params = found
        req.params = params
        with self.lock:
            refused = self.authorize(req)
            return refused if refused is not None else handler(req)

    def _apply_tamper(self, method: str, path: str, reply: Reply) -> Reply:
        for m, p, fn in self._tamperers:
            if m in (None, method) and path_matches(p, path) and isinstance(reply.body, (dict, list)):
                reply.body = fn(reply.body)
        return reply


def _maybe_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


class _Handler(BaseHTTPRequestHandler):
    simulator: ClassVar[SimServer]
    protocol_version = "HTTP/1.1"  # keep-alive, like the real APIs; requests pools connections

    def setup(self) -> None:
        super().setup()
        with self.simulator._conns_lock:
            self.simulator._conns.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.simulator._conns_lock:
            self.simulator._conns.discard(self.connection)

    def read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length:
            return self.rfile.read(int(length))
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if status != 204 and status >= 200:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and status != 204:
            self.wfile.write(payload)

    def _dispatch(self) -> None:
        try:
            self.simulator.handle(self, self.command)
        except DropConnection:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout fired)
        except Exception:  # a simulator bug: answer 500 and make the test fail loudly
            tb = traceback.format_exc()
            self.simulator._record_violation("simulator-crash", self.command, self.path, 500, tb)
            with contextlib.suppress(OSError):
                self.send(500, {"Content-Type": "text/plain"}, tb.encode())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the RequestLog has it all
        pass


@contextlib.contextmanager
def running(*sims: SimServer) -> Iterator[tuple[SimServer, ...]]:
    """Start several simulators and stop them all on exit."""
    started: list[SimServer] = []
    try:
        for s in sims:
            started.append(s.start())
        yield tuple(started)
    finally:
        for s in reversed(started):
            s.stop()
