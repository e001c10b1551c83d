"""Where budgets live: in process (the default), or in Redis, shared by every process that uses it.

With ``[shared] url = "redis://..."`` every budget of a provider, key or model is kept jointly by
all processes (kernels, scripts, machines) that use the same store: one key's limits hold for
all of them together. The in-process budgets (``core/limits.py``) still queue this process's
requests and keep its own counts; a request they admit is then admitted by the store, atomically
across all of its budgets, in one Lua script (``budgets.lua``) on the Redis server's clock.

The script answers "admitted" or the exact time until the request could be, so waiting stays
event-driven: a timer for that time, and for concurrency a message on the store's ``released``
channel (pub/sub) when any process finishes a request. Each admitted request holds a lease
that this process renews while it runs (every second, or every third of a shorter lease), and
the same call reads what all processes use, for the dashboard; a process that dies stops
renewing, and its slots free when the lease ends. Every key the script writes has a TTL.

Why our own script and not a library (checked 2026-12):

* ``limits`` (Redis storage: moving / sliding window, fixed window): one limit per call, no
  atomic check across several budgets, no cost refund, no concurrency leases.
* ``throttled-py``: token bucket, GCRA and windows on Redis, each limit on its own; no multi-key
  reservation, no give-back of unused tokens, no leases.
* ``pyrate-limiter``: bucket of rates per item on Redis; acquiring several buckets is not atomic
  and nothing given back; waits by sleeping (polling), no concurrency.
* ``token-throttle``: the closest (multi-resource reservation with refund for LLM calls), but
  only a token bucket, held under locks with 0.1 s polling, and no expiring leases for a
  process that dies.

What is needed is atomic reservation across every budget a request counts against, in each
provider's limiter shape, with a cost, a refund, leases that expire and wake-ups on release.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from nbfanout.core.errors import FanoutError, UsageError
from nbfanout.core.shapes import SPANS

if TYPE_CHECKING:
    from nbfanout.core.limits import Budget

__all__ = ["ON_UNAVAILABLE", "REDIS_URL_ENV", "SharedConfig", "SharedStore", "SharedUnavailable", "SharedUse",
           "Verdict", "masked_url"]

REDIS_URL_ENV = "NBFANOUT_REDIS_URL"
ON_UNAVAILABLE = ("fail", "local")
_SHAPES = {"token_bucket": "tb", "per_second": "tb", "sliding_window": "sw", "fixed_window": "fw"}
_ERRORS: tuple[type[BaseException], ...] = (OSError,)  # widened with redis-py's own once it is imported


def masked_url(url: str) -> str:
    """``url`` with its password (and a username that could be a token) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username if parts.password is not None and parts.username not in (None, "") else None
    auth = f"{user}:***@" if user else "***@"
    return urlunsplit((parts.scheme, auth + host, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class SharedConfig:
    """The ``[shared]`` table: where the shared budgets live and what to do when they cannot be reached."""

    url: str = field(repr=False)
    on_unavailable: str = "fail"  # "fail": the run fails at once; "local": warn once, keep budgets in process
    lease_s: float = 30.0  # a dead process's requests stop counting against concurrency after this long
    namespace: str = "nbfanout"  # prefix of every Redis key: teams sharing one server keep apart

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise UsageError(f"shared budgets: {masked_url(self.url)!r} is not a Redis URL; expected "
                             "redis://host:port/db, rediss://... (TLS) or unix:///path/to/socket")
        if self.on_unavailable not in ON_UNAVAILABLE:
            raise UsageError(f"shared budgets: on_unavailable = {self.on_unavailable!r}; expected 'fail' or 'local'")
        if not self.lease_s > 0:
            raise UsageError(f"shared budgets: lease_s = {self.lease_s!r}; expected a positive number of seconds")

    @classmethod
    def resolve(cls, value: str | SharedConfig | bool | None, env: Mapping[str, str] | None = None
                ) -> SharedConfig | None:
        """``Fanout(shared=...)`` / ``--shared``: a URL, a SharedConfig, True (the URL from
        ``NBFANOUT_REDIS_URL``), or None / False (budgets in process)."""
        if value is None or value is False:
            return None
        if isinstance(value, SharedConfig):
            return value
        if value is True or value == "":
            url = (env if env is not None else os.environ).get(REDIS_URL_ENV, "")
            if not url:
                raise UsageError(f"shared budgets were asked for without a URL: set {REDIS_URL_ENV}=redis://host:port/0 "
                                 "or pass the URL (--shared redis://..., Fanout(shared='redis://...'))")
            return cls(url)
        return cls(str(value))

    @property
    def shown(self) -> str:
        return masked_url(self.url)

    def __repr__(self) -> str:
        return f"SharedConfig({self.shown!r}, on_unavailable={self.on_unavailable!r}, lease_s={self.lease_s:g})"


class SharedUnavailable(FanoutError):
    """The shared budget store cannot be reached (or failed mid-run) and ``on_unavailable`` is "fail"."""

    def __init__(self, config: SharedConfig, cause: BaseException) -> None:
        self.url = config.shown
        detail = str(cause).replace(config.url, config.shown) or type(cause).__name__
        super().__init__(
            f"shared budget store {config.shown} is unreachable ({detail}). Start it (`make redis` starts one "
            f"locally), fix [shared] url / {REDIS_URL_ENV}, or set [shared] on_unavailable = \"local\" to fall "
            "back to budgets kept in this process")


@dataclass(frozen=True, slots=True)
class SharedUse:
    """What every process together uses of one budget, as the store last reported it."""

    used: Mapping[str, float]  # rpm / tpm / rpd / ash / asd -> amount in the current window
    in_flight: int
    processes: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """The store's answer to a reservation: admitted, or why not (``why``) in which budget and until when."""

    admitted: bool
    why: str = ""  # "rate", "concurrency", "cooldown" or "disabled"
    text: str = ""
    budget: int = -1  # index into the budgets asked for
    wait_s: float | None = 0.0  # None: never (disabled)
    stale: bool = False  # a release of that budget reached this process while the store answered: ask again


def _script() -> str:
    return resources.files("nbfanout.core").joinpath("budgets.lua").read_text(encoding="utf-8")


class _Link:
    """One event loop's connection to the store: the client, the release subscription, the lease renewer."""

    def __init__(self, store: SharedStore) -> None:
        import redis.asyncio as aioredis
        import redis.exceptions

        global _ERRORS
        _ERRORS = (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self.store = store
        cfg = store.config
        self.client = aioredis.Redis.from_url(cfg.url, socket_connect_timeout=2.0, socket_timeout=5.0,
                                             health_check_interval=0, decode_responses=True)
        self.script = self.client.register_script(store.source)
        self.users = 0
        self.open_rids: set[str] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.listener: asyncio.Task[None] | None = None
        self.renewer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.ping()
        await self.client.script_load(self.store.source)
        await self.pubsub.subscribe(f"{self.store.config.namespace}:released")
        self.listener = asyncio.ensure_future(self._listen())
        self.renewer = asyncio.ensure_future(self._renew())

    async def call(self, *args: Any) -> dict[str, Any]:
        raw = await self.script(keys=[], args=[args[0], self.store.config.namespace, *args[1:]])
        return json.loads(raw)

    async def _listen(self) -> None:
        try:
            async for message in self.pubsub.listen():
                if message.get("type") == "message":
                    self.store.released(str(message["data"]).split("\n"))
        except asyncio.CancelledError:
            raise
        except _ERRORS as exc:
            self.store.lost(exc)

    async def _renew(self) -> None:
        """Renew this process's leases and refresh what all processes use, every third of a lease (and
        at least every second, for the dashboard)."""
        period = min(1.0, self.store.config.lease_s / 3)
        while True:  # at once first: the other processes count this one from its start
            try:
                reply = await self.call("renew", self.store.process, self.store.lease_ms,
                                        json.dumps(sorted(self.open_rids)), self.store.describe_all())
            except _ERRORS as exc:
                self.store.lost(exc)
                return
            self.store.absorb(reply.get("stats") or [])
            await asyncio.sleep(period)

    def post(self, *args: Any) -> None:
        """Send a command without waiting for it (releases, refunds, learned limits)."""
        task = asyncio.ensure_future(self._post(*args))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _post(self, *args: Any) -> None:
        try:
            await self.call(*args)
        except _ERRORS as exc:
            self.store.lost(exc)

    async def close(self) -> None:
        for task in (self.listener, self.renewer):
            if task is not None:
                task.cancel()
        if self.tasks:  # releases and refunds in flight still reach the store
            await asyncio.wait(set(self.tasks), timeout=2.0)
        await asyncio.gather(*(t for t in (self.listener, self.renewer) if t is not None), return_exceptions=True)
        try:
            await self.pubsub.aclose()
            await self.client.aclose()
        except _ERRORS:
            pass


class SharedStore:
    """Budgets kept in Redis for every process using the same URL and namespace (see the module docstring)."""

    def __init__(self, config: SharedConfig) -> None:
        try:
            import redis  # noqa: F401
        except ImportError as exc:
            raise UsageError("shared budgets need redis-py: pip install 'nbfanout[redis]'") from exc
        self.config = config
        self.source = _script()
        self.process = uuid.uuid4().hex[:12]
        self.lease_ms = config.lease_s * 1000.0
        self.active = True  # False once it fell back to local budgets ("local")
        self._links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Link] = weakref.WeakKeyDictionary()
        self._budgets: dict[str, Budget] = {}
        self._releases: dict[str, int] = {}  # per tracked budget id: release messages seen so far
        self.failure: BaseException | None = None  # why the store failed ("fail": every reservation raises)
        self.on_fallback: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"<SharedStore {self.config.shown} {'shared' if self.active else 'fell back to local'}>"

    # --- lifetime -------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect on the running loop (once per loop; runs on it share the connection)."""
        if not self.active:
            return
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        if link is None:
            link = _Link(self)
            try:
                await link.start()
            except _ERRORS as exc:
                await link.close()
                if self.config.on_unavailable == "fail":
                    raise SharedUnavailable(self.config, exc) from None
                self.lost(exc)
                return
            self._links[loop] = link
        link.users += 1

    async def close(self) -> None:
        link = self._links.get(asyncio.get_running_loop())
        if link is None:
            return
        link.users -= 1
        if link.users <= 0:
            self._links.pop(asyncio.get_running_loop(), None)
            await link.close()

    def _link(self) -> _Link | None:
        try:
            return self._links.get(asyncio.get_running_loop())
        except RuntimeError:
            return None

    def lost(self, exc: BaseException) -> None:
        """The store failed: remember it (the next reservation fails, "fail"), or fall back to in-process
        budgets and warn once ("local"). Never raises: it is called from background tasks too."""
        if self.config.on_unavailable == "fail":
            self.failure = self.failure or exc
            for budget in self._budgets.values():
                budget.unhold()  # a waiter looks again, and its reservation reports the failure
            return
        if self.active:
            self.active = False
            for budget in self._budgets.values():
                budget.shared_use = None  # its counts are this process's own again
                budget.unhold()
            text = (f"shared budget store {self.config.shown} unreachable ({exc}); budgets are kept in this "
                    "process from now on (on_unavailable = \"local\")")
            warnings.warn(text, RuntimeWarning, stacklevel=2)
            if self.on_fallback is not None:
                self.on_fallback(text)

    def check(self) -> None:
        """Raise SharedUnavailable if the store failed and the configuration says to fail."""
        if self.failure is not None:
            raise SharedUnavailable(self.config, self.failure)

    # --- budgets --------------------------------------------------------------------------
    def track(self, budget: Budget) -> None:
        """Keep ``budget`` in the store; the other processes count this one in at once, not at the next renewal."""
        if budget.shared_id is None:
            return
        self._budgets[budget.shared_id] = budget
        link = self._link()
        if link is not None:
            link.post("renew", self.process, self.lease_ms, "[]", json.dumps([self.describe(budget, -1.0)]))

    def describe(self, budget: Budget, tokens: float = 0.0, audio_s: float = 0.0,
                 only: str | None = None) -> dict[str, Any]:
        """A budget as the script reads it: limits, shape and this request's amounts (``only``: one kind).

        A request or token limit this process does not know goes as limit -1: the script uses the
        one another process learned, if any (and says so in its reply)."""
        kinds = []
        shapes = budget.shapes()
        for kind in ("rpm", "tpm", "rpd", "ash", "asd"):
            if only is not None and kind != only:
                continue
            shape = shapes.get(kind)
            if shape is None and kind in ("ash", "asd"):
                continue
            span = shape.span if shape is not None else SPANS[kind]
            amount = budget._amount(kind, tokens, audio_s) if tokens >= 0 else 0.0
            kinds.append({"kind": kind, "shape": _SHAPES[budget.limiter],
                          "limit": shape.limit if shape is not None else -1,
                          "cap": shape.capacity if shape is not None else -1,
                          "span": span * 1000.0, "amount": amount,
                          "phase": getattr(shape, "_phase", 0.0) * 1000.0,
                          "slice": (span / 1440 * 1000.0) if span > 60.0 else 0.0})
        out: dict[str, Any] = {"id": budget.shared_id, "kinds": kinds}
        if budget.concurrency is not None:
            out["conc"] = budget.concurrency
        return out

    def describe_all(self) -> str:
        return json.dumps([self.describe(b, -1.0) for b in self._budgets.values()])

    def absorb(self, stats: Iterable[Mapping[str, Any]]) -> None:
        """Take in what all processes use (the renewer's reply) and limits another process learned
        (every reply)."""
        for s in stats:
            budget = self._budgets.get(s.get("id", ""))
            if budget is None:
                continue
            used = s.get("used")
            if used is not None:
                budget.shared_use = SharedUse(used=dict(used) if isinstance(used, dict) else {},
                                              in_flight=int(s.get("in_flight", 0)),
                                              processes=int(s.get("processes", 0)))
            limits = s.get("limits") or {}
            if isinstance(limits, dict):
                for metric, value in limits.items():
                    if value and getattr(budget, metric, None) != value:
                        budget.adopt_shared(metric, float(value))

    def released(self, ids: Iterable[str]) -> None:
        for shared_id in ids:
            budget = self._budgets.get(shared_id)
            if budget is not None:
                self._releases[shared_id] = self._releases.get(shared_id, 0) + 1
                budget.unhold()

    # --- reservations ---------------------------------------------------------------------
    async def reserve(self, rid: str, budgets: list[Budget], tokens: float, audio_s: float) -> Verdict:
        """Admit the request ``rid`` in every one of ``budgets`` at once, or say why not.

        A refusal that a release of the refused budget overtook is ``stale``: the release (this
        process's own, posted without waiting, or another's) reached Redis after the reservation and
        its message came in before the reply, so holding the budget until the next release would wait
        for one that already happened (with nothing else in flight, until the lease ran out)."""
        self.check()
        link = self._link()
        if link is None or not self.active:
            return Verdict(True)
        seen = [self._releases.get(b.shared_id or "", 0) for b in budgets]
        described = json.dumps([self.describe(b, tokens, audio_s) for b in budgets])
        try:
            reply = await link.call("reserve", rid, self.lease_ms, described)
        except asyncio.CancelledError:
            link.post("adjust", rid, json.dumps({"refund": True}))
            link.post("release", rid)
            raise
        except _ERRORS as exc:
            self.lost(exc)
            self.check()
            return Verdict(True)
        self.absorb(reply.get("learned") or [])
        if reply.get("ok"):
            link.open_rids.add(rid)
            return Verdict(True)
        wait_ms = float(reply.get("wait", -1))
        index = int(reply.get("i", 1)) - 1
        why = str(reply.get("why", ""))
        at = min(max(index, 0), len(budgets) - 1)
        stale = why != "disabled" and self._releases.get(budgets[at].shared_id or "", 0) != seen[at]
        return Verdict(False, why, str(reply.get("text", "")), index, None if wait_ms < 0 else wait_ms / 1000.0,
                       stale)

    def release(self, rid: str) -> None:
        link = self._link()
        if link is not None and rid in link.open_rids:
            link.open_rids.discard(rid)
            link.post("release", rid)

    def adjust(self, rid: str, *, tpm: Mapping[str, float] | None = None, audio_s: float = 0.0,
               refund: bool = False) -> None:
        """Settle a reservation to the real usage (``tpm``: extra tokens per budget id) or refund it."""
        link = self._link()
        if link is None:
            return
        change: dict[str, Any] = {"refund": refund, "tpm": dict(tpm or {})}
        if audio_s:
            change["audio"] = audio_s
        link.post("adjust", rid, json.dumps(change))

    def share(self, budget: Budget, what: str, *args: Any) -> None:
        """Tell every process what this one learned about ``budget``: a limit, a cooldown, a key out of use."""
        link = self._link()
        if link is None or budget.shared_id is None:
            return
        if what == "cooldown":
            seconds, reason = args
            if math.isfinite(seconds) and seconds > 0:
                link.post("cooldown", budget.shared_id, seconds * 1000.0, reason)
        elif what == "clear_cooldown":
            link.post("clear_cooldown", budget.shared_id)
        elif what == "limit":
            metric, value = args
            link.post("learn", budget.shared_id, metric, repr(float(value)))
        elif what == "observe":
            kind, remaining, reset_s, newer = args
            if budget.shapes().get(kind) is not None:
                link.post("observe", json.dumps(self.describe(budget, 0.0, only=kind)), float(remaining),
                          -1.0 if reset_s is None else reset_s * 1000.0, float(newer))
        elif what == "disabled":
            category, message = args
            link.post("learn", budget.shared_id, "disabled", f"{category}\t{message}")
