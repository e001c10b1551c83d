"""Rotation: which model and key answer a request now, and where to go when one is busy.

Candidates are the requested model alone (no silent substitution), the model plus the
fallbacks the caller allowed, or a pool. Among candidates with a key, capacity, a context
window that fits and the needed capabilities, the order is priority then cost; after a
failure the search moves on circularly from the model that failed, first within its
provider, then across providers in the configured order. Keys of a provider are used
together, least used first; a key the provider rejected is taken out of use with the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from collections.abc import Callable
from typing import Any

from nbfanout.catalog import Limits, ModelSpec
from nbfanout.config import ApiKey, Config, ProviderConfig
from nbfanout.core.clock import Clock, LoopClock
from nbfanout.core.errors import ErrorCategory, ErrorInfo
from nbfanout.core.events import RateLimited
from nbfanout.core.headers import RateSnapshot
from nbfanout.core.images import image_problem
from nbfanout.core.limits import Budget, BudgetSet, CapacityError, Reservation

__all__ = ["KEY_FAULTS", "Choice", "Router", "auto_pool"]

#: Failures that are the key's (or the model's on that key), not the request's: another key may work.
KEY_FAULTS = frozenset({ErrorCategory.AUTH, ErrorCategory.PERMISSION, ErrorCategory.QUOTA_EXHAUSTED})
#: Wire formats whose providers state limits in response headers (Gemini's do not), so a budget
#: that knows no limit sends one request and reads them before a burst.
_HEADER_WIRES = frozenset({"openai", "anthropic", "azure"})

POOLS = ("fast", "research", "code", "vision", "audio")
_CODE_WORDS = re.compile(
    r"```|\b(def|class|function|refactor|compile|stack trace|traceback|bug|regex|sql|python|javascript|typescript|rust|golang|code)\b",
    re.IGNORECASE,
)
_RESEARCH_WORDS = re.compile(r"\b(research|analy[sz]e|compare|explain why|investigate|evaluate|sources?|cite|in depth)\b", re.I)


def auto_pool(prompt: str, *, has_images: bool = False, has_audio: bool = False) -> str:
    """Pick a pool from the request: audio → audio, images → vision, code words → code, analysis → research, else fast."""
    if has_audio:
        return "audio"
    if has_images:
        return "vision"
    if _CODE_WORDS.search(prompt):
        return "code"
    if _RESEARCH_WORDS.search(prompt) or len(prompt) > 4000:
        return "research"
    return "fast"


@dataclass(frozen=True, slots=True)
class Choice:
    """A model and key to send to, with the budgets that must admit the request."""

    model: ModelSpec
    provider: ProviderConfig
    key: ApiKey
    budgets: tuple[Budget, ...]

    @property
    def key_id(self) -> str:
        return self.key.id


_GROUP_LABELS = {  # how a category reads in "tried 17 models: 12 rate limited, 3 no key, ..."
    ErrorCategory.RATE_LIMIT: "rate limited or busy",
    ErrorCategory.MISSING_KEY: "without an API key",
    ErrorCategory.CONTEXT_LENGTH: "too small for the request",
    ErrorCategory.BAD_REQUEST: "unable to take this request",
}


class Router:
    """Selects (model, key) pairs with capacity; owns the per provider / key / model budgets."""

    def __init__(
        self,
        config: Config,
        budgets: BudgetSet | None = None,
        *,
        clock: Clock | None = None,
        provider_rpm: dict[str, float] | None = None,
        downscale_images: bool = True,
    ) -> None:
        self.config = config
        self.downscale_images = downscale_images
        self.clock = clock or LoopClock()
        self.budgets = budgets or BudgetSet(self.clock)
        # the budgets of each (provider, key) and (model, key), found once: a map asks for them on every
        # request and attempt, and naming a key's budget hashes the key (its digest)
        self._found: dict[tuple[str, str, ApiKey], Budget] = {}
        self.provider_rpm = provider_rpm or {}
        self.order = list(config.defaults.provider_order) + [p for p in config.providers if p not in config.defaults.provider_order]

    # --- budgets ------------------------------------------------------------------------
    def _shape(self, *limits: Limits) -> dict[str, str | None]:
        """The limiter shape and token counting that apply: the narrowest table that says wins."""
        limiter = next((lim.limiter for lim in limits if lim.limiter), None)
        counted = next((lim.tokens_counted for lim in limits if lim.tokens_counted), None)
        return {"limiter": limiter, "tokens_counted": counted}

    def provider_budget(self, provider: ProviderConfig) -> Budget:
        """Limits configured or published for the provider, shared by all of its keys and models."""
        lim = provider.limits
        override = self.provider_rpm.get(provider.id)
        rpm = min(x for x in (lim.rpm, override) if x is not None) if (lim.rpm or override) else None
        return self.budgets.budget("provider", provider.id, rpm=rpm, tpm=lim.tpm, rpd=lim.rpd, ash=lim.ash, asd=lim.asd,
                                   concurrency=lim.concurrency, **self._shape(lim))

    def key_budget(self, provider: ProviderConfig, key: ApiKey) -> Budget:
        """What one key may do: learned from its rate-limit headers and 429s (adaptive until then)."""
        found = self._found.get(("key", provider.id, key))
        if found is None:
            found = self._found["key", provider.id, key] = self.budgets.budget(
                "key", f"{provider.id} {key.id}", adaptive=True, shared_as=f"{provider.id} {key.digest}",
                **self._shape(provider.limits))
        return found

    def model_key_budget(self, model: ModelSpec, key: ApiKey) -> Budget:
        """One model on one key: what most providers' limits and rate-limit headers describe (per model, per org)."""
        found = self._found.get(("model-key", model.name, key))
        if found is not None:
            return found
        provider = self.config.providers[model.provider]
        limits_known = any((lim.rpm, lim.tpm) != (None, None) for lim in (model.limits, provider.limits))
        concurrency_known = any(lim.concurrency is not None for lim in (model.limits, provider.limits))
        unknown = not limits_known and provider.wire in _HEADER_WIRES
        found = self._found["model-key", model.name, key] = self.budgets.budget(
            "model-key", f"{model.name} {key.id}", **self._shape(model.limits, provider.limits),
            probe=unknown, ramp=unknown and not concurrency_known, shared_as=f"{model.name} {key.digest}")
        return found

    def header_budget(self, model: ModelSpec, key: ApiKey) -> Budget:
        """The budget a response's rate-limit headers describe: OpenRouter's describe the key as a whole."""
        if model.provider == "openrouter":
            return self.key_budget(self.config.providers[model.provider], key)
        return self.model_key_budget(model, key)

    def model_budget(self, model: ModelSpec) -> Budget:
        lim = model.limits
        provider = self.config.providers[model.provider]
        return self.budgets.budget("model", model.name, rpm=lim.rpm, tpm=lim.tpm, rpd=lim.rpd, ash=lim.ash, asd=lim.asd,
                                   concurrency=lim.concurrency, **self._shape(lim, provider.limits))

    def budgets_for(self, model: ModelSpec, key: ApiKey) -> tuple[Budget, ...]:
        """Every budget a request to ``model`` with ``key`` counts against, narrowest first."""
        provider = self.config.providers[model.provider]
        return (self.model_budget(model), self.model_key_budget(model, key), self.key_budget(provider, key),
                self.provider_budget(provider))

    # --- candidates ---------------------------------------------------------------------
    def unusable_reason(self, model: ModelSpec) -> str | None:
        """Why a model cannot be used at all right now (no key, every key rejected), or None."""
        provider = self.config.providers[model.provider]
        if not provider.keys or not provider.base_url:
            return "missing_key"
        if all(self.key_budget(provider, k).disabled for k in provider.keys):
            return "auth"
        return None

    def fits(self, model: ModelSpec, prompt_tokens: int, needs: frozenset[str]) -> bool:
        if needs - model.capabilities and model.capabilities:
            return False
        if model.context_window is not None and prompt_tokens > model.context_window:
            return False
        return True

    def circular(self, candidates: Sequence[str], after: str | None) -> list[str]:
        """Candidates in search order after ``after`` failed: rest of its provider first, then other providers."""
        names = list(candidates)
        if after is None or after not in names:
            return names
        i = names.index(after)
        rotated = names[i + 1 :] + names[: i + 1]
        provider = after.split("/", 1)[0]
        # the failed provider's own fallback order first (the agent report's provider map), then the global one
        own = self.config.providers[provider].fallback if provider in self.config.providers else ()
        rank = {p: n for n, p in enumerate([*own, *(p for p in self.order if p not in own)])}
        same = [m for m in rotated if m.split("/", 1)[0] == provider and m != after]
        others = sorted(
            (m for m in rotated if m.split("/", 1)[0] != provider),
            key=lambda m: (rank.get(m.split("/", 1)[0], math.inf), rotated.index(m)),
        )
        return same + others + [after]

    def choices(self, candidates: Sequence[str], needs: frozenset[str]) -> list[Choice]:
        """Every usable (model, key) of ``candidates`` in order; a provider's keys least used first."""
        out = []
        for name in candidates:
            model = self.config.models[name]
            if self.unusable_reason(model) or (needs - model.capabilities and model.capabilities):
                continue
            provider = self.config.providers[model.provider]
            keys = sorted(
                (k for k in provider.keys if not self.key_budget(provider, k).disabled),
                key=lambda k: (self.key_budget(provider, k).in_flight, self.key_budget(provider, k).recent_requests),
            )
            out.extend(Choice(model, provider, key, self.budgets_for(model, key)) for key in keys)
        return out

    def has_other_key(self, choice: Choice) -> bool:
        return any(k is not choice.key and not self.key_budget(choice.provider, k).disabled for k in choice.provider.keys)

    # --- learning -----------------------------------------------------------------------
    def learn_headers(self, choice: Choice, rate: RateSnapshot, reservation: Reservation, *, refused: bool = False) -> None:
        """Put a response's rate-limit headers into the budget they describe."""
        target = self.header_budget(choice.model, choice.key)
        probing = self.model_key_budget(choice.model, choice.key)  # where the probe waits (see model_key_budget)
        if probing.probe:  # headers or none, the first answer is in: the rest may go
            probing.probe = False
            probing.changed()
        if rate.empty:
            return
        kind = "rpd" if choice.provider.id == "groq" else "rpm"  # Groq's request headers count per day
        target.observe(rate, reservation.sent_after(target), requests_kind=kind, refused=refused,
                       expected=reservation.expected(target, refused))

    def learn_success(self, choice: Choice, latency_s: float | None = None) -> None:
        """An answer from ``choice`` after ``latency_s`` (None: from the cache) grows what was learning."""
        for b in choice.budgets:
            b.learn_success(latency_s)

    def learn_failure(self, choice: Choice, info: ErrorInfo, reservation: Reservation, wait: float,
                      emit: Callable[..., None], req_id: str) -> None:
        """Put what a failure says into the scope it names: limits, cooldowns, keys out of use."""
        model_b, model_key_b, key_b = choice.budgets[0], choice.budgets[1], choice.budgets[2]
        cat = info.category
        text = info.message.lower()
        # the model's id as a word of its own: "m" or "o3" inside other words is not a mention
        names_model = re.search(rf"(?<![\w.\-/]){re.escape(choice.model.model_id.lower())}(?![\w.\-])", text) is not None
        if cat == ErrorCategory.RATE_LIMIT:
            reservation.refund()  # a refused request is not counted by the provider
            emit(RateLimited, request=req_id, model=choice.model.name, key_id=choice.key_id,
                 retry_after_s=info.retry_after_s if info.retry_after_s is not None else wait, message=info.message)
            # OpenRouter's "temporarily rate-limited upstream" is the model's, whatever the key; a
            # message naming the model ("Rate limit reached for gpt-4.1 in organization ...") or a
            # concurrency limit is that model on this key; otherwise the key itself is limited.
            hint_kind = info.limit_hint.kind if info.limit_hint is not None else None
            if "upstream" in text:
                target = model_b
            elif names_model or hint_kind == "concurrency":
                target = model_key_b
            else:
                target = key_b
            target.learn_refusal(info)
            if hint_kind == "concurrency" and (info.limit_hint is None or not info.limit_hint.limit):
                # refused for concurrency with no number: what we had in flight there is the most it takes
                target.set_limit("concurrency", max(1, target.in_flight), "429 (requests in flight)")
            if hint_kind != "concurrency":  # a concurrency refusal frees when a request ends, not at a time
                target.cool_down(wait, f"rate limited: retry in {wait:.1f}s")
        elif cat == ErrorCategory.OVERLOADED:
            model_b.cool_down(wait, f"overloaded: retry in {wait:.1f}s")
        elif cat in KEY_FAULTS:
            # a quota or permission that names the model is that model's on this key (Gemini's per-model
            # quotas, a model the account may not use); otherwise the key itself is out
            (model_key_b if names_model else key_b).disable(cat, info.message)
        elif cat == ErrorCategory.NOT_FOUND:
            model_b.disable(cat, info.message)

    def explain(self, candidates: Sequence[str], spec: Any, last: ErrorInfo | None, exc: CapacityError,
                tokens_for: Callable[[Choice, Any], tuple[int, int]]) -> ErrorInfo:
        """Why no candidate can take the request: every candidate's reason and, where known, when it will be usable."""
        now = self.clock.now()
        reasons = [self._why_not(name, spec, tokens_for, now, exc) for name in candidates]
        if len(candidates) == 1:
            category, text, usable_in = reasons[0]
            if math.isfinite(exc.wait_s):
                return ErrorInfo(ErrorCategory.RATE_LIMIT, False,
                                 f"no capacity within max_wait_s: {candidates[0]} waits {exc.wait_s:.0f}s "
                                 f"({exc.reason})" + (f"; last error: {last.message}" if last else ""),
                                 retry_after_s=exc.wait_s)
            return last if last is not None else ErrorInfo(category, False, text, retry_after_s=usable_in)
        if last is not None and all(c == ErrorCategory.BAD_REQUEST for c, _, _ in reasons):
            return last
        groups: dict[str, list[float | None]] = {}
        for category, _, usable_in in reasons:
            groups.setdefault(_GROUP_LABELS.get(category, category.value.replace("_", " ")), []).append(usable_in)
        summary = []
        for label, waits in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            known = [w for w in waits if w is not None and math.isfinite(w)]
            summary.append(f"{len(waits)} {label}" + (f" (soonest usable in {min(known):.0f}s)" if known else ""))
        categories = {c for c, _, _ in reasons}
        if categories == {ErrorCategory.RATE_LIMIT} or math.isfinite(exc.wait_s):
            category = ErrorCategory.RATE_LIMIT
        else:
            category = categories.pop() if len(categories) == 1 else ErrorCategory.BAD_REQUEST
        soonest = min((w for _, _, w in reasons if w is not None and math.isfinite(w)), default=None)
        limit = f" within max_wait_s = {self.config.defaults.max_wait_s:g}s" if math.isfinite(exc.wait_s) else ""
        message = (f"no model could answer{limit}: tried {len(candidates)} models: " + ", ".join(summary) + ". "
                   + "; ".join(text for _, text, _ in reasons)
                   + (f"; last error: {last.message}" if last else ""))
        return ErrorInfo(category, False, message, retry_after_s=soonest)

    def _why_not(self, name: str, spec: Any, tokens_for: Callable[[Choice, Any], tuple[int, int]], now: float,
                 exc: CapacityError) -> tuple[ErrorCategory, str, float | None]:
        """One candidate's reason: (category, "model: why", seconds until usable or None)."""
        model = self.config.models[name]
        provider = self.config.providers[model.provider]
        if not provider.keys:
            return ErrorCategory.MISSING_KEY, f"{name}: no API key (set {' or '.join(provider.key_vars)})", None
        if spec.needs - model.capabilities and model.capabilities:
            return ErrorCategory.BAD_REQUEST, f"{name}: lacks {', '.join(sorted(spec.needs - model.capabilities))}", None
        refused = image_problem(provider.id, spec.all_images, downscale=self.downscale_images)
        if refused is not None:
            return ErrorCategory.BAD_REQUEST, f"{name}: not sent: {refused}", None
        why: tuple[ErrorCategory, str, float | None] | None = None
        for key in provider.keys:
            budgets = self.budgets_for(model, key)
            choice = Choice(model, provider, key, budgets)
            prompt_tokens, tokens = tokens_for(choice, spec)
            disabled = next((b.disabled for b in budgets if b.disabled), None)
            too_big = next((b for b in budgets if b.too_large(tokens)), None)
            if disabled is not None:
                candidate = (disabled[0], f"{name}: taken out of use after {disabled[0].value}: {disabled[1]}", None)
            elif model.context_window is not None and prompt_tokens > model.context_window:
                candidate = (ErrorCategory.CONTEXT_LENGTH,
                             f"{name}: prompt of ~{prompt_tokens} tokens exceeds its {model.context_window}-token context window",
                             None)
            elif too_big is not None:
                candidate = (ErrorCategory.CONTEXT_LENGTH,
                             f"{name}: ~{tokens} tokens (prompt + max output) exceed the {too_big.tpm:g} tokens per "
                             f"minute allowed for {too_big.scope} {too_big.name}; lower max_tokens or shorten the prompt",
                             None)
            else:
                blocks = [blk for blk in (b.block(tokens, now) for b in budgets) if blk is not None]
                if not blocks:
                    return ErrorCategory.RATE_LIMIT, f"{name}: {exc.reason}", 0.0
                timed = [blk for blk in blocks if blk.until is not None]
                latest = max(timed, key=lambda blk: blk.until or 0.0) if timed else None
                usable_in = max(0.0, latest.until - now) if latest is not None and latest.until is not None else None
                blk = latest or blocks[0]
                when = f", usable in {usable_in:.0f}s" if usable_in is not None and math.isfinite(usable_in) else ""
                candidate = (ErrorCategory.RATE_LIMIT, f"{name}: {blk.why}{when}", usable_in)
            # the key that frees soonest speaks for the model
            if why is None or (candidate[2] is not None and (why[2] is None or candidate[2] < why[2])):
                why = candidate
        assert why is not None
        return why
