"""JupyterLab in headless Chromium (Playwright, Debian's chromium by path): the dashboard renders as widgets.

Skipped only when chromium is missing and NBFANOUT_REQUIRE_BROWSER is unset (CI sets it,
so there a missing browser fails). Never runs ``playwright install``: it launches
/usr/bin/chromium. A screenshot of the run cell is saved under tests/artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).parent
ARTIFACTS = HERE.parent / "artifacts"
NOTEBOOK = "nb_seed15_dashboard.ipynb"
TOKEN = "nbfanout-browser-test"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


KERNEL_IDLE = """() => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return Boolean(kernel && kernel.status === "idle");
}"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chromium() -> str:
    path = _chromium()
    if path is None:
        if os.environ.get("NBFANOUT_REQUIRE_BROWSER"):
            pytest.fail("NBFANOUT_REQUIRE_BROWSER is set but chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); set NBFANOUT_REQUIRE_BROWSER=1 to fail instead")
    pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: pip install playwright")
    return path


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[str]:
    """JupyterLab on loopback with a known token, serving a copy of the notebook; stopped with its kernels."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(HERE / NOTEBOOK, root / NOTEBOOK)
    with _lab_server(tmp_path, root) as url:
        yield url


def _jupyter_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a test's Jupyter processes, all of their state under ``tmp_path``: the data dir
    holds the trust database and its secret, so no notebook signed by another run is trusted here."""
    return {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
            "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
            "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings")}


@contextmanager
def _lab_server(tmp_path: Path, root: Path, theme: str | None = None) -> Iterator[str]:
    """JupyterLab (and Notebook 7) serving ``root``, in ``theme`` if given ("JupyterLab Dark")."""
    port = _free_port()
    settings = tmp_path / "settings"
    news = settings / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no "news?" toast over the page
    if theme is not None:
        (news / "themes.jupyterlab-settings").write_text(json.dumps({"theme": theme}))
    env = _jupyter_env(tmp_path)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.expose_app_in_browser=True",
           "--JupyterNotebookApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "jupyterlab.log", "w")  # noqa: SIM115 - closed below, after the server stops
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/status", params={"token": TOKEN}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
            time.sleep(0.3)
        yield url
    finally:
        try:
            httpx.post(f"{url}/api/shutdown", params={"token": TOKEN}, timeout=5)
            server.wait(timeout=20)
        except (httpx.HTTPError, subprocess.TimeoutExpired):
            server.terminate()
            server.wait(timeout=10)
        log.close()


COLUMN_EDGES = """(cell) => Array.from(cell.querySelectorAll('table.nbf-models th')).map(th => {
    const r = th.getBoundingClientRect(); return [Math.round(r.left), Math.round(r.right)];
})"""

CARDS = """(cell) => {
    const area = cell.querySelector('.jp-Cell-outputArea').getBoundingClientRect();
    return {area: [Math.round(area.left), Math.round(area.right)],
            cards: Array.from(cell.querySelectorAll('.nbf-card')).map(c => {
                const r = c.getBoundingClientRect();
                return [Math.round(r.left), Math.round(r.right), Math.round(r.top),
                        c.dataset.model || c.querySelector('.nbf-card-head').title,  // untrusted: data-* is stripped
                        !!c.querySelector('.nbf-md p, .nbf-md ul'), !!c.querySelector('.nbf-md strong, .nbf-md li')];
            })};
}"""


def _assert_cards_side_by_side(cell: Any, models: int) -> None:
    """The answers of a few models: one card each, in one row, left to right, inside the output area,
    each with the full ``provider/model`` and its answer rendered from Markdown."""
    boxes = cell.evaluate(CARDS)
    cards, (left, right) = boxes["cards"], boxes["area"]
    assert len(cards) == models, cards
    assert len({top for _, _, top, *_ in cards}) == 1, f"the cards are not in one row: {cards}"
    assert all(a[1] <= b[0] for a, b in zip(cards, cards[1:])), f"cards overlap or are out of order: {cards}"
    assert left - 1 <= cards[0][0] and cards[-1][1] <= right + 1, f"a card leaves the output area: {cards}"
    assert all(r - lft > 150 for lft, r, *_ in cards), "a card is too narrow to read"
    assert all("/" in model and md for _, _, _, model, md, _ in cards), "an answer was not rendered as Markdown"


def _assert_cards_and_background_ended(page: Any) -> None:
    """Cell 9: three models' answers as cards side by side; cell 10: the background run, ended after
    the last cell, became its snapshot and its handle's line says done."""
    cards = page.locator(".jp-Cell").nth(9)
    cards.locator(".jp-OutputArea-output .nbf-card").first.wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelectorAll('.jp-Cell')[9].querySelectorAll('.jupyter-widgets')"
                           ".length === 0", timeout=60_000)
    _assert_cards_side_by_side(cards, 3)
    background = page.locator(".jp-Cell").nth(10)
    background.scroll_into_view_if_needed()
    background.locator(".jp-OutputArea-output").filter(has_text="BackgroundRun 3 models, done").wait_for(timeout=120_000)
    assert background.locator(".jupyter-widgets").count() == 0, "the background run's widget is still there"
    assert background.locator(".nbf-row").count() == 3 and background.locator(".nbf-card").count() == 3


def _save_and_reopen(page: Any) -> None:
    """Save the notebook, shut its kernel down and reload the page: then check every snapshot is
    still there (the fifteen rows, the cards, the background run's) and no widget error or placeholder."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
    page.evaluate("() => window.jupyterapp.commands.execute('kernelmenu:shutdown')")
    page.wait_for_timeout(1000)
    page.reload()
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    for index, selector, count in ((2, ".nbf-row", 15), (9, ".nbf-card", 3), (10, ".nbf-row", 3)):
        cell = page.locator(".jp-Cell").nth(index)
        cell.scroll_into_view_if_needed()  # cells far down render only when in view
        cell.locator(selector).first.wait_for(timeout=60_000)
        assert cell.locator(selector).count() == count, (index, selector)
    assert page.locator(".jp-OutputArea-output").filter(has_text="Error displaying widget").count() == 0
    assert page.locator(".jp-OutputArea-output").filter(has_text="Loading widget").count() == 0


OVERFLOW = """(cell) => {
    const area = cell.querySelector('.jp-Cell-outputArea').getBoundingClientRect();
    return Array.from(cell.querySelectorAll('table.nbf-models td, table.nbf-util td')).filter(td => {
        const r = td.getBoundingClientRect(); return r.right > area.right + 1 || r.left < area.left - 1;
    }).length;
}"""


@contextmanager
def _notebook_run(chromium: str, url: str, width: int) -> Iterator[Any]:
    """A headless page on ``url`` (the test notebook in one frontend), its kernel restarted and every cell run."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 2400})
            page.goto(url)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
            # the server keeps kernels across page loads: restart, then run every cell; not awaited,
            # because the command's promise settles only after its confirmation dialog
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-run-all'); }")
            accept = page.locator(".jp-Dialog .jp-mod-accept")
            accept.wait_for(timeout=30_000)
            accept.click()
            yield page
        finally:
            browser.close()


def test_dashboard_holds_its_layout_live_and_leaves_a_static_snapshot_that_survives_a_reload(
        chromium: str, jupyterlab: str) -> None:
    with _notebook_run(chromium, f"{jupyterlab}/lab/tree/{NOTEBOOK}?token={TOKEN}", 1400) as page:
        run_cell = page.locator(".jp-Cell").nth(2)
        live = run_cell.locator(".jupyter-widgets table.nbf-models")
        live.wait_for(timeout=120_000)

        # while the run is live: the columns never move and nothing leaves the output area
        edges, samples = None, 0
        run_cell.locator(".jupyter-widgets .nbf-row").first.wait_for(timeout=60_000)
        while live.count() and samples < 40:
            now = run_cell.evaluate(COLUMN_EDGES)
            if now and live.count():
                assert edges is None or now == edges, f"a column moved during the run: {edges} -> {now}"
                edges = edges or now
                assert run_cell.evaluate(OVERFLOW) == 0, "a dashboard cell reaches past the output area"
                samples += 1
                if samples == 2:
                    run_cell.locator(".jp-Cell-outputArea").screenshot(path=str(ARTIFACTS / "browser_live.png"))
            page.wait_for_timeout(150)
        assert samples >= 2, "the live dashboard was not seen twice"

        page.locator(".jp-OutputArea-output").filter(has_text="results: 15").wait_for(timeout=120_000)
        # finished: the widget became its static snapshot, with the timeline and the answers
        assert run_cell.locator(".jupyter-widgets").count() == 0, "the live widget is still there"
        rows = run_cell.locator(".jp-OutputArea-output .nbf-row")
        assert rows.count() == 15
        name = run_cell.locator(".nbf-row td.nbf-name").first
        assert name.evaluate("td => getComputedStyle(td).textAlign") == "left", "model names are not left-aligned"
        assert run_cell.locator("details.nbf-answer-row").count() == 15, "one answer row per model"
        assert run_cell.locator("img.nbf-timeline").bounding_box()["width"] > 100, "the timeline is not shown"
        assert run_cell.evaluate(OVERFLOW) == 0
        run_cell.locator(".jp-Cell-outputArea").screenshot(path=str(ARTIFACTS / "browser_dashboard.png"))
        static_edges = run_cell.evaluate(COLUMN_EDGES)

        # five long failure messages (a revoked key, a missing one): cut with an ellipsis, whole in the
        # tooltip, and the columns exactly where they are without them
        page.locator(".jp-OutputArea-output").filter(has_text="broken: 5 failed").wait_for(timeout=120_000)
        broken = page.locator(".jp-Cell").nth(6)
        failed = broken.locator('tr[data-state="failed"] td.nbf-state')
        assert failed.count() == 5
        assert failed.first.evaluate("td => td.scrollWidth > td.clientWidth"), "a long message is not cut"
        assert "Incorrect API key provided" in (failed.first.get_attribute("title") or "")
        assert broken.evaluate(OVERFLOW) == 0, "a failure message pushes a cell past the output area"
        assert broken.evaluate(COLUMN_EDGES) == static_edges, "long messages moved the columns"
        broken.locator(".jp-Cell-outputArea").screenshot(path=str(ARTIFACTS / "browser_failures.png"))

        _assert_cards_and_background_ended(page)
        page.locator(".jp-Cell").nth(9).locator(".jp-Cell-outputArea").screenshot(
            path=str(ARTIFACTS / "browser_cards.png"))
        _save_and_reopen(page)
        page.screenshot(path=str(ARTIFACTS / "browser_reopened.png"))


def test_notebook_7_shows_the_snapshot_whole_and_in_bounds(chromium: str, jupyterlab: str) -> None:
    """Notebook 7, same server: the finished cell's snapshot is not folded into a scroll box and stays inside."""
    pytest.importorskip("notebook", reason="Notebook 7 is a test dependency: pip install 'notebook>=7.2'")
    with _notebook_run(chromium, f"{jupyterlab}/notebooks/{NOTEBOOK}?token={TOKEN}", 1280) as page:
        page.locator(".jp-OutputArea-output").filter(has_text="broken: 5 failed").wait_for(timeout=180_000)
        for index in (2, 6):
            cell = page.locator(".jp-Cell").nth(index)
            assert cell.locator(".nbf-row").count() == 15
            assert cell.evaluate(OVERFLOW) == 0, f"cell {index}: a dashboard cell reaches past the output area"
            area = cell.locator(".jp-Cell-outputArea")
            folded = area.evaluate("a => a.scrollHeight > a.clientHeight + 2 || !!a.closest('.jp-mod-outputsScrolled')")
            assert not folded, f"cell {index}: the snapshot is folded into a scroll box"
            assert cell.locator("details.nbf-answer-row").count() == 15
        page.locator(".jp-Cell").nth(6).locator(".jp-Cell-outputArea").screenshot(
            path=str(ARTIFACTS / "notebook7_failures.png"))
        _assert_cards_and_background_ended(page)
        _save_and_reopen(page)
        page.screenshot(path=str(ARTIFACTS / "notebook7_reopened.png"))


#: The contrast (WCAG 2: (L1 + 0.05) / (L2 + 0.05)) of each matching element's text against the first
#: opaque background behind it, for the first few elements of each selector.
CONTRAST = """(selectors) => {
    const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
        .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
    const behind = el => { for (let n = el; n; n = n.parentElement) { const c = rgb(getComputedStyle(n).backgroundColor);
        if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c; } return [255, 255, 255]; };
    const out = {};
    for (const sel of selectors) {
        out[sel] = Array.from(document.querySelectorAll(sel)).slice(0, 4).map(el => {
            const a = lum(rgb(getComputedStyle(el).color)), b = lum(behind(el));
            return Math.round(100 * (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)) / 100; });
    }
    return out;
}"""
READABLE = {".nbf-row td.nbf-name": 4.5, ".nbf-card-head": 4.5, ".nbf-md p": 4.5, ".nbf-muted": 3.0}
#: What VS Code's notebook renderer sets in its default dark theme (Dark Modern), which the CSS falls back to.
VSCODE_DARK = ("background:#1f1f1f;--vscode-editor-background:#1f1f1f;--vscode-editor-foreground:#cccccc;"
               "--vscode-descriptionForeground:#9d9d9d;--vscode-editorWidget-border:#313131;"
               "--vscode-editorWidget-background:#202020;--vscode-textCodeBlock-background:#2b2b2b")


def _finished_snapshot(sandbox: Any) -> str:
    """The static HTML a finished two-model run leaves in a notebook, from a real run against the sandbox."""
    import asyncio

    from nbfanout import Fanout
    from nbfanout.progress import DashboardModel
    from nbfanout.render import snapshot_html

    models = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]
    fx = Fanout(sandbox.config, learn=False)
    view = DashboardModel(models)
    fx.subscribe(view.apply)
    result = asyncio.run(fx.run("Name two colours, in **bold**.", models, max_tokens=40))
    assert all(r.ok for r in result)
    view.finish()  # as the dashboard does when the run ends
    return snapshot_html(view, result)


def _assert_readable(page: Any) -> None:
    contrast = page.evaluate(CONTRAST, list(READABLE))
    for selector, least in READABLE.items():
        assert contrast[selector], f"nothing matched {selector}"
        assert min(contrast[selector]) >= least, f"{selector}: contrast {contrast[selector]} (at least {least} needed)"


def test_the_snapshot_reads_in_jupyterlab_dark_and_in_vs_codes_dark_theme(
        chromium: str, fast_sandbox: Any, tmp_path: Path) -> None:
    """A saved run opened in JupyterLab's dark theme, and the same HTML under VS Code's dark theme
    variables: every name, answer and muted note keeps a readable contrast (WCAG AA for text)."""
    import nbformat
    from playwright.sync_api import sync_playwright

    html = _finished_snapshot(fast_sandbox)
    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("%%fanout --config sb.config --models openai/gpt-4o-mini anthropic/claude-haiku-4-5")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": html, "text/plain": "run"})]
    nb.cells = [cell]
    nbformat.write(nb, root / "dark.ipynb")
    # trusted, as a notebook its user ran and saved is: an untrusted one has its <style> stripped
    subprocess.run([sys.executable, "-m", "jupyter", "trust", str(root / "dark.ipynb")], check=True,
                   capture_output=True, env=_jupyter_env(tmp_path))
    with _lab_server(tmp_path, root, theme="JupyterLab Dark") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"{url}/lab/tree/dark.ipynb?token={TOKEN}")
            page.wait_for_selector(".jp-OutputArea-output .nbf-card", timeout=60_000)
            assert page.evaluate("() => document.body.dataset.jpThemeLight") == "false", "the dark theme is not on"
            name = page.locator(".nbf-row td.nbf-name").first
            assert name.evaluate("td => getComputedStyle(td).textAlign") == "left", "the snapshot's CSS did not apply"
            _assert_readable(page)
            page.locator(".jp-Cell-outputArea").first.screenshot(path=str(ARTIFACTS / "browser_dark.png"))

            vscode = browser.new_page(viewport={"width": 1280, "height": 1400})
            vscode.set_content(f'<!DOCTYPE html><html><body style="{VSCODE_DARK}">{html}</body></html>')
            _assert_readable(vscode)
            vscode.screenshot(path=str(ARTIFACTS / "vscode_dark.png"))
        finally:
            browser.close()


#: A teammate's copy: the seed15 notebook run in a real kernel and saved, opened by someone who did not run it.
RECEIVED = "received.ipynb"

#: Proof the page is untrusted: every code cell untrusted, and no nbfanout rule in any <style> the page has
#: (JupyterLab's sanitizer removed the snapshots' <style> elements; the saved file still holds them).
UNTRUSTED = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells, trusted = [];
    for (let i = 0; i < cells.length; i++) { const c = cells.get(i); if (c.type === 'code') trusted.push(c.trusted); }
    const ours = Array.from(document.styleSheets).filter(sheet => {
        try { return Array.from(sheet.cssRules).some(r => r.cssText.includes('.nbf')); } catch (e) { return false; } });
    return {trusted, styles: document.querySelectorAll('.jp-OutputArea-output style').length, sheets: ours.length,
            roots: document.querySelectorAll('.jp-OutputArea-output div.nbf').length};
}"""

#: How many lines an element's text takes: the distinct tops of its text's boxes (3 px apart at least).
LINES_JS = """const lines = el => {
    const tops = [], walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
        if (!n.textContent.trim()) continue;
        const range = document.createRange(); range.selectNodeContents(n);
        for (const b of range.getClientRects()) if (b.width > 0) tops.push(b.top);
    }
    tops.sort((a, b) => a - b);
    let count = 0, last = -1e9;
    for (const t of tops) if (t - last > 3) { count++; last = t; }
    return count;
};"""

#: One finished dashboard's boxes: the output area, each header cell's edges, where each name's text starts
#: inside its cell, the lines of every cell, and the cells that reach outside the area (folded ones aside).
DASHBOARD_BOXES = """(cell) => {
    """ + LINES_JS + """
    const area = cell.querySelector('.jp-Cell-outputArea').getBoundingClientRect();
    const table = cell.querySelector('table.nbf-models');
    const textLeft = td => { const range = document.createRange(); range.selectNodeContents(td);
        return Math.min(...Array.from(range.getClientRects()).filter(b => b.width > 0).map(b => b.left)); };
    const shown = Array.from(cell.querySelectorAll('table.nbf-models td, table.nbf-models th'))
        .map(td => td.getBoundingClientRect()).filter(r => r.width > 0);
    return {
        area: [Math.round(area.left), Math.round(area.right)],
        table: [Math.round(table.getBoundingClientRect().left), Math.round(table.getBoundingClientRect().right)],
        edges: Array.from(table.querySelectorAll('th')).map(th => {
            const r = th.getBoundingClientRect(); return [Math.round(r.left), Math.round(r.right)]; }),
        names: Array.from(cell.querySelectorAll('tr.nbf-row td.nbf-name')).map(td =>
            [td.title, Math.round(textLeft(td) - td.getBoundingClientRect().left), getComputedStyle(td).textAlign]),
        lines: Array.from(table.querySelectorAll('tr')).map(tr => Math.max(...Array.from(tr.cells).map(lines))),
        outside: shown.filter(r => r.right > area.right + 1 || r.left < area.left - 1).length,
    };
}"""

#: The state cells of the rows that failed with OpenAI's long message about the revoked key.
LONG_MESSAGES = """(cell) => {
    """ + LINES_JS + """
    const area = cell.querySelector('.jp-Cell-outputArea').getBoundingClientRect();
    return Array.from(cell.querySelectorAll('tr.nbf-row td.nbf-state'))
        .filter(td => (td.title || '').includes('Incorrect API key provided')).map(td => {
            const r = td.getBoundingClientRect(), s = getComputedStyle(td);
            return {cut: td.scrollWidth > td.clientWidth, ellipsis: s.textOverflow, overflow: s.overflowX, lines: lines(td),
                    inside: r.left >= area.left - 1 && r.right <= area.right + 1, width: Math.round(r.width)};
        });
}"""


def _received_notebook(root: Path) -> Path:
    """The seed15 notebook executed in a real kernel (nbclient) and saved, as a teammate sends it: without
    its background run (which would outlive the kernel) and with a note appended, so its content is no
    notebook this or any server has signed."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(HERE / NOTEBOOK, as_version=4)
    nb.cells = nb.cells[:10]  # cells 2 (fifteen models), 6 (five long failures), 9 (three cards)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(root)}},
                   iopub_timeout=30).execute()
    nb.cells.append(nbformat.v4.new_markdown_cell("Received from a teammate: opened here without being run."))
    path = root / RECEIVED
    nbformat.write(nb, path)
    return path


def _assert_dashboard_holds(boxes: dict[str, Any], name: str) -> None:
    (left, right), lines = boxes["area"], boxes["lines"]
    assert left - 1 <= boxes["table"][0] and boxes["table"][1] <= right + 1, f"{name}: the table leaves the output area: {boxes}"
    assert boxes["outside"] == 0, f"{name}: {boxes['outside']} cells reach past the output area"
    assert len(boxes["names"]) == 15 and all(align == "left" and 0 <= gap <= 10 for _, gap, align in boxes["names"]), \
        f"{name}: model names are not left-aligned (text start inside the cell, px): {boxes['names']}"
    assert lines and max(lines) == 1, f"{name}: a row wraps (lines per row: {lines})"
    widths = [r - lft for lft, r in boxes["edges"]]
    assert [abs(w - want) <= 1 for w, want in zip(widths[2:], (128, 48, 72, 100, 80))] == [True] * 5, \
        f"{name}: the fixed columns (progress, tries, latency, tokens, cost) are {widths[2:]} px wide"


def test_a_received_notebook_opened_untrusted_keeps_the_snapshots_layout(chromium: str, tmp_path: Path) -> None:
    """A notebook run and saved elsewhere, opened in JupyterLab without running it: untrusted, so its
    outputs are sanitized and the snapshots' <style> is gone. Their inline styles must hold the layout:
    names left-aligned, fixed columns inside the output area on one line each, long failure messages
    cut with an ellipsis in their cell, the three answers as cards side by side."""
    from playwright.sync_api import sync_playwright

    root = tmp_path / "lab"
    root.mkdir()
    saved = _received_notebook(root)
    assert saved.read_text(encoding="utf-8").count("<style>") >= 3, "the saved snapshots have no <style> to strip"
    ARTIFACTS.mkdir(exist_ok=True)
    with _lab_server(tmp_path, root) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.goto(f"{url}/lab/tree/{RECEIVED}?reset&token={TOKEN}")  # ?reset: no workspace restored
            run, broken, three = (page.locator(".jp-Cell").nth(i) for i in (2, 6, 9))
            run.locator(".jp-OutputArea-output .nbf-row").first.wait_for(timeout=60_000)
            for cell in (broken, three):
                cell.scroll_into_view_if_needed()  # cells far down render only when in view
                cell.locator(".jp-OutputArea-output .nbf-row").first.wait_for(timeout=60_000)
            state = page.evaluate(UNTRUSTED)
            assert state["trusted"] and not any(state["trusted"]), f"the notebook is trusted: {state}"
            assert state["styles"] == 0 and state["sheets"] == 0, f"nbfanout's <style> reached the page: {state}"
            assert state["roots"] >= 3, state

            run.scroll_into_view_if_needed()
            dashboard = run.evaluate(DASHBOARD_BOXES)
            run.locator(".jp-Cell-outputArea").screenshot(path=str(ARTIFACTS / "untrusted_dashboard.png"))
            _assert_dashboard_holds(dashboard, "fifteen models")

            broken.scroll_into_view_if_needed()
            failures = broken.evaluate(DASHBOARD_BOXES)
            broken.locator(".jp-Cell-outputArea").screenshot(path=str(ARTIFACTS / "untrusted_failures.png"))
            _assert_dashboard_holds(failures, "five failures")
            assert failures["edges"] == dashboard["edges"], "long messages moved the columns"
            cut = broken.evaluate(LONG_MESSAGES)
            assert cut, "no row shows the revoked key's message"
            for td in cut:
                assert td["cut"] and td["ellipsis"] == "ellipsis" and td["overflow"] == "hidden", f"not ellipsized: {td}"
                assert td["inside"] and td["lines"] == 1, f"the message leaves its cell or wraps: {td}"

            three.scroll_into_view_if_needed()
            three.locator(".jp-Cell-outputArea").screenshot(path=str(ARTIFACTS / "untrusted_cards.png"))
            _assert_cards_side_by_side(three, 3)
            _assert_readable(page)  # the greys that replace the theme's variables still read
        finally:
            browser.close()
