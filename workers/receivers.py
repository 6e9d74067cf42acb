"""Who may send to the DICOM receiver, and where what they send goes.

The receiver reads its AE titles, routing rules and the project labels from
the database through a ``Directory`` that keeps them for a couple of
seconds: an admin's change takes effect without a restart, and a busy
receiver does not query the database for every association.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select

from imaging import routing
from models import Project, Receiver, RoutingRule

log = logging.getLogger(__name__)

CACHE_SECONDS = 2.0
CALLED_NOT_RECOGNISED = "called AE title not recognised"
CALLING_NOT_RECOGNISED = "calling AE title not recognised"


@dataclass(frozen=True)
class ReceiverInfo:
    """One called AE title: the project it files into (or None) and who may call it."""

    ae_title: str
    project: str | None
    enabled: bool = True
    allowed: tuple[str, ...] = ()


def allowed_lines(text: str | None) -> tuple[str, ...]:
    """Return the non-empty lines of an "allowed callers" field."""
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


def caller_allowed(allowed: tuple[str, ...], calling_ae: str, host: str) -> bool:
    """True when `allowed` is empty or a line names the calling AE title, the
    sender's address, a network holding it (10.0.0.0/8) or a host name that
    resolves to it."""
    if not allowed:
        return True
    for line in allowed:
        if line == calling_ae or line == host or _in_network(line, host):
            return True
    return any(_resolves_to(line, host) for line in allowed if _looks_like_host(line))


def _in_network(line: str, host: str) -> bool:
    if "/" not in line:
        return False
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(line, strict=False)
    except ValueError:
        return False


def _looks_like_host(line: str) -> bool:
    return "." in line or line.lower() == "localhost"


_resolved: dict[str, tuple[float, set[str]]] = {}


def _resolves_to(name: str, host: str) -> bool:
    """True when the host name resolves to `host` (answers kept for a minute)."""
    now = time.monotonic()
    cached = _resolved.get(name)
    if cached is None or now - cached[0] > 60:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:
            addresses = set()
        cached = (now, addresses)
        _resolved[name] = cached
    return host in cached[1]


class Directory:
    """Receivers, rules and project labels, re-read from the database every
    CACHE_SECONDS through `engine` (no application context needed)."""

    def __init__(self, default_ae_title: str, engine, cache_seconds: float = CACHE_SECONDS):
        self.default_ae_title = default_ae_title
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._loaded = -1e9
        self._receivers: dict[str, ReceiverInfo] = {}
        self._rules: list[routing.Rule] = []
        self._projects: frozenset[str] = frozenset()

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._loaded < self.cache_seconds:
                return
            self._load()
            self._loaded = time.monotonic()

    def _load(self) -> None:
        # A connection of its own: the caller's session and transaction stay untouched.
        with self.engine.connect() as conn:
            receiver_rows = conn.execute(select(Receiver.ae_title, Receiver.project,
                                                Receiver.enabled, Receiver.allowed)).all()
            rule_rows = conn.execute(select(RoutingRule.id, RoutingRule.rule, RoutingRule.field)
                                     .filter_by(enabled=True)
                                     .order_by(RoutingRule.position, RoutingRule.id)).all()
            projects = frozenset(conn.scalars(select(Project.label)))
            conn.rollback()
        receivers = {self.default_ae_title: ReceiverInfo(self.default_ae_title, None)}
        for ae_title, project, enabled, allowed in receiver_rows:
            receivers[ae_title] = ReceiverInfo(ae_title, project, enabled, allowed_lines(allowed))
        rules = []
        for rule_id, text, field in rule_rows:
            try:
                rules.append(routing.parse_rule(text, field))
            except ValueError as exc:  # saved before a check existed, or edited by hand
                log.warning("routing rule %s ignored: %s", rule_id, exc)
        self._receivers, self._rules, self._projects = receivers, rules, projects

    def receiver(self, called_ae: str) -> ReceiverInfo | None:
        self._refresh()
        return self._receivers.get(called_ae.strip())

    def rules(self) -> list[routing.Rule]:
        self._refresh()
        return self._rules

    def project_exists(self, label: str | None) -> bool:
        self._refresh()
        return label in self._projects

    def refusal(self, called_ae: str, calling_ae: str, host: str) -> str | None:
        """Return why an association is refused (an A-ASSOCIATE-RJ reason), or None."""
        info = self.receiver(called_ae)
        if info is None or not info.enabled:
            return CALLED_NOT_RECOGNISED
        if not caller_allowed(info.allowed, calling_ae.strip(), host):
            return CALLING_NOT_RECOGNISED
        return None
