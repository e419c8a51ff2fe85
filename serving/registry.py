"""Which adapter versions are loaded, which runner slot each occupies, and how subjects route to them.

Why reference counts: a hot swap (load v2, route to it, unload v1) must never touch a request
that is still decoding on v1. Each sequence holds a reference to its version; unloading only
removes the version from routing and lookups ("draining"), and the runner slot is freed when the
last in-flight sequence on it finishes.

Thread model: the event loop resolves and acquires, the decode thread releases; one lock.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RegistryError(Exception):
    """An admin or routing request that cannot be honoured; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class AdapterVersion:
    subject: str
    version: int | None  # None: the base model (a known subject with no adapter loaded)
    slot: int
    method: str = "base"
    path: str | None = None
    sha256: str | None = None
    state: str = "active"  # active | draining
    refs: int = 0
    upstream: str | None = None  # served by the child endpoint of another base (serving.bases)
    base: str | None = None  # that base's directory
    bare: bool = False  # that base answers the subject with no adapter (a distilled student)

    def describe(self) -> dict[str, Any]:
        out = {
            "subject": self.subject, "version": self.version, "method": self.method, "path": self.path,
            "sha256": self.sha256, "state": self.state, "in_flight": self.refs,
        }
        if self.upstream:
            out |= {"base": self.base, "upstream": self.upstream, "bare": self.bare}
        return out


@dataclass
class Routing:
    promoted: int
    candidate: int | None = None
    candidate_share: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {"promoted": self.promoted, "candidate": self.candidate, "candidate_share": self.candidate_share}


def sticky_fraction(subject: str, routing_key: str) -> float:
    """A stable number in [0, 1) for (subject, key): the same conversation keeps its canary arm."""
    digest = hashlib.sha256(f"{subject}\x00{routing_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Registry:
    subjects: tuple[str, ...]
    versions: dict[tuple[str, int], AdapterVersion] = field(default_factory=dict)
    routing: dict[str, Routing] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _free_slots: list[int] = field(default_factory=list)
    _next_slot: int = 1
    _draining: list[AdapterVersion] = field(default_factory=list)

    # ---- slots ----------------------------------------------------------------------------------
    def reserve_slot(self, subject: str, version: int) -> int:
        """Claim a slot for a version about to be installed (409 when it is already loaded)."""
        with self.lock:
            if (subject, version) in self.versions:
                raise RegistryError(409, f"adapter {subject} v{version} is already loaded")
            if self._free_slots:
                return self._free_slots.pop()
            self._next_slot += 1
            return self._next_slot - 1

    def return_slot(self, slot: int) -> None:
        with self.lock:
            self._free_slots.append(slot)

    def add(self, av: AdapterVersion) -> None:
        """Publish an installed version; the first version of a subject becomes its promoted one."""
        with self.lock:
            if (av.subject, av.version) in self.versions:
                raise RegistryError(409, f"adapter {av.subject} v{av.version} is already loaded")
            self.versions[(av.subject, av.version)] = av
            if av.subject not in self.routing:
                self.routing[av.subject] = Routing(promoted=av.version)

    # ---- request path ---------------------------------------------------------------------------
    def acquire(self, subject: str, version: int | None = None, routing_key: str | None = None,
                rng: random.Random | None = None) -> AdapterVersion:
        """Pick the version for a request and take a reference to it (released by the decode thread)."""
        with self.lock:
            known = subject in self.subjects or any(s == subject for s, _ in self.versions)
            if not known:
                raise RegistryError(404, f"unknown subject {subject!r}; expected one of {', '.join(self.subjects)}")
            if version is None:
                route = self.routing.get(subject)
                if route is None:  # a subject with no adapter yet is served by the base model
                    av = AdapterVersion(subject=subject, version=None, slot=0)
                    av.refs += 1
                    return av
                version = route.promoted
                if route.candidate is not None and route.candidate_share > 0:
                    u = sticky_fraction(subject, routing_key) if routing_key else (rng or random).random()
                    if u < route.candidate_share:
                        version = route.candidate
            av = self.versions.get((subject, version))
            if av is None:
                loaded = sorted(v for s, v in self.versions if s == subject)
                raise RegistryError(404, f"adapter {subject} v{version} is not loaded (loaded: {loaded or 'none'})")
            av.refs += 1
            return av

    def retain(self, av: AdapterVersion, k: int) -> None:
        with self.lock:
            av.refs += k

    def release(self, av: AdapterVersion) -> AdapterVersion | None:
        """Drop a reference; returns the version when it was draining and is now free to uninstall."""
        with self.lock:
            av.refs -= 1
            if av.state == "draining" and av.refs == 0 and av in self._draining:
                self._draining.remove(av)
                return av
            return None

    # ---- admin ----------------------------------------------------------------------------------
    def unload(self, subject: str, version: int) -> AdapterVersion | None:
        """Stop routing to a version; returns it when no request is using it (uninstall now)."""
        with self.lock:
            av = self.versions.get((subject, version))
            if av is None:
                raise RegistryError(404, f"adapter {subject} v{version} is not loaded")
            route = self.routing.get(subject)
            if route and version in (route.promoted, route.candidate):
                others = sorted(v for s, v in self.versions if s == subject and v != version)
                if route.promoted == version and not others:
                    del self.routing[subject]  # the last version: the subject falls back to the base model
                else:
                    raise RegistryError(409, f"{subject} v{version} is in the routing ({route.describe()}); "
                                             "route to another version first")
            del self.versions[(subject, version)]
            av.state = "draining"
            if av.refs == 0:
                return av
            self._draining.append(av)
            return None

    def set_routing(self, subject: str, promoted: Any, candidate: Any = None, candidate_share: Any = 0.0) -> Routing:
        with self.lock:
            if not isinstance(promoted, int) or isinstance(promoted, bool):
                raise RegistryError(400, "'promoted' must be an integer version")
            if candidate is not None and (not isinstance(candidate, int) or isinstance(candidate, bool)):
                raise RegistryError(400, "'candidate' must be an integer version or null")
            if not isinstance(candidate_share, int | float) or isinstance(candidate_share, bool) \
                    or not 0.0 <= candidate_share <= 1.0:
                raise RegistryError(400, "'candidate_share' must be a number between 0 and 1")
            for v in (promoted, candidate):
                if v is not None and (subject, v) not in self.versions:
                    raise RegistryError(404, f"adapter {subject} v{v} is not loaded")
            route = Routing(promoted=promoted, candidate=candidate,
                            candidate_share=float(candidate_share) if candidate is not None else 0.0)
            self.routing[subject] = route
            return route

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "adapters": [av.describe() for _, av in sorted(self.versions.items())],
                "draining": [av.describe() for av in self._draining],
                "routing": {s: r.describe() for s, r in sorted(self.routing.items())},
            }

    def free_slot_of(self, av: AdapterVersion) -> None:
        if av.slot:
            self.return_slot(av.slot)


def latest_versions(root: Path) -> dict[str, list[tuple[int, Path]]]:
    """`<root>/<subject>/v<N>/` directories, newest first per subject."""
    out: dict[str, list[tuple[int, Path]]] = {}
    if not root.is_dir():
        return out
    for subject_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        found = []
        for d in subject_dir.iterdir():
            if d.is_dir() and d.name.startswith("v") and d.name[1:].isdigit():
                found.append((int(d.name[1:]), d))
        if found:
            out[subject_dir.name] = sorted(found, reverse=True)
    return out
