"""Events: what the core reports as it works. Every layer above (terminal, dashboard) only subscribes.

Events are frozen, slotted dataclasses delivered synchronously, in emission order, to every
subscriber. A subscriber that raises is logged and skipped; it never breaks a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "BatchProgress",
    "BudgetStats",
    "Event",
    "EventBus",
    "LimitsLearned",
    "ModelCompleted",
    "ModelFailed",
    "ModelQueued",
    "ModelRotation",
    "ModelSelected",
    "NoModelsAvailableEvent",
    "PURPOSES",
    "RateLimited",
    "RequestEvent",
    "RequestStarted",
    "RetryScheduled",
    "RunCompleted",
    "RunStarted",
    "TextDelta",
    "Utilization",
]

log = logging.getLogger("nbfanout")


@dataclass(frozen=True, slots=True)
class Event:
    kind: ClassVar[str] = "event"
    t: float  # loop-clock seconds since the run started
    run_id: str


#: What a request is for: an answer to the prompt, a score of one answer, or the answers combined.
PURPOSES = ("answer", "judge", "synthesis")


@dataclass(frozen=True, slots=True)
class RequestEvent(Event):
    """An event about one request. ``request`` is unique in the run; ``requested`` is the model
    the caller named (a pool member or a fallback may answer in its place), ``prompt_index`` the
    prompt's place in a batch and ``purpose`` one of PURPOSES: what views need, with no id to parse."""

    request: str = ""
    requested: str = ""
    purpose: str = "answer"
    prompt_index: int = 0


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    models: tuple[str, ...] = ()
    prompts: int = 1
    purpose: str = "answer"  # one of PURPOSES: a synthesis is a run of its own


@dataclass(frozen=True, slots=True)
class ModelQueued(RequestEvent):
    """A (prompt, model) request entered the queue."""

    kind: ClassVar[str] = "model_queued"
    model: str = ""


@dataclass(frozen=True, slots=True)
class ModelSelected(RequestEvent):
    kind: ClassVar[str] = "model_selected"
    model: str = ""
    key_id: str = ""


@dataclass(frozen=True, slots=True)
class RequestStarted(RequestEvent):
    kind: ClassVar[str] = "request_started"
    model: str = ""
    key_id: str = ""
    attempt: int = 1
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta(RequestEvent):
    """A streamed fragment of an answer (only when streaming)."""

    kind: ClassVar[str] = "text_delta"
    model: str = ""
    text: str = ""
    chars_so_far: int = 0


@dataclass(frozen=True, slots=True)
class RateLimited(RequestEvent):
    kind: ClassVar[str] = "rate_limited"
    model: str = ""
    key_id: str = ""
    retry_after_s: float | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class RetryScheduled(RequestEvent):
    kind: ClassVar[str] = "retry_scheduled"
    model: str = ""
    attempt: int = 1  # the attempt that failed
    wait_s: float = 0.0
    category: str = ""
    reason: str = ""  # "provider asked" or "backoff"


@dataclass(frozen=True, slots=True)
class ModelRotation(RequestEvent):
    kind: ClassVar[str] = "model_rotation"
    from_model: str = ""
    to_model: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LimitsLearned(Event):
    kind: ClassVar[str] = "limits_learned"
    scope: str = ""
    metric: str = ""  # rpm, tpm, rpd, concurrency
    old: float | None = None
    new: float | None = None
    source: str = ""  # "headers", "429 body", "adaptive"


@dataclass(frozen=True, slots=True)
class ModelCompleted(RequestEvent):
    kind: ClassVar[str] = "model_completed"
    model: str = ""
    latency_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class ModelFailed(RequestEvent):
    kind: ClassVar[str] = "model_failed"
    model: str = ""
    category: str = ""
    status: int | None = None
    message: str = ""
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class NoModelsAvailableEvent(RequestEvent):
    kind: ClassVar[str] = "no_models_available"
    candidates: tuple[str, ...] = ()
    wait_s: float = 0.0
    reason: str = ""  # what holds it: "3/3 in flight", "rpm 500 (sliding_window) full for 4.2s", a cooldown's cause


@dataclass(frozen=True, slots=True)
class ModelRecovered(RequestEvent):
    """A model, key or provider that had been cooling down admits requests again."""

    kind: ClassVar[str] = "model_recovered"
    model: str = ""
    scope: str = ""  # the budget that had cooled: "model-key openai/gpt-4.1 …k1a7"
    cooled_for_s: float = 0.0  # how long it was out, from the refusal to this admission


@dataclass(frozen=True, slots=True)
class Cooldown:
    """One live cooldown: which budget, how long it still lasts, and why (what the provider said)."""

    scope: str
    name: str
    seconds_left: float
    reason: str


@dataclass(frozen=True, slots=True)
class BudgetStats:
    """A frozen snapshot of one budget (provider, key or model) for bars and dashboards."""

    scope: str  # "provider", "key" or "model"
    name: str  # "openrouter", "openrouter …abcd", "openrouter/deepseek/..."
    rpm_limit: float | None
    rpm_used: float
    tpm_limit: float | None
    tpm_used: float
    rpd_limit: float | None
    rpd_used: int
    concurrency_limit: int | None
    in_flight: int
    cooldown_s: float  # seconds until the cooldown ends (0 when none)
    disabled: str | None = None  # why a key was taken out of use
    ash_limit: float | None = None  # audio seconds per hour (Groq's ASH)
    ash_used: float = 0.0
    asd_limit: float | None = None  # audio seconds per day
    asd_used: float = 0.0
    processes: int | None = None  # shared budgets: how many processes use it now (the counts are all of theirs)


@dataclass(frozen=True, slots=True)
class BatchProgress(Event):
    """One provider batch as its provider last reported it (created, each status poll, results read)."""

    kind: ClassVar[str] = "batch_progress"
    model: str = ""
    batch_id: str = ""
    status: str = ""  # the provider's own word: validating, in_progress, ended, ...
    state: str = "running"  # creating (being uploaded) | running | ended | failed | fetched (its results are in)
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    elapsed_s: float = 0.0  # since the batch was created (across kernel restarts)
    next_poll_s: float | None = None  # when its status is asked for next
    message: str = ""
    poll_error: str = ""  # why the last status request failed (it is asked again at next_poll_s)
    state_path: str = ""  # the map's state file, for ``resume``


@dataclass(frozen=True, slots=True)
class Utilization(Event):
    kind: ClassVar[str] = "utilization"
    budgets: tuple[BudgetStats, ...] = ()


@dataclass(frozen=True, slots=True)
class RunCompleted(Event):
    kind: ClassVar[str] = "run_completed"
    succeeded: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    cancelled: bool = False


Subscriber = Callable[[Event], None]


@dataclass
class EventBus:
    """Delivers each event to every subscriber, in order."""

    _subscribers: list[Subscriber] = field(default_factory=list)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    @property
    def listening(self) -> bool:
        """Whether anyone subscribes: events that cost work to build are skipped when no one does."""
        return bool(self._subscribers)

    def emit(self, event: Event) -> None:
        for callback in tuple(self._subscribers):
            try:
                callback(event)
            except Exception:  # a broken view must never break a run
                log.exception("nbfanout event subscriber %r failed on %s", callback, event.kind)

    def __repr__(self) -> str:
        return f"EventBus(subscribers={len(self._subscribers)})"
