"""Budgets and admission in virtual time (looptime): each shape admits exactly what it allows.

For every limiter shape, the admitted sequence of many waiters must equal the sequence the
shape's definition allows (no later, never sooner), computed here independently; for the
token bucket aiolimiter's AsyncLimiter(limit, 60) is the oracle. Wake-ups are never lost under
hundreds of waiters, waiters are served first come first served, and a request larger than
the bucket fails at once with the limit named.
"""

from __future__ import annotations

import asyncio
import math
import random
import warnings

import pytest
from aiolimiter import AsyncLimiter

from nbfanout.core.errors import ErrorCategory, ErrorInfo, LimitHint
from nbfanout.core.headers import RateSnapshot
from nbfanout.core.limits import Budget, BudgetSet, CapacityError, LearnedLimits, Option

pytestmark = pytest.mark.looptime


def now() -> float:
    return asyncio.get_running_loop().time()


async def admit_all(bs: BudgetSet, budgets: tuple[Budget, ...], amounts: list[float], hold_s: float = 0.0) -> list[float]:
    """Start one waiter per amount at once (in order); return each one's admission time."""
    t0 = now()
    times = [math.nan] * len(amounts)

    async def one(i: int) -> None:
        async with bs.reserve([Option(budgets, amounts[i])]):
            times[i] = round(now() - t0, 6)
            await asyncio.sleep(hold_s)

    tasks = []
    for i in range(len(amounts)):
        tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.sleep(0)  # queued in this order
    await asyncio.gather(*tasks)
    return times


def reference(shape: str, limit: float, amounts: list[float]) -> list[float]:
    """The earliest admission times a shape allows for FIFO requests arriving at t = 0 (per definition)."""
    out: list[float] = []
    t = 0.0
    if shape in ("token_bucket", "per_second"):
        cap = limit if shape == "token_bucket" else max(1.0, limit / 60)
        rate, level, last = limit / 60, cap, 0.0
        for a in amounts:
            level = min(cap, level + (t - last) * rate)
            last = t
            if level < a - 1e-9:
                t += (a - level) / rate
                level, last = a, t
            level -= a
            out.append(round(t, 6))
        return out
    log: list[tuple[float, float]] = []
    for a in amounts:
        while True:
            if shape == "sliding_window":
                used = sum(x for u, x in log if t - u < 60)
                if used + a <= limit + 1e-9:
                    break
                need = used + a - limit
                freed = 0.0
                for u, x in sorted(log):
                    if t - u < 60:
                        freed += x
                        if freed >= need - 1e-9:
                            t = u + 60
                            break
            else:  # fixed window [k*60, (k+1)*60)
                used = sum(x for u, x in log if math.floor(u / 60) == math.floor(t / 60))
                if used + a <= limit + 1e-9:
                    break
                t = (math.floor(t / 60) + 1) * 60
        log.append((t, a))
        out.append(round(t, 6))
    return out


@pytest.mark.parametrize("shape", ["token_bucket", "sliding_window", "fixed_window", "per_second"])
@pytest.mark.parametrize("limit", [3, 20, 90])
async def test_admitted_requests_equal_what_each_shape_allows(shape, limit):
    await asyncio.sleep(-now() % 60)  # start on a minute boundary, where the fixed windows of both agree
    bs = BudgetSet()
    budget = bs.budget("model", "m", rpm=limit, limiter=shape)
    n = 3 * limit + 1
    times = await admit_all(bs, (budget,), [1.0] * n)
    assert times == pytest.approx(reference(shape, limit, [1.0] * n), abs=1e-3)


@pytest.mark.parametrize("shape", ["token_bucket", "sliding_window", "fixed_window"])
async def test_tokens_of_mixed_sizes_are_admitted_exactly_and_in_arrival_order(shape):
    await asyncio.sleep(-now() % 60)
    bs = BudgetSet()
    budget = bs.budget("model", "m", tpm=6000, limiter=shape)
    sizes = [400, 900, 2500, 300, 5000] * 6
    times = await admit_all(bs, (budget,), [float(s) for s in sizes])
    assert times == pytest.approx(reference(shape, 6000, [float(s) for s in sizes]), abs=1e-4)
    assert times == sorted(times)  # first come, first served: the 5000 is never overtaken by the 300s


async def test_token_bucket_matches_aiolimiter_asynclimiter_as_the_oracle():
    bs = BudgetSet()
    budget = bs.budget("model", "m", rpm=30, limiter="token_bucket")
    ours = await admit_all(bs, (budget,), [1.0] * 75)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = AsyncLimiter(30, 60)
    t0, theirs = now(), []
    for _ in range(75):
        await oracle.acquire()
        theirs.append(round(now() - t0, 6))
    assert ours == pytest.approx(theirs, abs=1e-4)


async def test_no_wake_up_is_lost_with_hundreds_of_waiters_on_concurrency_and_rate():
    bs = BudgetSet()
    model = bs.budget("model", "m", concurrency=7, rpm=600, limiter="token_bucket")
    key = bs.budget("key", "k", concurrency=12)
    rng = random.Random(4)
    in_flight = peak = 0
    starts: list[float] = []
    ends: list[float] = []

    async def one() -> None:
        nonlocal in_flight, peak
        async with bs.reserve([Option((model, key), 0)]):
            in_flight += 1
            peak = max(peak, in_flight)
            starts.append(now())
            await asyncio.sleep(rng.uniform(0.01, 0.5))
            ends.append(now())
            in_flight -= 1

    await asyncio.gather(*(one() for _ in range(400)))
    assert len(starts) == 400 and peak == 7
    # work-conserving: the (k+7)-th request starts at the very moment the k-th one ends
    s, e = sorted(starts), sorted(ends)
    assert [round(s[k + 7] - e[k], 6) for k in range(400 - 7)] == [0.0] * (400 - 7)


async def test_a_waiter_blocked_by_one_model_does_not_hold_up_another_model_on_the_shared_key():
    bs = BudgetSet()
    slow = bs.budget("model", "slow", rpm=1, limiter="sliding_window")
    fast = bs.budget("model", "fast")
    key = bs.budget("key", "k", rpm=100, limiter="sliding_window")
    async with bs.reserve([Option((slow, key), 0)]):
        pass
    blocked = asyncio.ensure_future(admit_all(bs, (slow, key), [1.0]))
    await asyncio.sleep(0)
    assert await admit_all(bs, (fast, key), [1.0] * 5) == [0.0] * 5
    assert (await blocked) == [pytest.approx(60.0, abs=1e-3)]


async def test_a_request_larger_than_the_bucket_fails_at_once_naming_the_limit():
    bs = BudgetSet()
    budget = bs.budget("model", "groq/small", tpm=1000)
    t0 = now()
    with pytest.raises(CapacityError) as err:
        async with bs.reserve([Option((budget,), 3850)]):
            pass
    assert now() == t0 and math.isinf(err.value.wait_s)
    assert "1000 tokens per minute" in err.value.reason and "groq/small" in err.value.reason
    assert budget.too_large(3850) and not budget.too_large(900)


async def test_a_wait_longer_than_max_wait_fails_at_once_naming_the_wait():
    bs = BudgetSet()
    budget = bs.budget("model-key", "m k")
    budget.observe(RateSnapshot(limit_requests=10, remaining_requests=0, reset_requests_s=7 * 86400.0), {})
    with pytest.raises(CapacityError) as err:
        async with bs.reserve([Option((budget,), 0)], max_wait_s=600):
            pass
    assert err.value.wait_s == pytest.approx(7 * 86400.0) and "0 rpm remain" in err.value.reason


async def test_refused_requests_are_given_back_and_settlement_returns_unused_output():
    bs = BudgetSet()
    budget = bs.budget("model", "claude", rpm=10, tpm=10_000, limiter="token_bucket", tokens_counted="usage")
    async with bs.reserve([Option((budget,), 4_000)]) as r:
        r.refund()  # the provider refused it
    assert budget.statistics().rpm_used == pytest.approx(0) and budget.statistics().tpm_used == pytest.approx(0)
    async with bs.reserve([Option((budget,), 4_000)]) as r:
        r.settle(input_tokens=100, output_tokens=50, max_output=3_900, estimated_input=100)
    assert budget.statistics().tpm_used == pytest.approx(150, abs=1)
    counted = bs.budget("model", "gpt", tpm=10_000)  # counts max_tokens: nothing comes back, extra input is charged
    async with bs.reserve([Option((counted,), 4_000)]) as r:
        r.settle(input_tokens=300, output_tokens=50, max_output=3_900, estimated_input=100)
    assert counted.statistics().tpm_used == pytest.approx(4_200)


async def test_headers_set_unknown_limits_and_correct_the_count_with_what_was_sent_since():
    bs = BudgetSet()
    budget = bs.budget("model-key", "m k", probe=True)
    first = bs.reserve([Option((budget,), 0)])
    r1 = await first.__aenter__()
    # the probe: nothing else is admitted before the first response's headers arrive
    second = asyncio.ensure_future(admit_all(bs, (budget,), [0.0]))
    await asyncio.sleep(1.0)
    assert not second.done()
    budget.observe(RateSnapshot(limit_requests=30, remaining_requests=29, reset_requests_s=2.0,
                                limit_tokens=9000, remaining_tokens=8000, reset_tokens_s=6.0), r1.sent_after(budget))
    await first.__aexit__(None, None, None)
    assert (await second) == [1.0]  # admitted the moment the probe's headers arrived
    assert (budget.rpm, budget.tpm) == (30, 9000)
    assert budget.statistics().rpm_used == pytest.approx(2) and budget.statistics().tpm_used == pytest.approx(1000)


async def test_with_nothing_known_in_flight_grows_by_slow_start_until_a_concurrency_limit_is_learned():
    bs = BudgetSet()
    budget = bs.budget("model-key", "m k", ramp=True)
    t0 = now()
    starts: list[float] = []

    async def one() -> None:
        async with bs.reserve([Option((budget,), 0)]):
            starts.append(round(now() - t0, 6))
            await asyncio.sleep(1.0)
            budget.learn_success()  # the answer is in, while it still counts as in flight

    await asyncio.gather(*(one() for _ in range(20)))
    # one more per answer while the ceiling is full: 1, 2, 4, 8 per round trip, then the rest
    assert [starts.count(float(t)) for t in range(5)] == [1, 2, 4, 8, 5]
    hint = LimitHint(kind="concurrency", limit=6)
    budget.learn_refusal(ErrorInfo(ErrorCategory.RATE_LIMIT, True, "Limit 6", status=429, limit_hint=hint))
    starts.clear()
    t0 = now()
    await asyncio.gather(*(one() for _ in range(12)))
    assert [starts.count(float(t)) for t in range(2)] == [6, 6]  # the learned limit, not the ramp, is the ceiling


async def test_a_budget_with_a_known_limit_does_not_slow_start():
    bs = BudgetSet()
    budget = bs.budget("model-key", "m k", ramp=True, rpm=600)
    assert await admit_all(bs, (budget,), [0.0] * 10, hold_s=1.0) == [0.0] * 10


async def test_one_refusal_never_cuts_a_stated_limit_and_body_limits_are_adopted():
    budget = Budget("key", "groq k", tpm=30000, rpm=60, adaptive=False)
    budget.learn_refusal(ErrorInfo(ErrorCategory.RATE_LIMIT, True, "Too Many Requests", status=429, retry_after_s=1.0))
    assert (budget.rpm, budget.tpm) == (60, 30000)
    hint = LimitHint(kind="tpm", limit=6000, used=5800, requested=900)
    budget.learn_refusal(ErrorInfo(ErrorCategory.RATE_LIMIT, True, "Limit 6000", status=429, limit_hint=hint))
    assert budget.tpm == 6000 and budget.statistics().tpm_used == pytest.approx(5800)


async def test_adaptive_rate_is_cut_from_what_was_achieved_and_recovers_in_proportion():
    bs = BudgetSet()
    budget = bs.budget("key", "generic", adaptive=True)
    await admit_all(bs, (budget,), [0.0] * 40)
    budget.learn_refusal(ErrorInfo(ErrorCategory.RATE_LIMIT, True, "Too Many Requests", status=429))
    assert budget.rpm == 20  # half of the 40 it achieved in the last minute
    for _ in range(20):
        budget.learn_success()
    assert budget.rpm == 40  # one per success: doubles in a minute at the limit, not +1 per minute
    budget.learn_refusal(ErrorInfo(ErrorCategory.RATE_LIMIT, True, "slow down", status=429, retry_after_s=1.0))
    assert budget.rpm == 40  # a refusal that states its wait is honoured by waiting, not by cutting


async def test_learned_limits_persist_for_the_next_run(tmp_path):
    path = tmp_path / "state.json"
    first = BudgetSet(learned=LearnedLimits(path))
    b = first.budget("key", "openai …abcd")
    b.learn_refusal(ErrorInfo(ErrorCategory.RATE_LIMIT, True, "x", limit_hint=LimitHint("rpm", 60)))
    first.learned.save()
    second = BudgetSet(learned=LearnedLimits(path))
    assert second.budget("key", "openai …abcd").rpm == 60


async def test_statistics_are_a_frozen_snapshot_with_live_numbers():
    bs = BudgetSet()
    budget = bs.budget("provider", "openai", rpm=10, concurrency=2)
    async with bs.reserve([Option((budget,), 0)]):
        stats = budget.statistics()
        assert (stats.rpm_used, stats.in_flight, stats.rpm_limit, stats.concurrency_limit) == (1, 1, 10, 2)
        assert "rpm 1/10" in repr(budget)
    with pytest.raises(AttributeError):
        stats.in_flight = 0  # type: ignore[misc]


async def test_budgets_work_on_every_new_event_loop_without_warnings():
    """run_sync may be called any number of times: nothing in a budget is bound to an old loop."""
    bs = BudgetSet()
    budget = bs.budget("model", "m", rpm=5, limiter="token_bucket")
    await admit_all(bs, (budget,), [1.0] * 5)

    def in_a_new_loop() -> list[float]:
        return asyncio.run(admit_all(bs, (budget,), [1.0]))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop = asyncio.get_running_loop()
        assert len(await loop.run_in_executor(None, in_a_new_loop)) == 1


async def test_headers_that_refill_in_proportion_to_use_reveal_a_token_bucket():
    bs = BudgetSet()
    bucket = bs.budget("model-key", "tb k", probe=True)
    window = bs.budget("model-key", "sw k", probe=True)
    for b in (bucket, window):
        async with bs.reserve([Option((b,), 52)]) as r:
            sent = r.sent_after(b)
        reset = 60 / 360 if b is bucket else 60.0  # a bucket is full again after 1/360 of a minute
        b.observe(RateSnapshot(limit_requests=360, remaining_requests=359, reset_requests_s=reset), sent)
    assert (bucket.limiter, window.limiter) == ("token_bucket", "sliding_window")
    # the bucket's full allowance is usable at once; the window's too, but it refills only a minute later
    assert await admit_all(bs, (bucket,), [0.0] * 359) == [0.0] * 359
    configured = bs.budget("model-key", "fixed k", limiter="fixed_window", probe=True)
    configured.observe(RateSnapshot(limit_requests=360, remaining_requests=359, reset_requests_s=60 / 360), {})
    assert configured.limiter == "fixed_window"  # a configured shape is never second-guessed


def test_a_request_admitted_just_before_a_fixed_windows_edge_counts_in_the_next_window_too():
    """The provider counts at arrival: admitted at 59.5 s, it may land at 60.1 s, in the next window."""
    from nbfanout.core.shapes import FixedWindow

    w = FixedWindow(2, 60.0, now=0.0)
    w.take(1, 30.0)  # well inside the window: counts only there
    w.take(1, 59.5)  # in its last second: counts in the next window too
    assert w.wait(1, 59.9) == pytest.approx(0.1)  # this window is full
    assert w.used(60.0) == 1 and w.wait(1, 60.0) == 0 and w.wait(2, 60.0) == pytest.approx(60.0)
    w.give_back(1, 59.5, 60.5)  # refused after all: the provider counted it nowhere
    assert w.used(60.5) == 0
    w.take(1, 119.5)
    assert w.used(180.0) == 0  # carried one window only, never two


def test_a_bucket_forgets_each_of_several_requests_taken_at_one_instant_as_its_answer_comes() -> None:
    from nbfanout.core.shapes import TokenBucket

    b = TokenBucket(600, 60.0, now=0.0)
    stamps = [b.take(1, 1.0) for _ in range(5)]  # a virtual clock: five admissions at the same instant
    handles = [b.restamp(s, 1.2) for s in stamps]
    assert b._pending == 0  # every answer lifted its own request off the ceiling
    b.take(1, 1.2)
    b.give_back(1, handles[0], 1.3)  # a late settlement of an answered request forgets nobody else's
    assert b._pending == 1


def test_a_bucket_holding_one_request_at_a_time_keeps_its_rate() -> None:
    """per_second at 60 RPM holds one request: nothing can land out of order, so no ceiling is held."""
    from nbfanout.core.shapes import make_shape

    b = make_shape("per_second", "rpm", 60, 0.0)
    t, admitted = 0.0, 0
    while t < 120.0:
        w = b.wait(1, t)
        t += w
        if t >= 120.0:
            break
        b.take(1, t)
        admitted += 1
    assert admitted >= 120  # one a second (it was 80 while a 0.5-s arrival margin held each one back)


def test_a_days_log_keeps_an_entry_a_minute_and_never_lets_a_request_go_early() -> None:
    """Seen: memory grew by one entry per request for 24 h (RPD); a count per slice bounds it."""
    from nbfanout.core.shapes import make_shape

    day = make_shape("sliding_window", "rpd", 1_000_000, 0.0)
    times = [i * 0.36 for i in range(100_000)]  # ten hours of requests, one every 0.36 s
    for t in times:
        day.take(1, t)
    assert len(day._log) <= 10 * 60 + 1
    for k in (0, 999, 50_000, 99_999):  # each request still counts until a day after it was taken
        assert day.used(times[k] + 86_400 - 1e-6) >= 100_000 - k
    assert day.used(times[-1] + 86_400 + 60.0) == 0  # and is forgotten at most a minute late


async def test_a_ranked_budget_serves_its_claimants_by_rank_then_arrival_and_others_by_arrival():
    bs = BudgetSet()
    run = bs.budget("run", "r", concurrency=1)
    run.ranked = True
    shared = bs.budget("provider", "p", concurrency=1)
    for budget, expected in ((run, [2, 0, 1]), (shared, [0, 1, 2])):
        order: list[int] = []
        holder = await bs.acquire([Option((budget,), 0)])

        async def one(i: int, rank: float) -> None:
            async with bs.reserve([Option((budget,), 0)], rank=rank):
                order.append(i)

        tasks = []
        for i, rank in enumerate((0.0, 0.0, -5.0)):  # the last to arrive has the most work left
            tasks.append(asyncio.ensure_future(one(i, rank)))
            await asyncio.sleep(0)
        holder.release()
        await asyncio.gather(*tasks)
        assert order == expected, budget


def test_a_budget_says_how_many_requests_one_sliding_minute_holds():
    sliding = Budget("model", "m", rpm=300, tpm=15600, limiter="sliding_window")
    assert sliding.window_holds(52) == 300  # 15600 // 52 = 300 by tokens, 300 by requests
    assert sliding.window_holds(100) == 156  # tokens bind
    assert Budget("model", "m", rpm=300, limiter="token_bucket").window_holds(52) == math.inf
    assert Budget("model", "m").window_holds(52) == math.inf


async def _against_a_provider_bucket(budget: Budget, bs: BudgetSet, n: int, latency_s: float,
                                     foreign: dict[float, int] | None = None) -> tuple[list[float], int]:
    """``n`` requests through ``budget`` to a provider whose rpm is the sandbox's own token bucket: it
    takes each on arrival (at admission) and answers ``latency_s`` later with its headers. ``foreign``:
    at these times another client takes that many. Returns admission times and the provider's refusals."""
    from nbfanout.sandbox.limits import TokenBucket as ProviderBucket

    provider = ProviderBucket(60, 60.0, 1.0)  # 60 rpm, refilled at one per second
    pending = dict(foreign or {})
    times: list[float] = []
    refused = 0
    t0 = now()

    async def one() -> None:
        nonlocal refused
        async with bs.reserve([Option((budget,), 0)]) as r:
            t = now() - t0
            for at in [a for a in pending if a <= t]:
                provider.add(at, pending.pop(at))
            ok = provider.fits(1, t)
            if ok:
                provider.add(t, 1)
                times.append(round(t, 6))
            snap = RateSnapshot(limit_requests=60, remaining_requests=provider.remaining(t),
                                reset_requests_s=round(provider.reset_in(t), 3))
            if ok:
                await asyncio.sleep(latency_s)
            budget.observe(snap, r.sent_after(budget), refused=not ok, expected=r.expected(budget, not ok))
            if not ok:  # a 429 comes back at once, with the headers; the provider counted none of it
                refused += 1
                r.refund()

    await asyncio.gather(*(one() for _ in range(n)))
    return times, refused


async def test_headers_read_when_the_answer_comes_do_not_hold_a_token_bucket_back():
    """The provider counts a request on arrival and its headers come back with the answer, a latency
    later. Setting our level to what they say less what was sent since would drop that latency's
    refill on every answer; read against our own count at the request's admission, they cost nothing."""
    from nbfanout.core.shapes import TokenBucket

    bs = BudgetSet()
    budget = bs.budget("model-key", "m k", rpm=60, limiter="token_bucket")
    times, refused = await _against_a_provider_bucket(budget, bs, 120, latency_s=2.0)
    assert refused == 0
    assert times[:60] == [0.0] * 60  # the full bucket at once
    # then one a second, late only by the half second a burst from a full bucket holds its refill
    # (TokenBucket.ARRIVAL_S); setting the level from each answer's headers made it 62.5
    assert times[-1] == pytest.approx(60.0 + TokenBucket.ARRIVAL_S, abs=0.01)


async def test_use_the_headers_show_and_we_did_not_count_lowers_our_level_once():
    """Another client took 20 of the bucket just before we start. The first refusal's headers say so,
    and so does every answer in flight then: the shortfall counts once, so one refusal, and we fall
    behind by those 20 (20 s at one a second), not by 20 for every answer."""
    bs = BudgetSet()
    budget = bs.budget("model-key", "m k", rpm=60, limiter="token_bucket")
    times, refused = await _against_a_provider_bucket(budget, bs, 120, latency_s=2.0, foreign={0.0: 20})
    assert refused == 1  # (and not asked again here: 119 admitted)
    assert times[:40] == [0.0] * 40
    assert times[-1] == pytest.approx(79.0, abs=0.01)  # the bucket's 40 left, then 79 at one a second


def test_a_request_written_to_the_wire_holds_a_full_buckets_refill_only_briefly() -> None:
    """A burst from a full bucket holds its refill until each request may have arrived: ARRIVAL_S after
    admission, or SENT_S after its last byte was written, whichever is first."""
    from nbfanout.core.shapes import TokenBucket

    b = TokenBucket(60, 60.0, now=0.0)  # one a second
    stamps = [b.take(1, 0.0) for _ in range(60)]
    assert b.wait(1, 0.0) == pytest.approx(TokenBucket.ARRIVAL_S + 1.0)  # nothing refills while they may be on their way
    for s in stamps:
        b.sent(s, 0.05)
    assert b.wait(1, 0.05) == pytest.approx(0.05 + TokenBucket.SENT_S + 1.0 - 0.05)
    assert b.available(0.05 + TokenBucket.SENT_S + 1.0) == pytest.approx(1.0)
