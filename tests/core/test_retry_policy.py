"""Retry decisions: by category, the provider's wait first, bounded by attempts and deadline."""

from __future__ import annotations

import random

import pytest

from nbfanout.core.errors import RETRYABLE, ErrorCategory, ErrorInfo
from nbfanout.core.retry import RetryPolicy

RETRIED = {"rate_limit", "overloaded", "timeout", "server_error", "network"}
NOT_RETRIED = {"auth", "quota_exhausted", "not_found", "context_length", "content_policy", "bad_request", "missing_key"}


def info(category: str, retry_after: float | None = None) -> ErrorInfo:
    cat = ErrorCategory(category)
    return ErrorInfo(cat, cat in RETRYABLE, "m", retry_after_s=retry_after)


@pytest.mark.parametrize("category", sorted(RETRIED))
def test_transient_categories_are_retried(category):
    assert RetryPolicy(jitter=False).decide(1, info(category), 0.0)[0]


@pytest.mark.parametrize("category", sorted(NOT_RETRIED))
def test_permanent_categories_are_not(category):
    retry, _, why = RetryPolicy().decide(1, info(category), 0.0)
    assert not retry and category in why


def test_provider_wait_wins_over_backoff():
    policy = RetryPolicy(jitter=False, base_s=10)
    assert policy.decide(1, info("rate_limit", retry_after=0.006), 0.0) == (True, 0.006, "provider asked")


def test_backoff_is_exponential_capped_and_full_jitter():
    policy = RetryPolicy(jitter=False, base_s=0.5, max_backoff_s=4)
    assert [policy.backoff(a) for a in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    jittered = RetryPolicy(base_s=0.5, max_backoff_s=4, rng=random.Random(7))
    waits = [jittered.backoff(4) for _ in range(200)]
    assert 0 <= min(waits) < 0.5 and 3.5 < max(waits) <= 4.0  # full jitter spans [0, cap]


def test_attempts_and_deadline_bound_retries():
    policy = RetryPolicy(max_attempts=3, deadline_s=10, jitter=False)
    assert not policy.decide(3, info("server_error"), 0.0)[0] and not policy.decide(3, info("network"), 0.0)[0]
    assert not policy.decide(1, info("rate_limit", retry_after=20), 0.0)[0]
    assert policy.decide(1, info("rate_limit", retry_after=5), 0.0)[0]


def test_only_named_categories_are_retried():
    policy = RetryPolicy(on=frozenset({ErrorCategory.TIMEOUT}))
    assert policy.decide(1, info("timeout"), 0)[0] and not policy.decide(1, info("rate_limit"), 0)[0]


def test_outage_faults_and_refusals_always_wait_at_least_half_of_each_step():
    policy = RetryPolicy(base_s=0.5, max_backoff_s=30, rng=random.Random(3))
    for category in ("network", "server_error", "rate_limit"):
        waits = [policy.wait_after(4, info(category))[0] for _ in range(200)]
        assert 2.0 <= min(waits) and max(waits) <= 4.0, category
    # five such retries always span more than a few seconds' outage
    for seed in range(50):
        fresh = RetryPolicy(rng=random.Random(seed))
        assert sum(fresh.wait_after(a, info("network"))[0] for a in range(1, 6)) >= 7.75
