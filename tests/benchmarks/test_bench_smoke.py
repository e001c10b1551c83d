"""`make bench` in miniature, so the benchmark runner cannot rot unnoticed.

``benchmarks/bench.py --smoke`` runs its smallest scenario (20 prompts x 2 models, limits
that bind a little) once with every client, each in its own process against its own
sandbox process, and writes its report to a temporary path. This checks that the report
has a row per client with answered counts and a numeric wall / bound ratio. No timing is
asserted here: speed is what the benchmark itself reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ("nbfanout", "litellm", "naive", "httpx")


def _row(report: str, client: str) -> list[str]:
    rows = [line for line in report.splitlines() if line.startswith(f"| {client} |")]
    assert rows, f"no row for {client} in the report:\n{report}"
    return [cell.strip() for cell in rows[0].strip().strip("|").split("|")]


@pytest.mark.timeout(240)
def test_smoke_run_reports_every_client(tmp_path: Path) -> None:
    out = tmp_path / "smoke.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=230,
    )
    assert proc.returncode == 0, f"bench.py --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = out.read_text(encoding="utf-8")
    header = _row(report, "client")
    col = {name: header.index(name) for name in ("answered / asked", "wall / bound", "requests sent")}
    for client in CLIENTS:
        cells = _row(report, client)
        answered, asked = (int(x) for x in cells[col["answered / asked"]].split()[0:3:2])
        assert asked == 40 and 0 < answered <= asked, (client, cells)
        assert float(cells[col["wall / bound"]]) > 0, (client, cells)
        assert int(cells[col["requests sent"]]) >= answered, (client, cells)

    runs = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["runs"]
    assert sorted(r["client"] for r in runs) == sorted(CLIENTS)
    # The compared clients never leave loopback (litellm's price map stays the bundled one).
    assert all(r["off_loopback_count"] == 0 for r in runs if r["client"] != "nbfanout"), runs


@pytest.mark.timeout(240)
def test_shared_key_smoke_run_reports_both_modes(tmp_path: Path) -> None:
    """benchmarks/shared_key.py --smoke: four processes with and without Redis, and the store's latency."""
    from tests.conftest import require_redis

    require_redis()
    out = tmp_path / "smoke.md"
    out.write_text("# results\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shared_key.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, f"shared_key.py --smoke failed:\n{proc.stderr[-3000:]}"
    report = out.read_text(encoding="utf-8")
    assert report.startswith("# results") and "<!-- shared:begin -->" in report  # added, nothing else lost
    result = json.loads(out.with_suffix(".shared.json").read_text(encoding="utf-8"))
    modes = {r["mode"]: r for r in result["runs"]}
    assert set(modes) == {"redis", "none"}
    assert modes["redis"]["answered"] == modes["redis"]["asked"] == 20 and modes["redis"]["refusals"] == 0
    assert result["latency"]["n"] == 200 and result["latency"]["p95_ms"] > 0
