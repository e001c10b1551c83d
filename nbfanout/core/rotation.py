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

from nbfanout.catalog import ModelSpec
from nbfanout.config import ApiKey, Config, ProviderConfig
from nbfanout.core.clock import Clock, LoopClock
from nbfanout.core.limits import Budget, BudgetSet

__all__ = ["Choice", "Router", "auto_pool"]

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


class Router:
    """Selects (model, key) pairs with capacity; owns the per provider / key / model budgets."""

    def __init__(
        self,
        config: Config,
        budgets: BudgetSet | None = None,
        *,
        clock: Clock | None = None,
        provider_rpm: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or LoopClock()
        self.budgets = budgets or BudgetSet(self.clock)
        self.provider_rpm = provider_rpm or {}
        self.order = list(config.defaults.provider_order) + [p for p in config.providers if p not in config.defaults.provider_order]

    # --- budgets ------------------------------------------------------------------------
    def provider_budget(self, provider: ProviderConfig) -> Budget:
        """Limits configured or published for the provider, shared by all of its keys and models."""
        lim = provider.limits
        override = self.provider_rpm.get(provider.id)
        rpm = min(x for x in (lim.rpm, override) if x is not None) if (lim.rpm or override) else None
        return self.budgets.budget("provider", provider.id, rpm=rpm, tpm=lim.tpm, rpd=lim.rpd, concurrency=lim.concurrency)

    def key_budget(self, provider: ProviderConfig, key: ApiKey) -> Budget:
        """What one key may do: learned from its rate-limit headers and 429s (adaptive until then)."""
        return self.budgets.budget("key", f"{provider.id} {key.id}", adaptive=True)

    def model_key_budget(self, model: ModelSpec, key: ApiKey) -> Budget:
        """One model on one key: what most providers' rate-limit headers describe (per model, per account).

        OpenRouter's headers describe the key as a whole, so there the key budget learns them instead.
        """
        if model.provider == "openrouter":
            return self.key_budget(self.config.providers[model.provider], key)
        return self.budgets.budget("model-key", f"{model.name} {key.id}")

    def model_budget(self, model: ModelSpec) -> Budget:
        lim = model.limits
        return self.budgets.budget("model", model.name, rpm=lim.rpm, tpm=lim.tpm, rpd=lim.rpd, concurrency=lim.concurrency)

    def budgets_for(self, model: ModelSpec, key: ApiKey) -> tuple[Budget, ...]:
        provider = self.config.providers[model.provider]
        # narrowest first, so a busy model never holds provider-wide capacity while it waits
        budgets = (self.model_budget(model), self.key_budget(provider, key), self.provider_budget(provider))
        header_budget = self.model_key_budget(model, key)
        return budgets if header_budget in budgets else (*budgets, header_budget)

    # --- candidates ---------------------------------------------------------------------
    def unusable_reason(self, model: ModelSpec) -> str | None:
        """Why a model cannot be used at all right now (no key, every key rejected), or None."""
        provider = self.config.providers[model.provider]
        if not provider.keys:
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
        rank = {p: n for n, p in enumerate(self.order)}
        same = [m for m in rotated if m.split("/", 1)[0] == provider and m != after]
        others = sorted(
            (m for m in rotated if m.split("/", 1)[0] != provider),
            key=lambda m: (rank.get(m.split("/", 1)[0], math.inf), rotated.index(m)),
        )
        return same + others + [after]

    def pick(self, candidates: Sequence[str], tokens: float, prompt_tokens: int, needs: frozenset[str]) -> tuple[Choice | None, float]:
        """The first candidate with a free key now, or (None, shortest wait until one frees)."""
        best_wait = math.inf
        for name in candidates:
            model = self.config.models[name]
            if self.unusable_reason(model) or not self.fits(model, prompt_tokens, needs):
                continue
            provider = self.config.providers[model.provider]
            keys = sorted(
                (k for k in provider.keys if not self.key_budget(provider, k).disabled),
                key=lambda k: (self.key_budget(provider, k).in_flight, self.key_budget(provider, k).recent_requests),
            )
            for key in keys:
                budgets = self.budgets_for(model, key)
                wait = self.budgets.wait_time(budgets, tokens)
                if wait == 0.0:
                    return Choice(model, provider, key, budgets), 0.0
                best_wait = min(best_wait, wait)
        return None, best_wait
