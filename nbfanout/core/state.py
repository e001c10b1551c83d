"""What persists between runs: limits learned from providers and the cooldowns they asked for.

One JSON file (``state_path``; ``$NBFANOUT_STATE``, else the user's cache directory), written
atomically (a temporary file of this process's own, then a rename). Several kernels may share
it: a save takes a lock file, reads what the others saved, keeps the newer of each entry (and
what this process forgot stays forgotten), then writes; on systems without ``fcntl`` the merge
still happens, unlocked. Every entry carries the wall-clock time it was learned: a learned limit expires
after ``learned_ttl_s`` (a provider may raise a key's tier), a cooldown when its wait is over.
Wall-clock time is injected (``wall``), so tests of expiry need not wait.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LearnedLimits", "LearnedLimit", "SavedCooldown", "default_state_path"]

DEFAULT_TTL_S = 86400.0  # one day


def default_state_path() -> Path:
    """Where learned limits persist: $NBFANOUT_STATE, else the user's cache directory."""
    if os.environ.get("NBFANOUT_STATE"):
        return Path(os.environ["NBFANOUT_STATE"])
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.path.join(os.environ["LOCALAPPDATA"]) if os.name == "nt" and "LOCALAPPDATA" in os.environ else os.path.expanduser("~/.cache")
    )
    return Path(base) / "nbfanout" / "learned_limits.json"


@dataclass(frozen=True, slots=True)
class LearnedLimit:
    """One limit a provider stated for a scope ("key:openai …f001"), and when (wall clock, s)."""

    scope: str
    metric: str
    value: float
    learned_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class SavedCooldown:
    """A wait a provider asked of a scope, kept so the next run does not ask again before it ends."""

    scope: str
    until: float  # wall clock
    reason: str


class LearnedLimits:
    """Limits and cooldowns learned from providers, saved as JSON so the next run starts from them."""

    def __init__(self, path: Path | None = None, *, ttl_s: float = DEFAULT_TTL_S,
                 wall: Callable[[], float] = time.time) -> None:
        self.path = path or default_state_path()
        self.ttl_s = ttl_s
        self.wall = wall
        self._forgotten: set[tuple[str, str]] = set()  # (scope, metric) this process dropped
        self._cleared: set[str] = set()  # cooldown scopes this process cleared
        self._data, self._cooldowns = self._read()

    def _read(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """(limits by scope, cooldowns by scope) as saved, or empty when the file is missing or broken."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        if not isinstance(raw, dict):
            return {}, {}
        cooldowns = raw.pop("__cooldowns__", {})
        saved = {k: v for k, v in cooldowns.items() if isinstance(v, dict)} if isinstance(cooldowns, dict) else {}
        return {k: v for k, v in raw.items() if isinstance(v, dict)}, saved

    # --- limits ----------------------------------------------------------------------------
    def get(self, scope: str) -> dict[str, float]:
        """The unexpired limits learned for ``scope``, by metric."""
        return {e.metric: e.value for e in self.entries() if e.scope == scope}

    def record(self, scope: str, metric: str, value: float) -> None:
        self._data.setdefault(scope, {})[metric] = {"value": value, "learned_at": self.wall()}
        self._forgotten.discard((scope, metric))

    def entries(self) -> list[LearnedLimit]:
        """Every unexpired learned limit, by scope and metric."""
        now = self.wall()
        out = []
        for scope, metrics in sorted(self._data.items()):
            for metric, v in sorted(metrics.items()):
                if not (isinstance(v, dict) and isinstance(v.get("value"), (int, float))):
                    continue
                at = float(v.get("learned_at", 0.0)) if isinstance(v.get("learned_at"), (int, float)) else 0.0
                if now - at < self.ttl_s:
                    out.append(LearnedLimit(scope, metric, float(v["value"]), at, at + self.ttl_s))
        return out

    def forget(self, match: str | None = None) -> int:
        """Drop learned limits whose scope contains ``match`` (all if None); returns how many."""
        dropped = 0
        for scope in list(self._data):
            if match is None or match in scope:
                self._forgotten.update((scope, metric) for metric in self._data[scope])
                dropped += len(self._data.pop(scope))
        return dropped

    # --- cooldowns -------------------------------------------------------------------------
    def record_cooldown(self, scope: str, seconds: float, reason: str) -> None:
        until = self.wall() + seconds
        self._cleared.discard(scope)
        held = self._cooldowns.get(scope)
        if held is None or float(held.get("until", 0.0)) < until:
            self._cooldowns[scope] = {"until": until, "reason": reason}

    def cooldowns(self) -> list[SavedCooldown]:
        """Every cooldown not yet over."""
        now = self.wall()
        out = []
        for scope, v in sorted(self._cooldowns.items()):
            until = v.get("until")
            if isinstance(until, (int, float)) and until > now:
                out.append(SavedCooldown(scope, float(until), str(v.get("reason", ""))))
        return out

    def cooldown_left(self, scope: str) -> tuple[float, str] | None:
        """(seconds left, reason) of ``scope``'s saved cooldown, or None."""
        for c in self.cooldowns():
            if c.scope == scope:
                return c.until - self.wall(), c.reason
        return None

    def clear_cooldowns(self, match: Callable[[str], bool] | None = None) -> int:
        """Drop saved cooldowns whose scope ``match`` accepts (all if None); returns how many were live."""
        live = {c.scope for c in self.cooldowns()}
        dropped = [s for s in self._cooldowns if match is None or match(s)]
        for scope in dropped:
            del self._cooldowns[scope]
        self._cleared.update(dropped)
        return len(live & set(dropped))

    def save(self) -> None:
        """Merge with what other processes saved (the newer entry wins), then write atomically."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                self._merge(*self._read())
                doc: dict[str, Any] = {**self._data, "__cooldowns__": {
                    c.scope: {"until": c.until, "reason": c.reason} for c in self.cooldowns()}}
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
                try:
                    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8")
                    tmp.replace(self.path)
                finally:
                    tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only home must not fail a run; the limits are simply learned again

    def _merge(self, data: dict[str, dict[str, Any]], cooldowns: dict[str, dict[str, Any]]) -> None:
        def at(v: Any) -> float:
            return float(v.get("learned_at", 0.0)) if isinstance(v, dict) and isinstance(v.get("learned_at"), (int, float)) else 0.0

        for scope, metrics in data.items():
            for metric, theirs in metrics.items():
                mine = self._data.get(scope, {}).get(metric)
                if (scope, metric) not in self._forgotten and (mine is None or at(theirs) > at(mine)):
                    self._data.setdefault(scope, {})[metric] = theirs
        for scope, theirs in cooldowns.items():
            mine = self._cooldowns.get(scope)
            if scope not in self._cleared and (mine is None or _until(theirs) > _until(mine)):
                self._cooldowns[scope] = theirs

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on ``<state>.lock`` while this process reads, merges and writes."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: merge unlocked
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def __repr__(self) -> str:
        return f"<LearnedLimits {self.path} {len(self.entries())} limits, {len(self.cooldowns())} cooldowns>"


def _until(v: dict[str, Any]) -> float:
    until = v.get("until")
    return float(until) if isinstance(until, (int, float)) else 0.0
