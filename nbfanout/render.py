"""HTML and plain-text renderings of results, plans, budgets and the dashboard's state.

Pure functions of plain data (no widgets, no IPython), so the same markup serves the live
dashboard, the static copy a saved notebook keeps, ``FanoutResult._repr_html_`` and the
plain-text fallback outside a kernel. Every string that came from a provider or a user is
escaped; API keys appear only as ``…`` plus their last four characters.
"""

from __future__ import annotations

import functools
import html
import math
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from nbfanout._secrets import mask
from nbfanout.progress import FINAL_STATES

if TYPE_CHECKING:
    from nbfanout.config import Config
    from nbfanout.core.batch import BatchJob
    from nbfanout.core.events import BudgetStats
    from nbfanout.core.fanout import Plan
    from nbfanout.core.results import BatchResult, FanoutResult, ModelResult
    from nbfanout.progress import BatchRow, DashboardModel, Row, SavedMap

__all__ = [
    "answer_preview",
    "answers_html",
    "batch_html",
    "batch_line",
    "batch_result_text",
    "batches_html",
    "batches_text",
    "budgets_html",
    "budgets_text",
    "config_text",
    "dashboard_html",
    "duration",
    "elapsed_text",
    "mask_key",
    "models_html",
    "models_rows",
    "models_text",
    "plan_html",
    "plan_rows",
    "plan_text",
    "result_html",
    "result_text",
    "saved_batches_html",
    "saved_batches_text",
    "short_batch_id",
    "snapshot_html",
    "status_html",
]

GREEN, AMBER, RED, BLUE, GREY = "#2e9d48", "#e69500", "#d9363e", "#2f74c0", "#9e9e9e"
PURPLE = "#7b61c9"  # with the provider's batch engine: working, but not on our connections
STATE_COLOURS = {
    "queued": GREY, "waiting": AMBER, "running": BLUE, "rate_limited": AMBER, "retrying": AMBER,
    "in_batch": PURPLE, "done": GREEN, "failed": RED, "cancelled": GREY,
}
#: A provider batch's state (``BatchRow.state``) as a colour.
BATCH_COLOURS = {"running": PURPLE, "ended": BLUE, "fetched": GREEN, "failed": RED}
MAX_TABLE_ROWS = 300  # a batch of thousands still renders quickly; the rest is counted
MAX_MODEL_BUDGETS = 6  # model budgets shown besides providers and keys: the fullest ones

# Every rule is scoped under ``div.nbf.nbf``: JupyterLab right-aligns rendered tables with
# ``:not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon td`` (two classes and an element), which a
# plain ``.nbf td`` loses to. The dashboard's tables have fixed column widths, so no column moves
# while a run updates them, and a long name or message ends in an ellipsis (its ``title`` has it all).
# Colours come from the frontend's theme: JupyterLab's --jp-* variables (light or dark), else VS Code's
# --vscode-* ones (its notebook renderer sets those, light or dark), else light defaults.
_VARIABLES = """div.nbf.nbf{--nbf-fg:var(--jp-ui-font-color1,var(--vscode-editor-foreground,#222));
  --nbf-fg2:var(--jp-ui-font-color2,var(--vscode-descriptionForeground,#666));
  --nbf-line:var(--jp-border-color2,var(--vscode-editorWidget-border,#e0e0e0));
  --nbf-track:var(--jp-layout-color3,var(--vscode-editorWidget-background,#e6e6e6));
  --nbf-code:var(--jp-layout-color2,var(--vscode-textCodeBlock-background,#f5f5f5))}"""

_CELL = ("padding:2px 8px;text-align:left;vertical-align:top;line-height:1.4;border:none;"
         "border-bottom:1px solid var(--nbf-line);white-space:nowrap")
#: The one table of rules: (selectors, declarations). The ``<style>`` block is made from it, and so is
#: every element's inline ``style`` (see ``_inline_styles``). Selectors are a tag and/or classes, at
#: most inside ``.nbf-md`` (an answer's Markdown); later rules win, as they do in the stylesheet.
_RULES: tuple[tuple[str, str], ...] = (
    (".nbf", "font-family:var(--jp-ui-font-family,var(--vscode-font-family,system-ui,sans-serif));font-size:12px;"
             "color:var(--nbf-fg);max-width:100%;overflow-x:auto"),
    ("table", "border-collapse:collapse;margin:4px 0;border:none;color:inherit;font-size:inherit"),
    ("th,td", _CELL),
    ("td.num,th.num", "text-align:right;font-variant-numeric:tabular-nums"),
    ("table.nbf-fixed", "table-layout:fixed;width:100%;max-width:1200px"),
    (".nbf-cut", "overflow:hidden;text-overflow:ellipsis"),
    ("td.nbf-answer", "white-space:normal;min-width:16em"),
    (".nbf-head", "font-weight:600;margin:2px 0 6px 0"),
    (".nbf-bar", "display:inline-block;width:110px;height:10px;background:var(--nbf-track);border-radius:3px;"
                 "overflow:hidden;vertical-align:middle"),
    (".nbf-bar.small", "width:72px;height:8px"),
    (".nbf-fill", "height:100%"),
    (".nbf-msg,.nbf-muted", "color:var(--nbf-fg2)"),
    (".nbf-badge", "display:inline-block;padding:0 4px;border-radius:3px;color:#fff;font-size:11px"),
    ("summary", "cursor:pointer;margin:4px 0;color:var(--nbf-fg2)"),
    (".nbf-grid", "display:grid;gap:8px;margin:6px 0"),
    (".nbf-card", "border:1px solid var(--nbf-line);border-radius:4px;padding:6px 8px;min-width:0"),
    (".nbf-card-head", "font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap"),
    (".nbf-text", "white-space:pre-wrap;overflow-wrap:anywhere;margin:4px 0 0 0;font-family:inherit;max-height:32em;"
                  "overflow-y:auto"),
    (".nbf-md", "white-space:normal"),
    (".nbf-md p,.nbf-md ul,.nbf-md ol,.nbf-md pre", "margin:4px 0"),
    (".nbf-md h1,.nbf-md h2,.nbf-md h3,.nbf-md h4", "font-size:13px;margin:6px 0 2px 0"),
    (".nbf-md pre", "background:var(--nbf-code);padding:4px 6px;overflow-x:auto;white-space:pre"),
    (".nbf-md code", "font-family:var(--jp-code-font-family,monospace);font-size:11px"),
    (".nbf-md td,.nbf-md th", "white-space:normal"),
    ("img.nbf-timeline", "max-width:100%;height:auto"),
)
#: What only a stylesheet can say, none of it needed for the layout: the theme's variables, and a
#: pseudo-class (``!important`` because the answer's first paragraph carries an inline margin).
_STYLESHEET_ONLY = _VARIABLES + "\ndiv.nbf.nbf .nbf-md>:first-child{margin-top:0!important}"


def _stylesheet() -> str:
    scoped = ("\n".join(",".join("div.nbf.nbf" if s == ".nbf" else f"div.nbf.nbf {s}" for s in sel.split(","))
                        + "{" + decls + "}" for sel, decls in _RULES))
    return f"<style>\n{_STYLESHEET_ONLY}\n{scoped}\n</style>"


_CSS = _stylesheet()

# --- inline styles: the same rules again on every element, for pages that strip <style> ---------------
# JupyterLab sanitizes the HTML output of a notebook its user did not run (one received from a teammate):
# <style> goes, ``style`` attributes stay, but each declaration is checked against a per-property regex
# (jupyterlab/jupyterlab packages/apputils/src/sanitizer.ts, ``allowedStyles``; 4.x adds flex and grid).
# Checked in JupyterLab 4.6 (tests/notebook/test_nb_browser.py opens such a notebook): widths in px/%/em,
# table-layout, overflow(-x/-y), text-overflow, white-space, text-align, vertical-align, display (incl.
# inline-block, grid), gap, grid-template-columns with repeat(minmax()), padding, margin, border and
# border-radius, hex/rgb()/rgba() colours, font-size in px, font-weight survive; dropped are every value
# with var(), custom properties, the keyword inherit, font-variant-numeric and overflow-wrap:anywhere
# (as are data-*, role, aria-* and id attributes). GitHub's renderer strips <style> too (jupyter/nbviewer#450,
# pandas-dev/pandas#33076). So a themed declaration goes inline twice: first with a grey that reads on
# light and dark pages, which a sanitizer keeps, then with the variable (its own fallback that grey), which
# wins wherever var() is let through. The text colour itself has no such grey: without the variable it
# is the page's own, the theme's.
_NEUTRAL = {"--nbf-fg2": "#808080", "--nbf-line": "rgba(128,128,128,0.35)", "--nbf-track": "rgba(128,128,128,0.25)",
            "--nbf-code": "rgba(128,128,128,0.12)"}
#: Declarations JupyterLab's sanitizer rejects, preceded inline by the nearest one it accepts.
_ACCEPTED = {"overflow-wrap:anywhere": "overflow-wrap:break-word",
             "font-family:var(--jp-code-font-family,monospace)": "font-family:monospace"}
_THEME_VAR = re.compile(r"var\((--nbf-[a-z0-9]+)\)")
_TAG = re.compile(r"<(/?)([a-z][a-z0-9]*)([^<>]*)>")  # our markup escapes every < and > in text and values
_CLASS = re.compile(r'\sclass="([^"]*)"')
_STYLE = re.compile(r'\sstyle="([^"]*)"')


def _matchers() -> list[tuple[bool, str | None, frozenset[str], tuple[tuple[str, str], ...]]]:
    """The rules as (inside .nbf-md only, tag or None, classes, declarations), in the table's order."""
    out = []
    for selectors, decls in _RULES:
        pairs = tuple((prop, value) for prop, _, value in (d.partition(":") for d in decls.split(";")))
        for selector in selectors.split(","):
            context, _, compound = selector.rpartition(" ")
            tag, *classes = compound.split(".")
            out.append((context == ".nbf-md", tag or None, frozenset(classes), pairs))
    return out


_MATCHERS = _matchers()


@functools.lru_cache(maxsize=512)
def _declared(tag: str, classes: str, in_md: bool) -> tuple[tuple[str, str], ...]:
    """The declarations the rules give one element, later rules overriding earlier ones."""
    have = set(classes.split())
    merged: dict[str, str] = {}
    for md_only, rule_tag, rule_classes, pairs in _MATCHERS:
        if (in_md or not md_only) and rule_tag in (None, tag) and rule_classes <= have:
            merged.update(pairs)
    return tuple(merged.items())


@functools.lru_cache(maxsize=512)
def _accepted(prop: str, value: str) -> str:
    """One declaration as it goes inline: after a fallback a sanitizer keeps, when it would drop it."""
    decl = f"{prop}:{value}"
    if decl in _ACCEPTED:
        return f"{_ACCEPTED[decl]};{decl}"
    found = _THEME_VAR.search(value)
    if found and found.group(1) in _NEUTRAL:
        grey = _NEUTRAL[found.group(1)]
        return f"{prop}:{value.replace(found.group(0), grey)};{prop}:{value.replace(found.group(0), f'var({found.group(1)},{grey})')}"
    return decl


def _inline_styles(markup: str) -> str:
    """Every start tag of ``markup`` gets the declarations ``_RULES`` give it as its ``style`` (its own
    ``style`` wins over them), so the HTML looks the same where <style> is stripped.

    Generated here from the table rather than by css-inline (a good library: Rust, wheels everywhere):
    css-inline keeps one declaration per property (``border:<grey>;border:var(...)`` becomes the var()
    alone, which the sanitizer then drops, so a fallback cannot be said) and re-parses the fragment
    (it adds ``<tbody>``). Our own markup needs only tags, classes and one context (inside an answer's
    Markdown, which has no ``<div>`` of its own: the first ``</div>`` after ``.nbf-md`` opens ends it).
    """
    in_md = False

    def stamp(m: re.Match[str]) -> str:
        nonlocal in_md
        closing, tag, attrs = m.groups()
        if closing:
            if tag == "div":
                in_md = False
            return m.group(0)
        found = _CLASS.search(attrs)
        classes = found.group(1) if found else ""
        declared = _declared(tag, classes, in_md)
        if "nbf-md" in classes.split():
            in_md = True
        if not declared:
            return m.group(0)
        slash = "/" if attrs.endswith("/") else ""  # Markdown's <br />, <hr />
        attrs = attrs[:-1].rstrip() if slash else attrs
        own = _STYLE.search(attrs)
        merged = dict(declared)
        if own:
            merged.update((p.strip(), v.strip()) for p, _, v in (d.partition(":") for d in own.group(1).split(";") if d))
            attrs = attrs[:own.start()] + attrs[own.end():]
        style = ";".join(_accepted(p, v) for p, v in merged.items())
        return f'<{tag}{attrs} style="{style}"{slash}>'

    return _TAG.sub(stamp, markup)


_ROOT = '<div class="nbf tex2jax_ignore mathjax_ignore">'
_ROOT_INLINE = _inline_styles(_ROOT)


# --- small formatting helpers ---------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _wrap(body: str, *, inline: bool = True) -> str:
    """One styled root; mathjax_ignore because answers and costs hold "$", which JupyterLab would typeset as maths.

    ``inline``: the rules also as each element's ``style``, for HTML a notebook file keeps (a sanitizer
    or GitHub may strip the <style>); the live widget, which nothing sanitizes, does without."""
    if not inline:
        return f"{_ROOT}{_CSS}{body}</div>"
    return f"{_ROOT_INLINE}{_CSS}{_inline_styles(body)}</div>"


def mask_key(key_id: str | None) -> str:
    """A key shown as ``…`` + its last four characters, whatever form it arrived in (``_secrets.mask``)."""
    return mask(key_id)


def _budget_label(stats: BudgetStats) -> str:
    """A budget's name with any key masked (``provider <key id>``, ``provider/model <key id>``)."""
    if stats.scope in ("key", "model-key"):
        owner, _, key = stats.name.rpartition(" ")
        return f"{owner} {mask_key(key)}" if owner else stats.name
    return stats.name


def _fullest(stats: BudgetStats) -> float | None:
    """How close a budget is to its nearest known limit (0..1+), None when no limit is known."""
    known = [used / limit for used, limit in ((stats.rpm_used, stats.rpm_limit), (stats.tpm_used, stats.tpm_limit),
                                              (float(stats.in_flight), stats.concurrency_limit)) if limit]
    return max(known) if known else None


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def duration(seconds: float) -> str:
    """A wait as people say it: "4.2 s", "12 min", "2 h 5 min" (not "3591.1 s"); "–" for no known end."""
    if not math.isfinite(seconds):
        return "–"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h" + (f" {minutes % 60} min" if minutes % 60 else "")


def elapsed_text(seconds: float) -> str:
    """Time gone by, to the second past a minute: "4.2 s", "2 min 5 s", "3 h 12 min", "1 d 2 h"."""
    if not math.isfinite(seconds):
        return "–"
    if seconds < 59.95:
        return f"{max(seconds, 0.0):.1f} s"
    whole = round(seconds)
    if whole < 3600:
        m, sec = divmod(whole, 60)
        return f"{m} min" + (f" {sec} s" if sec else "")
    if whole < 86400:
        h, m = divmod(whole // 60, 60)
        return f"{h} h" + (f" {m} min" if m else "")
    d, h = divmod(whole // 3600, 24)
    return f"{d} d" + (f" {h} h" if h else "")


def short_batch_id(batch_id: str, keep: int = 4) -> str:
    """A provider's batch id shortened for a column: its prefix, then the first and last ``keep``
    characters ("batch_40e1…cea2", "msgbatch_01gm…KyLf", "batches/e53k…a9ug"); the title has it whole."""
    if not batch_id:
        return "–"
    cut = max(batch_id.rfind("/"), batch_id.rfind("_")) + 1
    head, rest = batch_id[:cut], batch_id[cut:]
    if len(head) > 12:  # a long path of its own: only the last part's prefix matters
        head = "…" + head[-8:]
    if len(rest) <= 2 * keep + 1:
        return head + rest
    return f"{head}{rest[:keep]}…{rest[-keep:]}"


def _cost(value: float | None) -> str:
    if value is None:
        return "–"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def _unpriced(result: FanoutResult | BatchResult) -> str:
    """" + 2 unpriced" when answers without a known price are left out of a total, else nothing."""
    n = len(result.unpriced)
    return f" + {n} unpriced" if n else ""


def _count(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def answer_preview(text: str, lines: int = 3, width: int = 160) -> str:
    """The first non-empty lines of an answer, shortened: enough to tell answers apart in a table."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][:lines]
    out = " ⏎ ".join(kept)
    return out if len(out) <= width else out[: width - 1] + "…"


def _bar(fraction: float | None, colour: str, *, small: bool = False, label: str = "") -> str:
    """A progress bar as two divs; ``role=progressbar`` so pages and tests can find it."""
    pct = 0 if fraction is None else max(0.0, min(1.0, fraction)) * 100
    cls = "nbf-bar small" if small else "nbf-bar"
    title = f' title="{_e(label)}"' if label else ""
    return (f'<div class="{cls}" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{pct:.0f}"{title}>'
            f'<div class="nbf-fill" style="width:{pct:.1f}%;background:{colour}"></div></div>')


def _level_colour(fraction: float | None, *, slots: bool = False) -> str:
    """Green well inside a limit, amber approaching it, red at it; grey when the limit is unknown.

    ``slots``: a concurrency limit, where every slot in use is the point (a model capped at one
    request at a time is working as meant with 1 / 1), so full reads blue, never red.
    """
    if fraction is None:
        return GREY
    if slots:
        return GREEN if fraction < 1.0 else BLUE
    return GREEN if fraction < 0.6 else AMBER if fraction < 0.85 else RED


def _failure(r: ModelResult) -> str:
    if r.error is None:
        return "failed"
    status = f" (HTTP {r.error.status})" if r.error.status else ""
    return f"{r.error.category.value}{status}: {r.error.message}"


# --- results --------------------------------------------------------------------------------------
def _result_rows(results: Iterable[tuple[str, ModelResult]], with_prompt: bool, scores: dict[Any, Any] | None = None) -> str:
    out = []
    for label, r in results:
        badge = ("ok", GREEN) if r.ok else (r.category or "failed", GREY if r.category == "cancelled" else RED)
        state = f'<span class="nbf-badge" style="background:{badge[1]}">{_e(badge[0])}</span>'
        via = f'<br><span class="nbf-muted">{_e(_via(r))}</span>' if _via(r) else ""
        answer = _e(answer_preview(r.text)) if r.ok else f'<span class="nbf-msg">{_e(_failure(r))}</span>'
        prompt_cell = f'<td class="num">{r.prompt_index}</td>' if with_prompt else ""
        score_cell = ""
        if scores is not None:
            s = scores.get((r.prompt_index, r.requested))
            score_cell = f'<td class="num">{"–" if s is None or s.score is None else f"{s.score:g}"}</td>'
        out.append(
            f"<tr>{prompt_cell}<td>{_e(label)}{via}</td><td>{state}</td><td class=\"num\">{len(r.attempts)}</td>"
            f'<td class="num">{_seconds(r.latency_s)}</td><td class="num">{_count(r.tokens)}</td>'
            f'<td class="num">{_cost(r.cost)}</td>{score_cell}<td class="nbf-answer">{answer}</td></tr>'
        )
    return "".join(out)


def _answer_pairs(result: FanoutResult) -> list[tuple[str, ModelResult]]:
    """(label, result) per answer, the synthesis first: the order every view of a FanoutResult shows."""
    pairs: list[tuple[str, ModelResult]] = []
    if result.synthesis is not None:
        pairs.append((f"synthesis ({result.synthesis.requested})", result.synthesis))
    return pairs + [(r.requested, r) for r in result.results]


def result_html(result: FanoutResult) -> str:
    """A compact table of one FanoutResult: model, state, attempts, latency, tokens, cost, first lines."""
    ok = len(result.succeeded)
    head = (f'<div class="nbf-head">{ok}/{len(result.results)} succeeded in {_seconds(result.elapsed_s)} · '
            f"{_count(result.total_tokens)} tokens · {_cost(result.total_cost)}{_unpriced(result)}</div>")
    pairs = _answer_pairs(result)
    table = ("<table><thead><tr><th>model</th><th>state</th><th class=\"num\">tries</th><th class=\"num\">latency</th>"
             "<th class=\"num\">tokens</th><th class=\"num\">cost</th><th>answer</th></tr></thead><tbody>"
             + _result_rows(pairs, False) + "</tbody></table>")
    return _wrap(head + table)


def batch_html(batch: BatchResult) -> str:
    """A compact table of a BatchResult: one row per (prompt, model), scores when judged."""
    return _wrap(_batch_body(batch))


def _batch_body(batch: BatchResult) -> str:
    results = list(batch.results)
    ok = sum(1 for r in results if r.ok)
    head = (f'<div class="nbf-head">{len(batch.prompts)} prompts × {len(batch.models)} models: {ok}/{len(results)} '
            f"succeeded in {_seconds(batch.elapsed_s)}{_by_batch(results)} · {_count(sum(r.tokens for r in results))} "
            f"tokens · {_cost(batch.total_cost)}{_unpriced(batch)}</div>")
    scores = batch.scores or None
    shown = results[:MAX_TABLE_ROWS]
    more = (f'<div class="nbf-muted">… and {len(results) - len(shown)} more rows (to_dataframe() has them all)</div>'
            if len(results) > len(shown) else "")
    score_head = '<th class="num">score</th>' if scores is not None else ""
    table = ("<table><thead><tr><th class=\"num\">prompt</th><th>model</th><th>state</th><th class=\"num\">tries</th>"
             "<th class=\"num\">latency</th><th class=\"num\">tokens</th><th class=\"num\">cost</th>"
             f"{score_head}<th>answer</th></tr></thead><tbody>"
             + _result_rows(((r.requested, r) for r in shown), True, scores) + "</tbody></table>")
    return head + table + more


def _by_batch(results: Sequence[ModelResult]) -> str:
    """" (40 by batch)" when some answers came through a provider's batch API, else nothing."""
    n = sum(r.via == "batch" for r in results)
    return f" ({n:,} by batch)" if n else ""


def batch_result_text(batch: BatchResult, *, failures: int = 10) -> str:
    """A BatchResult as plain text: a line per model (answered, failed, how, tokens, cost), the first
    failures, and the totals; what ``%fanout resume`` prints outside a notebook."""
    results = list(batch.results)
    width = max([len(m) for m in batch.models] + [5])
    lines = [f"{'model':<{width}}  {'answered':>9} {'failed':>6}  {'via':<10} {'tokens':>9} {'cost':>9}"]
    for name in batch.models:
        mine = [r for r in results if r.requested == name]
        ok = sum(r.ok for r in mine)
        vias = "+".join(sorted({r.via for r in mine})) or "–"
        cost = sum(r.cost or 0.0 for r in mine)
        lines.append(f"{name:<{width}}  {f'{ok}/{len(mine)}':>9} {len(mine) - ok:>6}  {vias:<10} "
                     f"{sum(r.tokens for r in mine):>9,} {_cost(cost):>9}")
    failed = [r for r in results if not r.ok]
    for r in failed[:failures]:
        lines.append(f"  ✗ prompt {r.prompt_index} × {r.requested}: {_failure(r)}")
    if len(failed) > failures:
        lines.append(f"  … and {len(failed) - failures} more failures")
    ok = len(results) - len(failed)
    lines.append(f"{len(batch.prompts)} prompts × {len(batch.models)} models: {ok}/{len(results)} succeeded in "
                 f"{_seconds(batch.elapsed_s)}{_by_batch(results)}; {sum(r.tokens for r in results):,} tokens; "
                 f"{_cost(batch.total_cost)}{_unpriced(batch)}")
    return "\n".join(lines)


# --- saved batch maps (``nbfanout batches``, ``%fanout batches``) ------------------------------------
def _n(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def _ago(epoch: float, now: float) -> str:
    return f"{elapsed_text(now - epoch)} ago" if epoch else "–"


def _job_counts(j: BatchJob) -> str:
    return f"{j.succeeded:,}/{j.total:,} ✓" + (f" · {j.failed:,} ✗" if j.failed else "")


def _map_state(entry: SavedMap) -> str:
    if entry.error:
        return "unreadable"
    if entry.done:
        return "done"
    return f"{entry.open_jobs} of {len(entry.jobs)} batches open" if entry.open_jobs else "to resume"


def saved_batches_text(entries: Sequence[SavedMap], *, resume: str = "nbfanout resume",
                       now: float | None = None) -> str:
    """The state files batch maps left, each with its batches as last seen (or as the providers say
    now): model, id, status, counts, state, age and message; and how to pick up the unfinished ones."""
    import time

    now = time.time() if now is None else now
    if not entries:
        return "no batch state files (map(..., via='batch') writes one per map)"
    lines: list[str] = []
    for entry in entries:
        if entry.error:
            lines.append(f"{entry.path}  unreadable: {entry.error}")
            continue
        asked = "status asked now" if entry.asked else "status as saved"
        lines.append(f"{entry.path}  {_n(entry.prompts, 'prompt')} × {_n(len(entry.models), 'model')} · created "
                     f"{_ago(entry.created_at, now)} · {_map_state(entry)} · {asked}")
        width = max([len(j.model) for j in entry.jobs] + [5])
        for j in entry.jobs:
            message = f" — {j.message}" if j.message else ""
            lines.append(f"  {j.model:<{width}}  {short_batch_id(j.batch_id):<18} {j.status or j.state:<22} "
                         f"{_job_counts(j):<16} {j.state:<8} {_ago(j.created_at, now)}{message}")
        if not entry.jobs:
            lines.append("  no batch created yet")
        if entry.note:
            lines.append(f"  ({entry.note})")
        if not entry.done:
            lines.append(f"  pick it up: {resume} {entry.path}")
    return "\n".join(lines)


def saved_batches_html(entries: Sequence[SavedMap], *, resume: str = "%fanout resume",
                       now: float | None = None) -> str:
    """The same listing as tables with fixed columns, one per state file."""
    import time

    now = time.time() if now is None else now
    if not entries:
        return _wrap('<div class="nbf-muted">no batch state files (map(..., via=\'batch\') writes one per map)</div>')
    parts = []
    for entry in entries:
        path = _e(str(entry.path))
        if entry.error:
            parts.append(f'<div class="nbf-head" title="{path}">{path}</div>'
                         f'<div class="nbf-msg" style="color:{RED}">unreadable: {_e(entry.error)}</div>')
            continue
        asked = "status asked now" if entry.asked else "status as saved"
        parts.append(f'<div class="nbf-head nbf-cut" title="{path}">{path} · {_n(entry.prompts, "prompt")} × '
                     f'{_n(len(entry.models), "model")} · created {_e(_ago(entry.created_at, now))} · '
                     f'{_e(_map_state(entry))} · <span class="nbf-muted">{asked}</span></div>')
        rows = []
        for j in entry.jobs:
            colour = BATCH_COLOURS.get(j.state, GREY)
            status = (j.status or j.state) + (f": {j.message}" if j.message else "")
            rows.append(f'<tr class="nbf-batch" data-batch="{_e(j.batch_id)}" data-state="{_e(j.state)}">'
                        f'<td class="nbf-cut" title="{_e(j.model)}">{_e(j.model)}</td>'
                        f'<td class="nbf-cut" title="{_e(j.batch_id)}"><code>{_e(short_batch_id(j.batch_id))}</code></td>'
                        f'<td class="nbf-cut" title="{_e(status)}"><span style="color:{colour}">●</span> '
                        f'<span class="nbf-msg">{_e(status)}</span></td>'
                        f'<td class="num nbf-cut">{_e(_job_counts(j))}</td><td>{_e(j.state)}</td>'
                        f'<td class="num">{_e(_ago(j.created_at, now))}</td></tr>')
        if rows:
            parts.append('<table class="nbf-saved nbf-fixed"><colgroup><col style="width:28%"><col style="width:150px">'
                         '<col><col style="width:110px"><col style="width:72px"><col style="width:110px"></colgroup>'
                         '<thead><tr><th>model</th><th>batch</th><th>status</th><th class="num">ok / total</th>'
                         '<th>state</th><th class="num">created</th></tr></thead><tbody>' + "".join(rows)
                         + "</tbody></table>")
        else:
            parts.append('<div class="nbf-muted">no batch created yet</div>')
        if entry.note:
            parts.append(f'<div class="nbf-muted">{_e(entry.note)}</div>')
        if not entry.done:
            parts.append(f'<div class="nbf-muted">pick it up: <code>{_e(resume)} {path}</code></div>')
    return _wrap("".join(parts))


def result_text(result: FanoutResult) -> str:
    """The summary as plain text: ``nbfanout run`` prints it, and so does the magic outside a notebook."""
    pairs = _answer_pairs(result)
    width = max([len(label) for label, _ in pairs] + [5])
    lines = [f"{'model':<{width}}  {'state':<16} {'HTTP':>4} {'tries':>5} {'latency':>9} {'tokens':>8} {'cost':>9}  via"]
    for label, r in pairs:
        state = "ok" if r.ok else (r.category or "failed")
        status = "200" if r.ok else str(r.http_status or "")
        via = " ".join(([r.model] if r.model != r.requested else []) + (["batch"] if r.via == "batch" else []))
        lines.append(f"{label:<{width}}  {state:<16} {status:>4} {len(r.attempts):>5} {_seconds(r.latency_s):>9} "
                     f"{r.tokens:>8,} {_cost(r.cost):>9}  {via}".rstrip())
    for r in result.failed:
        lines.append(f"  ✗ {r.requested}: {_failure(r)}")
    unpriced = f" ({', '.join(result.unpriced)})" if result.unpriced else ""
    lines.append(f"{len(result.succeeded)}/{len(result.results)} succeeded in {_seconds(result.elapsed_s)}; "
                 f"{result.total_tokens:,} tokens; {_cost(result.total_cost)}{_unpriced(result)}{unpriced}")
    return "\n".join(lines)


# --- plans, models, config, budgets ---------------------------------------------------------------------
def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    """A plan per model (a map plans one request per prompt and model): its key or the variable to set,
    requests, tokens, whether every prompt fits, projected cost (None when unpriced)."""
    by: dict[str, dict[str, Any]] = {}
    for r in plan.rows:
        row = by.setdefault(r.model, {"model": r.model, "key": mask_key(r.key_id) if r.key_id else None,
                                      "missing": " or ".join(r.missing_key_vars), "requests": 0, "prompt_tokens": 0,
                                      "max_output_tokens": r.max_output_tokens, "too_long": 0,
                                      "context_window": r.context_window, "cost": 0.0})
        row["requests"] += 1
        row["prompt_tokens"] += r.prompt_tokens
        row["too_long"] += 0 if r.fits else 1
        row["cost"] = None if row["cost"] is None or r.projected_cost is None else row["cost"] + r.projected_cost
    return list(by.values())


def _plan_head(plan: Plan) -> str:
    wait = (f"at least {duration(plan.lower_bound_s)} by the known limits" if plan.lower_bound_s >= 0.05
            else "no known limit makes it wait")
    return (f"dry run, nothing sent: {len(plan.rows)} request(s) to {len(plan_rows(plan))} model(s); {wait}; "
            f"≈{_cost(plan.projected_cost)}")


def plan_html(plan: Plan) -> str:
    """What a dry run would send, per model: key, requests, tokens, whether the prompts fit, projected cost."""
    body = []
    for r in plan_rows(plan):
        key = _e(r["key"]) if r["key"] else f'<span style="color:{RED}">no key (set {_e(r["missing"])})</span>'
        fits = ("fits" if not r["too_long"] else
                f'<span style="color:{RED}">{r["too_long"]} exceed {_count(r["context_window"])}</span>')
        body.append(f'<tr><td class="nbf-cut" title="{_e(r["model"])}">{_e(r["model"])}</td><td>{key}</td>'
                    f'<td class="num">{r["requests"]}</td><td class="num">{_count(r["prompt_tokens"])}</td>'
                    f'<td class="num">{_count(r["max_output_tokens"])}</td><td>{fits}</td>'
                    f'<td class="num">{_cost(r["cost"]) if r["cost"] is not None else "unpriced"}</td></tr>')
    table = ('<table><thead><tr><th>model</th><th>key</th><th class="num">requests</th>'
             '<th class="num">prompt tokens</th><th class="num">max output</th><th>context</th><th class="num">≈cost</th>'
             "</tr></thead><tbody>" + "".join(body) + "</tbody></table>")
    return _wrap(f'<div class="nbf-head">{_e(_plan_head(plan))}</div>' + table)


def plan_text(plan: Plan) -> str:
    """The same per-model plan as lines, for the terminal (``nbfanout run --dry-run``) and plain IPython."""
    rows = plan_rows(plan)
    width = max([len(r["model"]) for r in rows] + [5])
    lines = []
    for r in rows:
        key = f"key {r['key']}" if r["key"] else f"NO KEY (set {r['missing']})"
        fit = "fits" if not r["too_long"] else f"{r['too_long']} DO NOT FIT {r['context_window']}"
        cost = _cost(r["cost"]) if r["cost"] is not None else "unpriced"
        lines.append(f"{r['model']:<{width}}  {key:<14} {r['requests']:>4} request(s)  "
                     f"~{r['prompt_tokens']:,}+{r['max_output_tokens']:,} tokens  {fit}  {cost}")
    lines.append(_plan_head(plan))  # the same sentence as the HTML's head
    return "\n".join(lines)


def models_rows(config: Config, *, pool: str | None = None, provider: str | None = None,
                capability: str | None = None) -> list[dict[str, Any]]:
    """Every model of a config (or of one pool, provider or capability), grouped by provider: prices,
    output cap, capabilities, limits with their source and date, and whether it can be used now (or why not)."""
    from nbfanout.core.errors import UsageError

    if pool is not None and pool not in config.pools:
        raise UsageError(f"unknown pool {pool!r}; known pools: {', '.join(sorted(config.pools))}")
    if provider is not None and provider not in config.providers:
        raise UsageError(f"unknown provider {provider!r}; known: {', '.join(sorted(config.providers))}")
    members = set(config.pools[pool]) if pool is not None else None
    rows = []
    for name, spec in sorted(config.models.items(), key=lambda kv: (kv[1].provider, kv[0])):
        if (members is not None and name not in members) or (provider is not None and spec.provider != provider) \
                or (capability is not None and capability not in spec.capabilities):
            continue
        p = config.providers[spec.provider]
        usable = bool(p.keys)
        why = (f"{len(p.keys)} key(s): " + ", ".join(mask_key(k.id) for k in p.keys) if usable
               else f"no key: set {' or '.join(p.key_vars)}")
        limits = spec.limits if (spec.limits.rpm or spec.limits.tpm or spec.limits.concurrency) else p.limits
        rows.append({
            "model": name, "provider": spec.provider, "usable": usable, "why": why,
            "rpm": spec.limits.rpm or p.limits.rpm, "tpm": spec.limits.tpm or p.limits.tpm,
            "concurrency": spec.limits.concurrency or p.limits.concurrency,
            "context_window": spec.context_window, "max_output_tokens": spec.max_output_tokens,
            "input_price": spec.input_price, "output_price": spec.output_price,
            "audio_price_per_minute": spec.audio_price_per_minute,
            "capabilities": ", ".join(sorted(spec.capabilities)), "pools": ", ".join(spec.pools),
            "limits_source": limits.source, "limits_read_on": limits.read_on,
            "price_source": spec.source, "price_read_on": spec.read_on,
        })
    return rows


def _price(r: dict[str, Any]) -> str:
    if r["audio_price_per_minute"] is not None:
        return f"${r['audio_price_per_minute']:g} / min"
    if r["input_price"] is None or r["output_price"] is None:
        return "unpriced"
    return f"${r['input_price']:g} / ${r['output_price']:g}"


def models_html(config: Config, **filters: str | None) -> str:
    """The models grouped under one heading row per provider, which says its keys or the variable to set."""
    rows = models_rows(config, **filters)
    body = []
    provider = None
    for r in rows:
        if r["provider"] != provider:
            provider = r["provider"]
            colour = GREEN if r["usable"] else RED
            body.append(f'<tr class="nbf-provider" data-provider="{_e(provider)}"><td colspan="11"><b>{_e(provider)}</b> '
                        f'<span style="color:{colour}">{_e(r["why"])}</span></td></tr>')
        body.append(
            f'<tr data-model="{_e(r["model"])}"><td>{"✓" if r["usable"] else "✗"}</td><td>{_e(r["model"])}</td>'
            f'<td class="num">{_e(_price(r))}</td>'
            f'<td class="num">{_count(r["context_window"])}</td><td class="num">{_count(r["max_output_tokens"])}</td>'
            f'<td class="num">{_count(r["rpm"])}</td><td class="num">{_count(r["tpm"])}</td>'
            f'<td class="num">{_count(r["concurrency"])}</td>'
            f'<td>{_e(r["limits_read_on"] or "")}</td>'
            f'<td>{_e(r["capabilities"])}</td><td>{_e(r["pools"])}</td></tr>')
    usable = sum(1 for r in rows if r["usable"])
    head = f'<div class="nbf-head">{len(rows)} models, {usable} usable now ({_e(config.source)})</div>'
    table = ('<table><thead><tr><th></th><th>model</th><th class="num">$ / 1M in / out</th>'
             '<th class="num">context</th><th class="num">max out</th><th class="num">rpm</th><th class="num">tpm</th>'
             '<th class="num">concurrency</th><th>limits read on</th><th>capabilities</th><th>pools</th>'
             '</tr></thead><tbody>' + "".join(body) + "</tbody></table>")
    return _wrap(head + table)


def models_text(config: Config, **filters: str | None) -> str:
    """The models grouped under one line per provider (with its keys or the variable to set)."""
    rows = models_rows(config, **filters)
    width = max([len(r["model"]) for r in rows] + [5])
    lines: list[str] = []
    provider = None
    for r in rows:
        if r["provider"] != provider:
            provider = r["provider"]
            lines.append(f"{provider}  ({r['why']})")
        limits = " ".join(f"{k}={r[k]:,.0f}" for k in ("rpm", "tpm", "concurrency") if r[k])
        dated = f" (read {r['limits_read_on']})" if limits and r["limits_read_on"] else ""
        window = f"ctx {r['context_window']:,}" if r["context_window"] else ""
        out = f"out {r['max_output_tokens']:,}" if r["max_output_tokens"] else ""
        lines.append(f"  {'✓' if r['usable'] else '✗'} {r['model']:<{width}}  {_price(r):<18} {window:<12} {out:<12} "
                     f"{limits}{dated}  {r['capabilities']}".rstrip())
    return "\n".join(lines) if lines else "no models match"


def config_text(config: Config) -> str:
    """The configuration in force: source, defaults, providers (keys masked), pools."""
    d = config.defaults
    lines = [f"source: {config.source}",
             f"defaults: concurrency={d.concurrency} timeout_s={d.timeout_s:g} max_attempts={d.max_attempts} "
             f"deadline_s={d.deadline_s} learn_limits={d.learn_limits} cache={d.cache}"]
    lines.append("providers:")
    for p in config.providers.values():
        keys = ", ".join(f"{mask_key(k.id)} ({k.origin})" for k in p.keys) or f"no key (set {' or '.join(p.key_vars)})"
        lim = " ".join(f"{k}={getattr(p.limits, k):,.0f}" for k in ("rpm", "tpm", "rpd", "ash", "asd", "concurrency")
                       if getattr(p.limits, k) is not None)
        models = sum(1 for m in config.models.values() if m.provider == p.id)
        lines.append(f"  {p.id:<12} {p.wire:<9} {p.base_url}  {models} models  {lim}  keys: {keys}")
    lines.append("pools:")
    for name, members in sorted(config.pools.items()):
        lines.append(f"  {name}: {', '.join(members)}")
    return "\n".join(lines)


def _budget_cells(s: BudgetStats) -> str:
    cells = []
    for label, used, limit in (("RPM", s.rpm_used, s.rpm_limit), ("TPM", s.tpm_used, s.tpm_limit),
                               ("in flight", float(s.in_flight), s.concurrency_limit)):
        slots = label == "in flight"
        if not limit:  # no bar against an unknown limit: the count alone
            cells.append(f'<td title="{_e(label)}: limit unknown"><span class="nbf-muted">{_count(used)}</span></td>')
            continue
        frac = used / limit
        text = f"{_count(used)} / {_count(limit)}"
        cells.append(f'<td>{_bar(frac, _level_colour(frac, slots=slots), small=True, label=f"{label} {text}")} '
                     f'<span class="nbf-muted">{text}</span></td>')
    notes = []
    if s.processes is not None:  # kept in a shared store: the counts are every process's together
        notes.append(f'<span class="nbf-badge nbf-shared" style="background:{BLUE}" title="counts are all processes\' together">'
                     f'shared · {s.processes} process{"es" if s.processes != 1 else ""}</span>')
    if s.cooldown_s > 0:
        notes.append(f'<span class="nbf-badge" style="background:{AMBER}">cooldown {duration(s.cooldown_s)}</span>')
    if s.disabled:
        notes.append(f'<span class="nbf-badge" style="background:{RED}">disabled</span> '
                     f'<span class="nbf-msg">{_e(s.disabled)}</span>')
    return "".join(cells) + f'<td class="nbf-cut" title="{_e(s.disabled or "")}">{" ".join(notes)}</td>'


def budgets_html(budgets: Sequence[BudgetStats], title: str = "utilization") -> str:
    """Bars for RPM, TPM and in-flight against their limits, per provider and per key, with cooldowns.

    Model budgets (often where the tight limits are) follow: those cooling down or disabled,
    and the few nearest their limits, so fifty models do not bury the panel.
    """
    shown = [s for s in budgets if s.scope in ("provider", "key")]
    models = [s for s in budgets if s.scope in ("model", "model-key")]
    hot = sorted((s for s in models if (_fullest(s) or 0.0) > 0), key=lambda s: -(_fullest(s) or 0.0))[:MAX_MODEL_BUDGETS]
    shown += hot + [s for s in models if (s.cooldown_s > 0 or s.disabled) and s not in hot]
    if not shown:
        return ""
    rows = "".join(f'<tr data-scope="{_e(s.scope)}"><td>{_e(s.scope)}</td>'
                   f'<td class="nbf-cut" title="{_e(_budget_label(s))}">{_e(_budget_label(s))}</td>{_budget_cells(s)}</tr>'
                   for s in shown)
    return (f'<div class="nbf-head">{_e(title)}</div><table class="nbf-util nbf-fixed"><colgroup>'
            '<col style="width:80px"><col style="width:30%"><col style="width:170px"><col style="width:190px">'
            '<col style="width:130px"><col></colgroup><thead><tr><th></th><th>budget</th>'
            "<th>requests / min</th><th>tokens / min</th><th>in flight</th><th></th></tr></thead><tbody>"
            + rows + "</tbody></table>")


def budgets_text(budgets: Sequence[BudgetStats]) -> str:
    lines = []
    for s in budgets:
        if s.scope not in ("provider", "key", "model", "model-key"):
            continue
        if s.scope in ("model", "model-key") and not (s.in_flight or s.rpm_used or s.cooldown_s or s.disabled):
            continue
        parts = [f"rpm {_count(s.rpm_used)}/{_count(s.rpm_limit) if s.rpm_limit else '?'}",
                 f"tpm {_count(s.tpm_used)}/{_count(s.tpm_limit) if s.tpm_limit else '?'}",
                 f"in flight {s.in_flight}/{s.concurrency_limit if s.concurrency_limit else '?'}"]
        if s.processes is not None:
            parts.append(f"shared by {s.processes} process{'es' if s.processes != 1 else ''}")
        if s.cooldown_s > 0:
            parts.append(f"cooldown {duration(s.cooldown_s)}")
        if s.disabled:
            parts.append(f"disabled: {s.disabled}")
        lines.append(f"{s.scope:<8} {_budget_label(s):<48} " + "  ".join(parts))
    return "\n".join(lines) or "no budgets yet: nothing has been sent with this configuration"


# --- the dashboard ------------------------------------------------------------------------------------
def row_state(row: Row, now: float) -> str:
    """The state column: what the model is doing, with live countdowns."""
    text = row.detail or row.state
    left = None if row.until is None or not math.isfinite(row.until) else row.until - now  # inf: until a slot frees
    if left is not None and row.state == "waiting":  # held by a budget: not a retry, nothing was refused
        text = f"{row.detail} ({duration(left)} left)" if left > 0 else row.detail
    elif left is not None and row.state in ("rate_limited", "retrying"):
        text = f"{row.detail}, retry in {duration(left)}" if left > 0 else f"{row.detail}, retrying…"
    return text


def _batch_state(model: DashboardModel, row: Row) -> str:
    """A batch row: answered / total, failures, in flight, its rate and ETA, and what it waits for.

    Requests a provider batch holds say so ("20 in batch in_progress, 12 ended"): they are not
    queued behind our budgets, and their answers come all at once, so no rate is made of them."""
    by = " by batch" if row.via == "batch" and row.state in FINAL_STATES else ""
    parts = [f"{row.answered}/{row.total} answered{by}"]
    if row.failed:
        parts.append(f"{row.failed} failed")
    if row.state in FINAL_STATES:
        return " · ".join(parts) + (f" · last: {row.last_error}" if row.failed else "")
    if row.in_flight:
        parts.append(f"{len(row.in_flight)} in flight")
    if row.in_batch:
        reported = sum(b.reported for b in model.batches_of(row.name) if b.open)
        where = (f"in batch {row.batch_status}" if row.detail.startswith("in batch") else
                 row.detail.removeprefix("in "))
        parts.append(f"{row.in_batch} {where}" + (f", {reported} ended" if reported else ""))
    queued = row.total - row.answered - row.failed - len(row.in_flight) - row.in_batch
    if queued > 0:  # not sent yet: behind the model's requests in flight, or the budget the detail names
        parts.append(f"{queued} queued")
    rate = model.rate(row) if row.via != "batch" else None
    if rate:
        parts.append(f"{rate:.1f}/s · ETA {duration((row.total - row.answered - row.failed) / rate)}")
    if row.state == "waiting" and row.detail:
        parts.append(row.detail)
    return " · ".join(parts)


def _in_batches(t: dict[str, Any]) -> str:
    """" · 40 in 2 batches" while provider batches hold requests of the run."""
    if not t.get("in_batch"):
        return ""
    n = t.get("batches") or 1
    return f" · {t['in_batch']:,} in {n} batch{'es' if n != 1 else ''}"


def _pace(model: DashboardModel) -> str:
    """" · 2.10/s · ETA 12 s": the live requests' rate and the time left, batches at their providers' pace."""
    if model.finished:
        return ""
    p = model.pace()
    out = f" · {p.rate:.2f}/s" if p.rate else ""
    if p.eta_s is not None and (p.rate or model.batches):
        out += f" · ETA {duration(p.eta_s)}"
    elif p.batch_unknown:  # Anthropic counts nothing until a batch ends; a rate of 0 would say "never"
        out += " · ETA – (a batch has reported no progress yet)"
    return out


def batch_line(b: BatchRow, now: float) -> str:
    """One provider batch as a line: ``openai/gpt-4o-mini batch_40e1…cea2 in_progress 12/20 ✓ · 1 ✗ ·
    2 min 5 s · next poll in 4.0 s`` (and the provider's message when it failed)."""
    parts = [f"{b.model} {short_batch_id(b.batch_id)} {b.word}", _batch_counts(b), elapsed_text(b.elapsed(now))]
    poll = b.next_poll_in(now)
    if poll is not None:
        parts.append(f"next poll in {duration(poll)}" if poll >= 0.05 else "polling…")
    elif b.state == "ended":
        parts.append("reading results")
    elif b.state == "fetched":
        parts.append("results read")
    if b.poll_error:
        parts.append(f"status request failed: {b.poll_error}")
    line = " · ".join(parts)
    return line + (f" — {b.message}" if b.message else "")


def _batch_counts(b: BatchRow) -> str:
    """"12/20 ✓ · 1 ✗": the provider's own counts (succeeded of total, failed)."""
    return f"{b.succeeded:,}/{b.total:,} ✓" + (f" · {b.failed:,} ✗" if b.failed else "")


def batches_text(model: DashboardModel, now: float | None = None, *, open_only: bool = False) -> str:
    """The run's provider batches, a line each (``batch_line``); empty when it has none."""
    now = model.now() if now is None else now
    return "\n".join(batch_line(b, now) for b in model.batches.values() if b.open or not open_only)


def batches_html(model: DashboardModel, now: float | None = None) -> str:
    """The run's provider batches as a table with fixed columns: model, batch id (shortened; the title
    has it whole), the provider's status word (and its message when it failed), a bar and the counts
    it reports, elapsed time and the next status poll. Empty when the run has no batch."""
    if not model.batches:
        return ""
    now = model.now() if now is None else now
    rows = []
    for b in model.batches.values():
        colour = BATCH_COLOURS.get(b.state, GREY)
        status = b.word + (f": {b.message}" if b.message else "") + (
            f" (status request failed: {b.poll_error})" if b.poll_error else "")
        failed_style = f' style="color:{RED}"' if b.state == "failed" or b.message or b.poll_error else ""
        counts = _batch_counts(b)
        poll = b.next_poll_in(now)
        poll_text = ("–" if poll is None else f"in {duration(poll)}" if poll >= 0.05 else "now")
        title = (f"{b.succeeded:,} succeeded, {b.failed:,} failed of {b.total:,}, as {b.provider} reports them"
                 f" ({b.polls} status poll{'s' if b.polls != 1 else ''})")
        rows.append(
            f'<tr class="nbf-batch" data-batch="{_e(b.batch_id)}" data-state="{_e(b.state)}">'
            f'<td class="nbf-cut" title="{_e(b.model)}">{_e(b.model)}</td>'
            f'<td class="nbf-cut" title="{_e(b.batch_id)}"><code>{_e(short_batch_id(b.batch_id))}</code></td>'
            f'<td class="nbf-cut" title="{_e(status)}"><span style="color:{colour}">●</span> '
            f'<span class="nbf-msg"{failed_style}>{_e(status)}</span></td>'
            f"<td>{_bar(min(1.0, b.reported / max(b.total, 1)), colour, label=title)}</td>"
            f'<td class="num nbf-cut" title="{_e(title)}">{_e(counts)}</td>'
            f'<td class="num">{_e(elapsed_text(b.elapsed(now)))}</td><td class="num">{_e(poll_text)}</td></tr>')
    open_n = sum(b.open for b in model.batches.values())
    where = (f' · <span class="nbf-muted" title="{_e(model.state_path)}">state file {_e(model.state_path)}</span>'
             if model.state_path else "")
    head = (f'<div class="nbf-head nbf-cut">provider batches · {open_n} open of {len(model.batches)}{where}</div>'
            if open_n else f'<div class="nbf-head nbf-cut">provider batches · {len(model.batches)}, all read{where}</div>')
    return (head + '<table class="nbf-batches nbf-fixed"><colgroup><col style="width:24%"><col style="width:130px">'
            '<col><col style="width:128px"><col style="width:110px"><col style="width:84px"><col style="width:80px">'
            '</colgroup><thead><tr><th>model</th><th>batch</th><th>status</th><th>provider\'s counts</th>'
            '<th class="num">ok / total</th><th class="num">elapsed</th><th class="num">next poll</th></tr></thead>'
            "<tbody>" + "".join(rows) + "</tbody></table>")


def dashboard_html(model: DashboardModel, now: float | None = None, *, inline: bool = True) -> str:
    """The whole dashboard (header totals, one row per model, utilization) as one HTML document.

    ``inline=False`` for the live widget: its HTML is never sanitized, so the <style> holds, and each
    of its up to ten updates a second is a third the size (14 KiB instead of 47 for fifteen models)."""
    return _wrap(_dashboard_body(model, now), inline=inline)


def _dashboard_body(model: DashboardModel, now: float | None) -> str:
    now = model.now() if now is None else now
    t = model.totals()
    state = "cancelled" if model.cancelled else ("finished" if model.finished else "running")
    ended = t["done"] + t["failed"] + t["cancelled"]
    # one bar for the whole run, as tqdm draws it: red as soon as anything failed
    bar = _bar(ended / max(t["total"], 1), RED if t["failed"] else (GREEN if model.finished else BLUE),
               label=f"{ended}/{t['total']} finished")
    head = (f'<div class="nbf-head nbf-run">{bar} nbfanout · {state} · {t["done"]}/{t["total"]} done'
            + (f' · <span style="color:{RED}">{t["failed"]} failed</span>' if t["failed"] else " · 0 failed")
            + (f' · {t["cancelled"]} cancelled' if t["cancelled"] else "")
            + f' · {t["running"]} running{_in_batches(t)} · {_seconds(t["elapsed"])}{_pace(model)} · '
            f'{_count(t["tokens"])} tokens · {_cost(t["cost"])}</div>')
    rows = []
    for row in model.rows.values():
        colour = STATE_COLOURS.get(row.state, GREY)
        via = f"via {row.model}" if row.model and row.model != row.name else ""
        name = _e(row.label) + (f' <span class="nbf-muted">{_e(via)}</span>' if via else "")
        state_text = _batch_state(model, row) if model.batch and row is not model.synthesis else row_state(row, now)
        key = f" {mask_key(row.key_id)}" if row.key_id and row.state == "running" else ""
        tokens = f"{row.input_tokens:,}+{row.output_tokens:,}" if row.input_tokens or row.output_tokens else "–"
        rows.append(
            f'<tr class="nbf-row" data-model="{_e(row.name)}" data-state="{_e(row.state)}">'
            f'<td class="nbf-name nbf-cut" title="{_e(row.label + (" " + via if via else ""))}">{name}</td>'
            f'<td class="nbf-state nbf-cut" title="{_e(state_text + key)}"><span style="color:{colour}">●</span> '
            f'<span class="nbf-msg">{_e(state_text)}</span><span class="nbf-muted">{_e(key)}</span></td>'
            f"<td>{_bar(model.progress(row), colour, label=f'{row.name}: {row.state}')}</td>"
            f'<td class="num">{row.attempts or "–"}</td><td class="num">{_seconds(row.latency_s)}</td>'
            f'<td class="num nbf-cut">{tokens}</td><td class="num">{_cost(row.cost)}</td></tr>'
        )
    # fixed widths (the state column takes what is left), so nothing moves while rows change
    table = ('<table class="nbf-models nbf-fixed"><colgroup><col style="width:30%"><col><col style="width:128px">'
             '<col style="width:48px"><col style="width:72px"><col style="width:100px"><col style="width:80px"></colgroup>'
             '<thead><tr><th>model</th><th>state</th><th>progress</th><th class="num">tries</th>'
             '<th class="num">latency</th><th class="num">tokens</th><th class="num">cost</th></tr></thead><tbody>'
             + "".join(rows) + "</tbody></table>")
    batches = batches_html(model, now)
    util = budgets_html(model.budgets)
    if util and model.finished:
        util = f"<details><summary>utilization</summary>{util}</details>"
    learned = ""
    if model.learned:
        learned = '<div class="nbf-muted">learned: ' + " · ".join(_e(x) for x in model.learned[-4:]) + "</div>"
    return head + table + batches + util + learned


def status_html(sections: Sequence[tuple[str, Sequence[BudgetStats]]]) -> str:
    """``%fanout status``: the live budgets of every configuration used in this session."""
    if not sections:
        return _wrap('<div class="nbf-muted">nothing has run yet in this session</div>')
    empty = '<div class="nbf-head">{}</div><div class="nbf-muted">no budgets yet</div>'
    return _wrap("".join(budgets_html(b, title) or empty.format(_e(title)) for title, b in sections))


# --- answers and the final snapshot -------------------------------------------------------------------
GRID_MAX = 4  # up to this many answers sit side by side as cards; more become a table of first lines


def _via(r: ModelResult) -> str:
    """How an answer came, when not the plain way: "via other/model" (rotated), "by batch", or both."""
    parts = ([f"via {r.model}"] if r.model != r.requested else []) + (["by batch"] if r.via == "batch" else [])
    return " · ".join(parts)


def _facts(r: ModelResult) -> str:
    via = _via(r)
    return f"{_seconds(r.latency_s)} · {_count(r.tokens)} tokens · {_cost(r.cost)}" + (f" · {via}" if via else "")


def markdown_html(text: str) -> str:
    """An answer's Markdown as HTML (CommonMark plus tables and strikethrough). Raw HTML in it is
    shown as text, never run: an answer is untrusted input inside the notebook's page."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"]).render(text)


def _answer_body(r: ModelResult) -> str:
    if r.ok:
        return f'<div class="nbf-text nbf-md">{markdown_html(r.text)}</div>'
    return f'<div class="nbf-text" style="color:{RED}">{_e(_failure(r))}</div>'


def answers_html(result: FanoutResult) -> str:
    """The answers side by side: cards (full ``provider/model``, latency, tokens, cost) for up to
    GRID_MAX models, else one row per model with its first lines, each opening to the whole answer."""
    return _wrap(_answers_body(result))


def _answers_body(result: FanoutResult) -> str:
    pairs = _answer_pairs(result)
    if not pairs:
        return ""
    if len(pairs) <= GRID_MAX:
        cards = "".join(
            f'<div class="nbf-card" data-model="{_e(r.requested)}">'
            f'<div class="nbf-card-head" title="{_e(label)}">{"✓" if r.ok else "✗"} {_e(label)}</div>'
            f'<div class="nbf-muted">{_e(_facts(r))}</div>{_answer_body(r)}</div>'
            for label, r in pairs)
        return (f'<div class="nbf-grid nbf-answers" style="grid-template-columns:repeat({len(pairs)},minmax(0,1fr))">'
                f"{cards}</div>")
    rows = "".join(
        f'<details class="nbf-answer-row" data-model="{_e(r.requested)}"><summary>'
        f'<b>{"✓" if r.ok else "✗"} {_e(label)}</b> <span class="nbf-muted">{_e(_facts(r))}</span> · '
        f"{_e(answer_preview(r.text, lines=1, width=120) if r.ok else answer_preview(_failure(r), lines=1, width=120))}"
        "</summary>"
        f"{_answer_body(r)}</details>"
        for label, r in pairs)
    return f'<div class="nbf-answers">{rows}</div>'


def snapshot_html(model: DashboardModel, result: FanoutResult | BatchResult | None,
                  timeline_png: bytes | None = None) -> str:
    """What a finished run leaves in the notebook, without widgets: the final dashboard (utilization
    folded away), the retry timeline and the answers (a batch's table), as one HTML document a saved
    notebook keeps."""
    import base64

    parts = [_dashboard_body(model, None)]
    if timeline_png:
        data = base64.b64encode(timeline_png).decode("ascii")
        parts.append(f'<details open><summary>timeline</summary><img class="nbf-timeline" alt="retry timeline" '
                     f'src="data:image/png;base64,{data}"></details>')
    if result is not None:
        from nbfanout.core.results import BatchResult

        parts.append(_batch_body(result) if isinstance(result, BatchResult) else _answers_body(result))
    return _wrap("".join(parts))
