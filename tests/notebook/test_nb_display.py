"""HTML / text rendering, the dashboard's state machine and the retry timeline, from real core objects."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import pytest

from nbfanout.core.errors import ErrorCategory, ErrorInfo
from nbfanout.core.events import (
    BudgetStats,
    ModelCompleted,
    ModelFailed,
    ModelQueued,
    ModelRotation,
    NoModelsAvailableEvent,
    RateLimited,
    RequestStarted,
    RetryScheduled,
    RunCompleted,
    RunStarted,
    TextDelta,
    Utilization,
)
from nbfanout.core.results import Attempt, BatchResult, FanoutResult, ModelResult
from nbfanout import render
from nbfanout.notebook.dashboard import DashboardModel, import_widgets
from nbfanout.notebook.timeline import timeline_figure, timeline_png


def _result() -> FanoutResult:
    ok = ModelResult(
        requested="openai/gpt-4.1", model="openai/gpt-4.1", ok=True,
        text="First line <b>bold</b>\n\nSecond line\nThird\nFourth", input_tokens=10, output_tokens=20, cost=0.0012,
        latency_s=1.5, attempts=(Attempt("openai/gpt-4.1", "…k1a7", 0.0, 1.5, "ok", 200),),
    )
    rotated = ModelResult(
        requested="openrouter/deepseek/deepseek-r1-0528:free", model="openrouter/deepseek/deepseek-r1-0528", ok=True,
        text="Rotated answer", latency_s=4.0,
        attempts=(Attempt("openrouter/deepseek/deepseek-r1-0528:free", "…r4d0", 0.1, 0.4, "rate_limit", 429, "upstream",
                          wait_s=0.5),
                  Attempt("openrouter/deepseek/deepseek-r1-0528", "…r4d0", 1.5, 4.0, "ok", 200)),
    )
    failed = ModelResult(
        requested="gemini/gemini-2.5-pro", model="gemini/gemini-2.5-pro", ok=False, latency_s=0.2,
        attempts=(Attempt("gemini/gemini-2.5-pro", "…g3c9", 0.0, 0.2, "quota_exhausted", 429, "<quota> gone"),),
        error=ErrorInfo(ErrorCategory.QUOTA_EXHAUSTED, False, "<quota> gone", status=429),
    )
    cancelled = ModelResult(requested="openai/o3", model="openai/o3", ok=False,
                            error=ErrorInfo(ErrorCategory.CANCELLED, False, "cancelled before an answer arrived"))
    synthesis = ModelResult(requested="openai/o4-mini", model="openai/o4-mini", ok=True, text="Combined",
                            attempts=(Attempt("openai/o4-mini", "…k2b8", 0.0, 1.0, "ok", 200),))
    return FanoutResult(prompt="Q?", results=(ok, rotated, failed, cancelled), elapsed_s=4.2, synthesis=synthesis)


def _unstyled(page: str) -> str:
    """The markup without its inline ``style`` attributes (their own test is below): structure and words."""
    return re.sub(r' style="[^"]*"', "", page)


def test_result_html_is_a_compact_escaped_table_with_the_synthesis_first() -> None:
    page = render.result_html(_result())
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;quota&gt; gone" in page and "quota_exhausted (HTTP 429)" in page
    assert page.index("synthesis (openai/o4-mini)") < page.index("openai/gpt-4.1")
    assert "First line" in page and "Fourth" not in page  # only the first lines of an answer
    assert "via openrouter/deepseek/deepseek-r1-0528" in page
    assert "2/4 succeeded" in page and "mathjax_ignore" in page
    text = render.result_text(_result())
    assert "✗ gemini/gemini-2.5-pro: quota_exhausted (HTTP 429): <quota> gone" in text


def test_batch_html_counts_rows_it_does_not_show() -> None:
    row = _result()
    batch = BatchResult(prompts=("Q?",) * 100, models=tuple(r.requested for r in row.results), rows=(row,) * 100, elapsed_s=9)
    page = render.batch_html(batch)
    assert page.count("<tr>") == render.MAX_TABLE_ROWS + 1  # + the header row
    assert "… and 100 more rows" in page


def test_results_render_as_html_in_notebooks() -> None:
    result = _result()
    assert result._repr_html_() == render.result_html(result)  # the hook in core/results.py
    batch = BatchResult(prompts=("Q?",), models=("openai/gpt-4.1",), rows=(result,))
    assert batch._repr_html_() == render.batch_html(batch)


def test_keys_are_masked_to_four_characters() -> None:
    assert render.mask_key("…k1a7") == "…k1a7"
    assert render.mask_key("sk-live-secret-9f2c") == "…9f2c"
    stats = BudgetStats("key", "openai sk-live-secret-9f2c", 500, 10, None, 0, None, 0, None, 0, 0.0)
    per_model = BudgetStats("model-key", "openai/gpt-4.1 sk-live-secret-9f2c", 500, 10, None, 0, None, 0, None, 0, 0.0)
    page = render.budgets_html([stats, per_model])
    assert "secret" not in page and "openai …9f2c" in page and "openai/gpt-4.1 …9f2c" in page


def test_model_budgets_shown_are_the_fullest_and_the_cooling() -> None:
    def model(name: str, used: float, cooldown: float = 0.0) -> BudgetStats:
        return BudgetStats("model", name, 10, used, None, 0, None, 0, None, 0, cooldown)

    budgets = [model(f"p/m{i}", i) for i in range(10)] + [model("p/idle", 0, cooldown=5.0)]
    page = render.budgets_html(budgets)
    shown = sorted((page.index(f"p/m{i}<"), i) for i in range(10) if f"p/m{i}<" in page)
    assert [i for _, i in shown] == list(range(9, 9 - render.MAX_MODEL_BUDGETS, -1))  # fullest first
    assert "p/idle" in page and "cooldown 5.0 s" in page


def test_utilization_bars_turn_amber_then_red_near_a_limit_and_show_cooldowns() -> None:
    def stats(name: str, used: float, cooldown: float = 0.0) -> BudgetStats:
        return BudgetStats("provider", name, 100, used, None, 0, None, 0, 4, 1, cooldown)

    page = render.budgets_html([stats("a", 30), stats("b", 70), stats("c", 95, cooldown=3.2)])
    assert render.GREEN in page and render.AMBER in page and render.RED in page
    assert "cooldown 3.2 s" in page
    assert page.count('role="progressbar"') == 6  # RPM and in-flight per budget
    assert ">0</span>" in page and "limit unknown" in page  # the unknown TPM limit: its count alone, no bar


def test_a_full_concurrency_limit_reads_as_in_use_not_as_a_warning() -> None:
    """Seen: "in flight 1/1" turned red for a model capped at one request at a time by design."""
    capped = BudgetStats("model", "openrouter/x:free", None, 0, None, 0, None, 0, 1, 1, 0.0)
    page = render.budgets_html([capped])
    assert render.RED not in page and render.BLUE in page and "1 / 1" in page
    half = BudgetStats("model", "openrouter/y", None, 0, None, 0, None, 0, 4, 2, 0.0)
    assert render.GREEN in render.budgets_html([half])


def test_dashboard_model_follows_the_events() -> None:
    m = DashboardModel(["openai/gpt-4.1", "openrouter/x:free", "gemini/pro"], stream=True)
    run = "r1"
    for event in (
        RunStarted(0.0, run, models=tuple(m.rows)),
        ModelQueued(0.0, run, request="0:openai/gpt-4.1", requested="openai/gpt-4.1", model="openai/gpt-4.1"),
        RequestStarted(0.1, run, request="0:openai/gpt-4.1", requested="openai/gpt-4.1", model="openai/gpt-4.1", key_id="…k1a7", attempt=1),
        TextDelta(0.2, run, request="0:openai/gpt-4.1", requested="openai/gpt-4.1", model="openai/gpt-4.1", text="Hello ", chars_so_far=6),
        RequestStarted(0.1, run, request="0:openrouter/x:free", requested="openrouter/x:free", model="openrouter/x:free", attempt=1),
        RateLimited(0.3, run, request="0:openrouter/x:free", requested="openrouter/x:free", model="openrouter/x:free", retry_after_s=3.1),
        Utilization(0.3, run, budgets=(BudgetStats("provider", "openrouter", 20, 1, None, 0, None, 0, None, 1, 0.0),
                                       BudgetStats("provider", "anthropic", 20, 1, None, 0, None, 0, None, 0, 0.0))),
    ):
        assert m.apply(event)
    assert m.rows["openai/gpt-4.1"].state == "running" and m.rows["openai/gpt-4.1"].text == "Hello "
    assert 0.1 < m.progress(m.rows["openai/gpt-4.1"]) < 0.97
    page = render.dashboard_html(m, now=0.3)
    assert "rate-limited by openrouter, retry in 3.1 s" in page  # who refused, and the wait it asked for
    assert [b.name for b in m.budgets] == ["openrouter"]  # only the providers of this run
    m.apply(ModelRotation(0.4, run, request="0:openrouter/x:free", requested="openrouter/x:free", from_model="openrouter/x:free", to_model="openrouter/x",
                          reason="rate_limit"))
    assert "rotated to openrouter/x" in render.dashboard_html(m)
    m.apply(ModelCompleted(1.0, run, request="0:openai/gpt-4.1", requested="openai/gpt-4.1", model="openai/gpt-4.1",
                           latency_s=0.9, input_tokens=5, output_tokens=7, cost=0.01))
    m.apply(ModelFailed(1.1, run, request="0:gemini/pro", requested="gemini/pro", model="gemini/pro", category="auth",
                        status=401, message="bad key"))
    assert m.rows["gemini/pro"].detail == "failed: auth (HTTP 401): bad key"
    m.apply(RunCompleted(1.2, run, cancelled=True))
    assert m.rows["openrouter/x:free"].state == "cancelled"
    totals = m.totals()
    assert (totals["done"], totals["failed"], totals["cancelled"], totals["tokens"]) == (1, 1, 1, 12)
    assert 'data-state="cancelled"' in render.dashboard_html(m)


def test_timeline_has_a_lane_per_model_and_renders_png() -> None:
    result = _result()
    fig = timeline_figure(result)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "synthesis: o4-mini" and labels[1:] == [r.requested for r in result.results]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {"ok", "rate_limit", "quota_exhausted", "wait", "rotation"} <= set(legend)
    png = timeline_png(result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_ipywidgets_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ImportError, match=r"pip install 'ipywidgets>=8.1'"):
        import_widgets()


def test_magics_import_no_widget_or_plotting_library() -> None:
    code = "import sys, nbfanout.notebook.magics; print(sorted(m for m in ('ipywidgets', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_up_to_four_answers_are_cards_side_by_side_with_full_names_and_facts() -> None:
    two = replace(_result(), results=_result().results[:2], synthesis=None)
    page = render.answers_html(two)
    assert page.count('class="nbf-card"') == 2 and "repeat(2,minmax(0,1fr))" in page
    assert "openrouter/deepseek/deepseek-r1-0528:free" in page  # the full provider/model, not "✓ deep"
    assert "via openrouter/deepseek/deepseek-r1-0528" in page and "1.50 s" in page and "$0.0012" in page
    assert "<p>First line &lt;b&gt;bold&lt;/b&gt;</p>\n<p>Second line\nThird\nFourth</p>" in _unstyled(page)  # whole, as Markdown, HTML escaped


def test_more_than_four_answers_are_rows_that_open_to_the_whole_answer_synthesis_first() -> None:
    page = render.answers_html(_result())  # four models and a synthesis
    assert page.count('<details class="nbf-answer-row"') == 5 and 'class="nbf-card"' not in page
    assert page.index("synthesis (openai/o4-mini)") < page.index("openai/gpt-4.1")
    assert "quota_exhausted (HTTP 429): &lt;quota&gt; gone" in page


def test_the_snapshot_holds_the_final_dashboard_timeline_and_answers_in_one_document() -> None:
    result = _result()
    m = DashboardModel([r.requested for r in result.results])
    m.apply(Utilization(0.1, "r", budgets=(BudgetStats("provider", "openai", 20, 1, None, 0, None, 0, None, 0, 0.0),)))
    m.finish()
    page = render.snapshot_html(m, result, timeline_png(result))
    assert page.count('<div class="nbf ') == 1  # one styled root: every part gets the styles
    assert page.count('class="nbf-row"') == 4 and "<details><summary>utilization</summary>" in _unstyled(page)
    assert 'src="data:image/png;base64,iVBOR' in page and page.count('class="nbf-answer-row"') == 5
    assert render.snapshot_html(m, None).count('class="nbf-row"') == 4  # an interrupted run without a result


def test_saved_html_carries_its_layout_inline_in_forms_a_sanitizer_keeps() -> None:
    """An untrusted notebook (and GitHub) loses the <style>: every element carries the same rules inline,
    a themed declaration first with a grey JupyterLab's sanitizer keeps (it drops any var()), then with
    the variable; the live widget, never sanitized, keeps to classes."""
    result = _result()
    m = DashboardModel([r.requested for r in result.results])
    m.finish()
    page = render.snapshot_html(m, result)
    assert page.count("<style>") == 1  # the stylesheet stays: themes, and what cannot go inline
    (name,) = re.findall(r'<td class="nbf-name nbf-cut"[^>]*>', page)[:1]
    for decl in ("text-align:left", "white-space:nowrap", "overflow:hidden", "text-overflow:ellipsis",
                 "border-bottom:1px solid rgba(128,128,128,0.35);border-bottom:1px solid var(--nbf-line,rgba(128,128,128,0.35))"):
        assert decl in name, (decl, name)
    assert re.search(r'<table class="nbf-models nbf-fixed" style="[^"]*table-layout:fixed;width:100%', page)
    cards = render.answers_html(replace(result, results=result.results[:2], synthesis=None))
    assert 'style="display:grid;gap:8px;margin:6px 0;grid-template-columns:repeat(2,minmax(0,1fr))"' in cards
    assert 'class="nbf-card-head" title="openai/gpt-4.1" style="font-weight:600;overflow:hidden;' in cards
    for style in re.findall(r' style="([^"]*)"', page + cards):
        decls = [d.partition(":") for d in style.split(";")]
        for i, (prop, _, value) in enumerate(decls):
            if "var(--nbf-" in value and value != "var(--nbf-fg)":  # the text colour: the page's where var() goes
                assert i and decls[i - 1][0] == prop and "var(" not in decls[i - 1][2], f"no fallback: {style}"
    live = render.dashboard_html(m, inline=False)
    assert "<style>" in live and 'class="nbf-name nbf-cut"' in live and ' style="padding' not in live


@pytest.mark.parametrize(("seconds", "said"), [(4.23, "4.2 s"), (59.9, "59.9 s"), (3591.1, "1 h"), (600, "10 min"),
                                               (7500, "2 h 5 min")])
def test_waits_read_as_people_say_them(seconds: float, said: str) -> None:
    assert render.duration(seconds) == said


def test_core_and_render_import_no_ui_library() -> None:
    code = ("import sys, nbfanout.core, nbfanout.core.fanout, nbfanout.render, nbfanout.progress; "
            "print(sorted(m for m in ('IPython', 'ipywidgets', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_row_held_by_a_budget_says_which_and_never_reads_as_a_retry() -> None:
    m = DashboardModel(["openai/m"])
    m.apply(NoModelsAvailableEvent(1.0, "r", request="0:openai/m", requested="openai/m", candidates=("openai/m",), wait_s=2.0,
                                   reason="3/3 in flight"))
    assert render.dashboard_html(m, now=1.5).count("waiting: 3/3 in flight (1.5 s left)") == 2  # the cell and its tooltip
    later = render.dashboard_html(m, now=3.5)
    assert "waiting: 3/3 in flight" in later and "retr" not in later


def test_a_fast_failure_beside_a_long_call_is_visible_and_labelled() -> None:
    long_ok = ModelResult(requested="p/slow", model="p/slow", ok=True, text="x", latency_s=12.0,
                          attempts=(Attempt("p/slow", "…k1", 0.0, 12.0, "ok", 200),))
    quick_429 = ModelResult(requested="p/quick", model="p/quick", ok=True, text="y", latency_s=2.0,
                            attempts=(Attempt("p/quick", "…k2", 0.0, 0.005, "rate_limit", 429, wait_s=1.0),
                                      Attempt("p/quick", "…k2", 1.0, 2.0, "ok", 200)))
    fig = timeline_figure(FanoutResult(prompt="Q", results=(long_ok, quick_429), elapsed_s=12.0))
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_height() == 0.6]
    assert min(b.get_width() for b in bars) >= 12.0 * 0.008 * 0.99
    assert "rate_limit" in [t.get_text().strip() for t in ax.texts]


def test_a_plan_renders_per_model_the_same_in_html_and_text() -> None:
    from nbfanout.core.plan import Plan, PlanRow

    def row(model: str, key: str | None, cost: float | None, fits: bool = True) -> PlanRow:
        return PlanRow(model, model, model.split("/")[0], key, () if key else ("GEMINI_API_KEY",), 20, 400, 8000, fits, cost)

    plan = Plan(rows=(row("openai/gpt-4.1", "sk-live-secret-9f2c", 0.001), row("openai/gpt-4.1", "sk-live-secret-9f2c", 0.002),
                      row("gemini/pro", None, None, fits=False)), lower_bound_s=3591.1, projected_cost=0.003)
    text, page = render.plan_text(plan), plan._repr_html_()
    lines = {line.split()[0]: line for line in text.splitlines()}
    assert "2 request(s)" in lines["openai/gpt-4.1"] and "~40+400 tokens" in lines["openai/gpt-4.1"]
    assert "NO KEY (set GEMINI_API_KEY)" in lines["gemini/pro"] and "1 DO NOT FIT 8000" in lines["gemini/pro"]
    assert "unpriced" in lines["gemini/pro"] and "secret" not in text + page
    assert "at least 1 h by the known limits" in text and "at least 1 h by the known limits" in page
    assert page.count("<tr>") == 1 + 2  # the header and one row per model, not per request


def test_a_batch_row_counts_its_models_requests_with_rate_and_eta() -> None:
    m = DashboardModel()  # a view made before the run: it learns the models from RunStarted
    m.apply(RunStarted(0.0, "r", models=("openai/a", "openai/b"), prompts=3))
    for i in range(3):
        m.apply(ModelQueued(0.0, "r", request=f"{i}:openai/a", requested="openai/a", model="openai/a"))
        m.apply(RequestStarted(0.1, "r", request=f"{i}:openai/a", requested="openai/a", model="openai/a", attempt=1))
    m.apply(ModelCompleted(1.0, "r", request="0:openai/a", requested="openai/a", model="openai/a", latency_s=0.9,
                           input_tokens=5, output_tokens=7, cost=0.01))
    m.apply(ModelFailed(1.1, "r", request="1:openai/a", requested="openai/a", model="openai/a", category="auth",
                        status=401, message="bad key"))
    row = m.rows["openai/a"]
    assert (row.answered, row.failed, len(row.in_flight), row.state) == (1, 1, 1, "running")
    page = render.dashboard_html(m)
    assert "1/3 answered · 1 failed · 1 in flight" in page and "ETA" in page
    assert "0/3 answered · 3 queued" in page  # openai/b: nothing sent yet
    assert m.totals()["total"] == 6 and m.totals()["done"] == 1  # requests, not models
    m.apply(ModelCompleted(2.0, "r", request="2:openai/a", requested="openai/a", model="openai/a", latency_s=1.9,
                           input_tokens=5, output_tokens=7, cost=0.01))
    assert row.state == "done" and row.cost == pytest.approx(0.02)
    assert "2/3 answered · 1 failed · last: auth (HTTP 401): bad key" in render.dashboard_html(m)
    assert m.rows["openai/b"].state == "queued" and m.progress(row) == 1.0
    m.apply(NoModelsAvailableEvent(2.1, "r", request="0:openai/b", requested="openai/b", wait_s=0.0,
                                   reason="this run: 16/16 in flight"))
    assert "0/3 answered · 3 queued · waiting: this run: 16/16 in flight" in render.dashboard_html(m)  # behind what


def test_a_retry_says_whether_the_provider_asked_for_the_wait_or_it_is_our_backoff() -> None:
    """Seen: a model honouring a provider's 2-s retry-after read like any other wait."""
    m = DashboardModel(["openai/m", "gemini/g"])
    m.apply(RetryScheduled(1.0, "r", request="0:openai/m", requested="openai/m", model="openai/m", attempt=1,
                           wait_s=2.0, category="rate_limit", reason="provider asked"))
    m.apply(RetryScheduled(1.0, "r", request="0:gemini/g", requested="gemini/g", model="gemini/g", attempt=2,
                           wait_s=1.5, category="server_error", reason="backoff"))
    page = render.dashboard_html(m, now=1.5)
    assert "openai asked to wait (rate_limit), retry in 1.5 s" in page
    assert "server_error on attempt 2, backing off, retry in 1.0 s" in page


def test_a_row_waiting_for_a_slot_without_a_known_end_renders() -> None:
    m = DashboardModel(["openai/m"])
    m.apply(NoModelsAvailableEvent(1.0, "r", request="0:openai/m", requested="openai/m", candidates=("openai/m",), wait_s=float("inf"),
                                   reason="3/3 in flight"))
    assert "waiting: 3/3 in flight" in render.dashboard_html(m, now=2.0)  # it raised OverflowError
    assert render.duration(float("inf")) == "–"


def test_a_synthesis_adds_no_row_of_its_own_beyond_the_synthesis() -> None:
    m = DashboardModel(["openai/a", "openai/b"])
    m.apply(RunStarted(0.0, "r", models=("openai/a", "openai/b")))
    m.apply(RunStarted(1.0, "s", models=("openai/x",), purpose="synthesis"))  # told by the events, not by a call
    m.apply(RequestStarted(1.1, "s", request="0:openai/x", requested="openai/x", purpose="synthesis", model="openai/x"))
    assert list(m.rows) == ["openai/a", "openai/b"] and m.totals()["total"] == 3
    assert m.synthesis is not None and m.synthesis.state == "running"
    # judging an answer is a request of its own, not a change to the answer's row
    m.apply(ModelFailed(1.2, "r", request="0:openai/j/judge:openai/a#1", requested="openai/j", purpose="judge",
                        model="openai/j", category="auth"))
    assert m.rows["openai/a"].state != "failed"


def test_a_second_run_in_one_watch_view_starts_its_rows_afresh() -> None:
    m = DashboardModel()
    m.apply(RunStarted(0.0, "r1", models=("openai/a",), prompts=2))
    for i in range(2):
        m.apply(ModelCompleted(0.5, "r1", request=f"{i}:openai/a", requested="openai/a", model="openai/a", latency_s=0.5))
    assert m.rows["openai/a"].state == "done"
    m.apply(RunStarted(1.0, "r2", models=("openai/a",), prompts=5))
    m.apply(ModelCompleted(1.5, "r2", request="0:openai/a", requested="openai/a", model="openai/a", latency_s=0.5))
    row = m.rows["openai/a"]
    assert (row.answered, row.total, row.state) == (1, 5, "queued")


def test_answers_are_rendered_as_markdown_and_raw_html_in_them_is_shown_not_run() -> None:
    text = "## Plan\n**Bold** and `code`:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n<script>alert(1)</script> <img src=x onerror=y>"
    answer = ModelResult(requested="openai/gpt-4.1", model="openai/gpt-4.1", ok=True, text=text)
    page = _unstyled(render.answers_html(FanoutResult(prompt="Q?", results=(answer,))))
    assert "<strong>Bold</strong>" in page and "<code>code</code>" in page and "<h2>Plan</h2>" in page
    assert "<td>1</td>" in page  # tables, as models write them
    assert "<script>" not in page and "&lt;script&gt;" in page and "<img src=x" not in page


def test_models_html_groups_models_under_their_provider_with_the_key_or_the_variable_to_set() -> None:
    import re

    from nbfanout.config import load_config

    config = load_config({"providers": {"openai": {"api_key": "sk-test-models-html-7d2e"}}}, env={})
    page = render.models_html(config, provider=None)
    order = re.findall(r'<tr class="nbf-provider" data-provider="([^"]+)"|<tr data-model="([^"]+)"', page)
    current = None
    for provider, model in order:  # every model row sits under its own provider's heading
        if provider:
            current = provider
        else:
            assert model.split("/", 1)[0] == current, model
    providers = [p for p, _ in order if p]
    assert len(providers) == len(set(providers)) == len({m.provider for m in config.models.values()})
    assert "1 key(s): …7d2e" in page and "no key: set GEMINI_API_KEY" in page and "sk-test" not in page
