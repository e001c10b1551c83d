"""Budgets in virtual time (looptime): admissions never exceed a limit in any 60 s window."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from nbfanout.core.errors import ErrorCategory, ErrorInfo, LimitHint
from nbfanout.core.headers import RateSnapshot
from nbfanout.core.limits import Budget, BudgetSet, LearnedLimits

pytestmark = pytest.mark.looptime


async def _admit_for(budgets: list[Budget], seconds: float, tokens: float = 0) -> list[float]:
    """Admit as fast as the budgets allow for ``seconds`` of (virtual) time; return admission times."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    times: list[float] = []
    bs = BudgetSet()
    while loop.time() - start < seconds:
        wait = bs.wait_time(budgets, tokens)
        if wait:
            await asyncio.sleep(wait)
            continue
        await bs.take(budgets, tokens)
        for b in budgets:
            b.release()
        times.append(loop.time() - start)
    return times


def _max_in_window(times: list[float], amounts: list[float] | None = None, window: float = 60.0) -> float:
    amounts = amounts or [1.0] * len(times)
    best, total, q = 0.0, 0.0, deque()
    for t, a in zip(times, amounts):
        q.append((t, a))
        total += a
        while q[0][0] <= t - window:
            total -= q.popleft()[1]
        best = max(best, total)
    return best


@pytest.mark.parametrize("rpm", [1, 3, 20, 60, 500])
async def test_requests_in_any_60s_window_never_exceed_rpm_and_reach_95_percent(rpm):
    budget = Budget("key", "k", rpm=rpm)
    times = await _admit_for([budget], 600)
    assert _max_in_window(times) <= rpm
    if rpm >= 20:
        assert len(times) >= 0.95 * rpm * 10  # ten minutes at the limit, minus the safety burst


async def test_tokens_per_minute_never_exceeded_even_for_requests_above_the_burst():
    budget = Budget("key", "k", tpm=6000)
    sizes = [400, 900, 2500, 300, 5000]
    loop = asyncio.get_running_loop()
    times, amounts = [], []
    bs = BudgetSet()
    start = loop.time()
    for i in range(60):
        size = sizes[i % len(sizes)]
        while (wait := bs.wait_time([budget], size)) > 0:
            await asyncio.sleep(wait)
        await bs.take([budget], size)
        budget.release()
        times.append(loop.time() - start)
        amounts.append(size)
    assert _max_in_window(times, amounts) <= 6000


async def test_concurrency_limit_admits_one_at_a_time():
    budget = Budget("model", "free-r1", concurrency=1)
    bs = BudgetSet()
    assert bs.wait_time([budget], 0) == 0
    await bs.take([budget], 0)
    assert not budget.has_capacity()
    budget.release()
    assert budget.has_capacity()


async def test_429_body_limit_is_learned_and_headers_pause_until_reset():
    budget = Budget("key", "groq k", tpm=30000)
    hint = LimitHint(kind="tpm", limit=6000, used=5800, requested=900)
    budget.learn_from_429(ErrorInfo(ErrorCategory.RATE_LIMIT, True, "Limit 6000", status=429, limit_hint=hint))
    assert budget.tpm == 6000
    budget.learn_from_headers(RateSnapshot(limit_requests=30, remaining_requests=0, reset_requests_s=7.5))
    assert budget.rpm == 30
    assert budget.wait_time(0) == pytest.approx(7.5)
    await asyncio.sleep(7.5)
    assert budget.wait_time(0) == 0


async def test_adaptive_budget_halves_on_429_and_climbs_back_slowly():
    budget = Budget("key", "generic", adaptive=True)
    bs = BudgetSet()
    for _ in range(40):
        await bs.take([budget], 0)
        budget.release()
    budget.learn_from_429(ErrorInfo(ErrorCategory.RATE_LIMIT, True, "Too Many Requests", status=429))
    assert budget.rpm == 20  # half of the 40 it achieved in the last minute
    for _ in range(20):
        budget.learn_from_success()
    assert budget.rpm == 21


async def test_learned_limits_persist_for_the_next_run(tmp_path):
    path = tmp_path / "state.json"
    first = BudgetSet(learned=LearnedLimits(path))
    b = first.budget("key", "openai …abcd", rpm=500)
    b.learn_from_429(ErrorInfo(ErrorCategory.RATE_LIMIT, True, "x", limit_hint=LimitHint("rpm", 60)))
    first.learned.save()
    second = BudgetSet(learned=LearnedLimits(path))
    assert second.budget("key", "openai …abcd", rpm=500).rpm == 60


async def test_statistics_are_a_frozen_snapshot_with_live_numbers():
    budget = Budget("provider", "openai", rpm=10, concurrency=2)
    await BudgetSet().take([budget], 0)
    stats = budget.statistics()
    assert (stats.rpm_used, stats.in_flight, stats.rpm_limit, stats.concurrency_limit) == (1, 1, 10, 2)
    with pytest.raises(AttributeError):
        stats.in_flight = 0  # type: ignore[misc]
    assert "rpm 1/10" in repr(budget)


async def test_a_request_larger_than_the_whole_tpm_limit_is_never_admitted():
    budget = Budget("model", "groq/small", tpm=1000)
    assert budget.too_large(3850) and budget.wait_time(3850) == float("inf")
    assert not budget.too_large(900)


async def test_reconciled_usage_counts_even_when_the_bucket_is_full():
    budget = Budget("key", "k", tpm=1000)
    bs, loop = BudgetSet(), asyncio.get_running_loop()
    times, amounts, start = [], [], loop.time()
    for _ in range(40):  # each request estimated at 100 tokens, really 300
        while (wait := bs.wait_time([budget], 100)) > 0:
            await asyncio.sleep(wait)
        await bs.take([budget], 100)
        budget.release()
        budget.charge_extra(200)
        times.append(loop.time() - start)
        amounts.append(300)
    assert _max_in_window(times, amounts) <= 1000 + 200  # at most one reconciliation arrives after its window filled


async def test_growing_the_burst_for_a_big_request_keeps_the_window_bound():
    budget = Budget("key", "k", tpm=1000)
    bs, loop = BudgetSet(), asyncio.get_running_loop()
    times, amounts, start = [], [], loop.time()
    for size in [10] * 40 + [900, 10, 10, 900]:
        while (wait := bs.wait_time([budget], size)) > 0:
            await asyncio.sleep(wait)
        await bs.take([budget], size)
        budget.release()
        times.append(loop.time() - start)
        amounts.append(size)
    assert _max_in_window(times, amounts) <= 1000
