"""The ``nbfanout`` command: run, map, resume, batches, models, limits, cooldowns, doctor, sandbox, demo.

``run`` and ``map`` take ``--batch`` (or ``--via batch|auto|live``) to send through the providers'
batch APIs; their state file (``--batch-state``, default under ``.nbfanout/batches/``) is what
``nbfanout resume PATH`` picks up after an interruption and what ``nbfanout batches`` lists.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

from nbfanout._argtypes import positive_float, positive_int
from nbfanout._batchflags import batch_via, new_batch_state
from nbfanout.config import parse_provider_rpm
from nbfanout.core.errors import FanoutError, UsageError
from nbfanout.core.events import RequestEvent
from nbfanout.progress import FINAL_STATES, BatchNews, DashboardModel, TextNews
from nbfanout.render import batch_line, duration, row_state

__all__ = ["main"]


def _redrawable(out: TextIO) -> bool:
    """Whether lines can be redrawn in place: a terminal, but not a notebook's ``!`` shell escape,
    whose pty says it is one while the output area shows cursor movements as garbage."""
    return out.isatty() and "JPY_PARENT_PID" not in os.environ


T = TypeVar("T")

#: Seconds of silence after which the plain-text progress says what is still open.
HEARTBEAT_S = 10.0


class Heartbeat(Protocol):
    def heartbeat(self, quiet_s: float = HEARTBEAT_S) -> None: ...


async def with_heartbeat(work: Awaitable[T], progress: Heartbeat | None, every_s: float = HEARTBEAT_S) -> T:
    """Await ``work``; every ``every_s`` until it ends, let ``progress`` say what is still open."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every_s)
            if done:
                return task.result()
            if progress is not None:
                progress.heartbeat(every_s)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _answer_row(event: Any) -> str | None:
    """The model row an event belongs to: its requested model's, for answers (not judging or a synthesis)."""
    if isinstance(event, RequestEvent) and event.purpose == "answer":
        return event.requested
    return None


class TerminalProgress:
    """One line per model, redrawn in place on a terminal; a line per change worth one otherwise.

    Its rows are the notebook's (``nbfanout.progress``, rendered by ``render.row_state``), so the
    terminal and the dashboard say the same about every model: who asked to wait, via whom, why.
    """

    def __init__(self, models: Sequence[str], out: TextIO = sys.stderr,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.models = list(models)
        self.model = DashboardModel(self.models)
        self.out = out
        self.tty = _redrawable(out)
        self.clock = clock  # for the heartbeat's silences and the elapsed time shown
        self._drawn = 0
        self._last = 0.0
        self._started = self._said_at = clock()
        self._news = TextNews()
        self._batch_news = BatchNews()
        self.state_path: Path | None = None  # a batch map's state file, said once its first batch exists
        self.said_path = False

    @property
    def finished(self) -> int:
        return sum(row.state in FINAL_STATES for row in self.model.rows.values())

    def state(self, name: str) -> str:
        """What model ``name`` is doing, as the dashboard says it, with the CLI's extra facts."""
        row = self.model.rows[name]
        text = row_state(row, self.model.now())
        if row.state == "running" and row.chars:
            text += f", {row.chars:,} characters"
        elif row.state == "done" and row.latency_s is not None:
            text += f" in {row.latency_s:.2f}s, {row.input_tokens}+{row.output_tokens} tokens"
        return text

    def __call__(self, event: Any) -> None:
        if not self.model.apply(event):
            return
        if event.kind == "batch_progress":
            _say_state_file(self)
        if self.tty:
            self._redraw(force=event.kind in ("model_completed", "model_failed", "batch_progress"))
            return
        for row in self._news(self.model):
            if row is self.model.synthesis or row.state == "in_batch":  # the summary / the batch's own line says it
                continue
            print(f"  [{self.finished}/{len(self.models)}] {row.name}: {self.state(row.name)}", file=self.out, flush=True)
            self._said_at = self.clock()
        for b in self._batch_news(self.model):  # created, each new status word, read
            print(f"  batch {batch_line(b, self.model.now())}", file=self.out, flush=True)
            self._said_at = self.clock()

    def heartbeat(self, quiet_s: float = HEARTBEAT_S) -> None:
        """While nothing happens (a long wait, slow answers, a provider batch): what is still open, with
        each open batch's counts, at most every ``quiet_s``."""
        now = self.clock()
        if self.tty:
            self._redraw(force=True)  # countdowns and the elapsed time move on
            return
        if now - self._said_at < quiet_s or self.finished == len(self.models):
            return
        self._said_at = now
        open_rows = [f"{m} {self.state(m)}" for m in self.models if self.model.rows[m].state not in FINAL_STATES]
        more = f" (+{len(open_rows) - 3} more)" if len(open_rows) > 3 else ""
        print(f"  [{self.finished}/{len(self.models)}] {now - self._started:.0f} s, still open: "
              + "; ".join(open_rows[:3]) + more, file=self.out, flush=True)
        _beat_batches(self.model, self.out)

    def _redraw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        width = max(len(m) for m in self.models)
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")
        self.out.write(f"\x1b[2K  {self.finished}/{len(self.models)} finished · {now - self._started:.0f} s\n")
        for m in self.models:
            self.out.write(f"\x1b[2K  {m:<{width}}  {self.state(m)}\n")
        lines = _batch_lines(self.model)
        for line in lines:
            self.out.write(f"\x1b[2K  {line}\n")
        self._drawn = len(self.models) + 1 + len(lines)
        self.out.flush()


def _batch_lines(model: DashboardModel) -> list[str]:
    """A line per provider batch of the run, for the redrawn terminal view."""
    now = model.now()
    return [f"batch {batch_line(b, now)}" for b in model.batches.values()]


def _beat_batches(model: DashboardModel, out: TextIO) -> None:
    """The heartbeat's batch lines: each open batch with the counts its provider last reported."""
    now = model.now()
    for b in model.batches.values():
        if b.open:
            print(f"  batch {batch_line(b, now)}", file=out, flush=True)


def _say_state_file(progress: TerminalProgress | MapProgress) -> None:
    """Once the first batch exists, where its state file is: what ``resume`` needs after an interruption."""
    if progress.state_path is not None and not progress.said_path:
        progress.said_path = True
        if progress.tty and progress._drawn:  # above the redrawn block, which is drawn again below it
            progress.out.write(f"\x1b[{progress._drawn}F\x1b[J")
            progress._drawn = 0
        print(f"  batch state: {progress.state_path} (after an interruption: nbfanout resume {progress.state_path})",
              file=progress.out, flush=True)


def _interrupted_with_batches(progress: TerminalProgress | MapProgress | None) -> None:
    """Ctrl-C stops the waiting, not the provider's batches: say how to pick them up or cancel them."""
    if progress is None or not progress.model.batches or progress.state_path is None:
        return
    path = progress.state_path
    print(f"nbfanout: the provider batches go on; `nbfanout resume {path}` picks them up, "
          f"`nbfanout batches --cancel {path}` cancels them", file=sys.stderr, flush=True)


class MapProgress:
    """"Completed N/M" per model for a map: redrawn on a terminal, a line per tenth done otherwise.

    Provider batches (``--batch``) add a line each: on a terminal redrawn with the rest, otherwise
    printed when a batch is created, changes status or is read, and on every heartbeat while the
    run is quiet (a batch may take hours: the terminal must not look hung). A model's requests
    inside a batch read "in batch <status>", not as a rate of answers."""

    def __init__(self, models: Sequence[str], per_model: int, out: TextIO = sys.stderr,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.models = list(models)
        self.total = per_model
        self.out = out
        self.clock = clock
        self.done = {m: 0 for m in self.models}
        self.failed = {m: 0 for m in self.models}
        self.model = DashboardModel(self.models)  # the batches and the rows' "in batch" counts
        self.tty = _redrawable(out)
        self._started = self._said_at = clock()
        self._drawn = 0
        self._last = 0.0
        self._batch_news = BatchNews()
        self.state_path: Path | None = None
        self.said_path = False

    def __call__(self, event: Any) -> None:
        self.model.apply(event)
        if self.tty and self.model.batches and event.kind == "utilization":  # elapsed times move on
            now = self.clock()
            if now - self._last >= 0.5:
                self._last = now
                self._redraw()
            return
        if event.kind == "batch_progress":
            _say_state_file(self)
            if self.tty:
                self._redraw()
            else:
                for b in self._batch_news(self.model):
                    print(f"  batch {batch_line(b, self.model.now())}", file=self.out, flush=True)
                    self._said_at = self.clock()
            return
        if event.kind not in ("model_completed", "model_failed"):
            return
        name = _answer_row(event)
        if name not in self.done:
            return
        self.done[name] += 1
        self.failed[name] += event.kind == "model_failed"
        n = self.done[name]
        if self.tty:
            now = self.clock()
            if now - self._last >= 0.1 or n == self.total:
                self._last = now
                self._redraw()
            return
        # a batch's results arrive all at once, as it is read: its model's line once, when all are in
        batched = self.model.rows[name].via == "batch" if name in self.model.rows else False
        if n == self.total or (not batched and n % max(1, self.total // 10) == 0):
            print(f"  {self._line(name)}", file=self.out, flush=True)
            self._said_at = self.clock()

    def _line(self, name: str) -> str:
        """``model: Completed 30/100, 2 failed, 3.1/s, ETA 23 s`` (rate and ETA from this model's pace so far),
        or for a batched model ``model: Completed 0/100, 100 in batch in_progress (provider: 40 ended)``."""
        done = self.done[name]
        failed = f", {self.failed[name]} failed" if self.failed[name] else ""
        row = self.model.rows.get(name)
        if row is not None and row.via == "batch":
            held = ""
            if row.in_batch:
                reported = sum(b.reported for b in self.model.batches_of(name) if b.open)
                held = f", {row.in_batch} {row.detail}" + (f" (provider: {reported} ended)" if reported else "")
            return f"{name}: Completed {done}/{self.total}{failed}{held}"
        elapsed = self.clock() - self._started
        pace = ""
        if done and elapsed > 0:
            rate = done / elapsed
            pace = f", {rate:.1f}/s" + (f", ETA {duration((self.total - done) / rate)}" if done < self.total else "")
        return f"{name}: Completed {done}/{self.total}{failed}{pace}"

    def heartbeat(self, quiet_s: float = HEARTBEAT_S) -> None:
        """While nothing is said for ``quiet_s``: the models still open and each open batch's counts."""
        now = self.clock()
        if self.tty:
            self._redraw()
            return
        if now - self._said_at < quiet_s or all(self.done[m] >= self.total for m in self.models):
            return
        self._said_at = now
        still = [self._line(m) for m in self.models if self.done[m] < self.total]
        more = f" (+{len(still) - 3} more)" if len(still) > 3 else ""
        print(f"  {now - self._started:.0f} s, still open: " + "; ".join(still[:3]) + more, file=self.out, flush=True)
        _beat_batches(self.model, self.out)

    def _redraw(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")
        for m in self.models:
            self.out.write(f"\x1b[2K  {self._line(m)}\n")
        lines = _batch_lines(self.model)
        for line in lines:
            self.out.write(f"\x1b[2K  {line}\n")
        self._drawn = len(self.models) + len(lines)
        self.out.flush()


def read_text_file(path: str, flag: str) -> str:
    """The UTF-8 text of a file a flag names, or a UsageError saying what is wrong with it."""
    file = Path(path)
    if not file.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if file.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; name a text file")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot be read ({exc.strerror or exc})") from exc
    if b"\x00" in data[:8192]:
        raise UsageError(f"{flag} {path}: looks binary (it holds NUL bytes); pass a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{flag} {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc


def check_out_dir(path: str | None) -> None:
    """Refuse an --out that cannot take results before the run, so no answer is lost after it."""
    if path and Path(path).exists() and not Path(path).is_dir():
        raise UsageError(f"--out {path}: exists and is not a directory; name a new or existing directory")


def read_prompts(path: str, column: str | None) -> list[str]:
    """Prompts from a file: .jsonl (a string or {"prompt": ...} per line, or ``column``), .csv (the
    ``column`` column, default "prompt"), anything else one prompt per non-empty line."""
    file = Path(path)
    text = read_text_file(path, "--prompts")
    key = column or "prompt"
    prompts: list[str] = []
    if file.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UsageError(f"--prompts {path}, line {n}: not JSON ({exc.msg})") from exc
            value = row if isinstance(row, str) else row.get(key) if isinstance(row, dict) else None
            if not isinstance(value, str):
                raise UsageError(f"--prompts {path}, line {n}: expected a string or an object with a {key!r} string")
            prompts.append(value)
    elif file.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if key not in (reader.fieldnames or []):
            raise UsageError(f"--prompts {path}: no column {key!r}; its columns are {', '.join(reader.fieldnames or [])}"
                             " (choose one with --column)")
        prompts = [row[key] for row in reader if (row.get(key) or "").strip()]
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"--prompts {path}: no prompts in it")
    return prompts


def _summary_table(result: Any, out: TextIO) -> None:
    """The summary the notebook's text view prints too (render.result_text), after a blank line."""
    from nbfanout.render import result_text

    print("\n" + result_text(result), file=out)


async def _rerun(args: argparse.Namespace) -> int:
    """``run --rerun DIR``: ask again only the models that failed in DIR/results.json, and merge."""
    from nbfanout.core.results import FanoutResult

    if args.models or args.pool or args.prompt is not None or args.prompt_file or args.one or args.file:
        raise UsageError("--rerun resends the saved prompt to the models that failed in it: leave out "
                         "--models, --pool, --prompt, --prompt-file, --file and --one")
    saved = Path(args.rerun) / "results.json"
    if not saved.is_file():
        raise UsageError(f"--rerun {args.rerun}: no results.json in it (write one with run --out DIR)")
    before = FanoutResult.from_json(saved.read_text(encoding="utf-8"))
    failed = [r.requested for r in before.results if not r.ok]
    fx = _fanout(args)
    print(f"rerunning {len(failed)} of {len(before.results)} models: {', '.join(failed) or 'none failed'}", file=sys.stderr)
    if failed and not args.json:
        fx.subscribe(TerminalProgress(failed))
    params: dict[str, Any] = {"max_tokens": args.max_tokens} if args.max_tokens is not None else {}
    result = await fx.rerun(before, timeout=args.timeout, **params)
    result.save(args.out or args.rerun)
    if args.json:
        print(result.to_json())
    else:
        _summary_table(result, sys.stdout)
    _say_shared(fx)
    ok = len(result.succeeded)
    return 0 if ok == len(result.results) or (args.partial_success_ok and ok) else 1


def _fanout(args: argparse.Namespace) -> Any:
    """The Fanout a run or map command asks for: config, request caps, concurrency, shared budgets."""
    from nbfanout.core.fanout import Fanout

    return Fanout(args.config, provider_rpm=parse_provider_rpm(getattr(args, "provider_rpm", None)),
                  concurrency=getattr(args, "concurrency", None), shared=getattr(args, "shared", None))


def _say_shared(fx: Any) -> None:
    """The summary's last word when budgets were kept with other processes (or could not be)."""
    if fx.shared is None:
        return
    joint = max((b.processes or 0 for b in fx.budgets.statistics()), default=0)
    if fx.shared.active:
        print(f"budgets shared through {fx.shared.config.shown}"
              + (f" with up to {joint} processes" if joint > 1 else " (no other process was using them)"), file=sys.stderr)
    else:
        print(f"budgets were kept in this process: {fx.shared.config.shown} was unreachable", file=sys.stderr)


def _batch_kwargs(args: argparse.Namespace, via: str) -> dict[str, Any]:
    """``map``'s keyword arguments for --batch / --via / --batch-state / --batch-after."""
    if via == "live":
        return {}
    out: dict[str, Any] = {"via": via, "batch_state": new_batch_state(args.batch_state, "nbfanout resume")}
    if args.batch_after is not None:
        out["batch_after_s"] = args.batch_after
    return out


async def _run(args: argparse.Namespace) -> int:
    from nbfanout.core.results import FanoutResult

    if args.rerun:
        if batch_via(args) != "live":
            raise UsageError("--rerun resends one prompt's failed models live; a map's failures go again by batch "
                             "with Fanout.rerun(batch, via='batch'): drop --batch / --via")
        return await _rerun(args)

    check_out_dir(args.out)
    prompt = args.prompt if args.prompt is not None else (
        read_text_file(args.prompt_file, "--prompt-file") if args.prompt_file else None)
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no prompt: pass --prompt TEXT, --prompt-file F, or pipe the prompt on standard input")
        prompt = sys.stdin.read()
    for f in args.file or []:
        prompt += f"\n\n--- {f} ---\n" + read_text_file(f, "--file")
    models = [m for part in (args.models or []) for m in part.replace(",", " ").split()] or None
    via = batch_via(args)
    if via != "live" and (args.one or args.stream):
        raise UsageError(f"--{'one' if args.one else 'stream'} needs live requests: a provider batch answers "
                         "every request at once, later; drop it or --batch / --via")
    fx = _fanout(args)
    if args.dry_run:
        from nbfanout.render import plan_text  # the notebook's %%fanout --dry-run shows the same rows

        print(plan_text(fx.plan(prompt, models, pool=args.pool, max_tokens=args.max_tokens)))
        return 0
    names = fx._resolve(models, args.pool, prompt)
    live = args.stream and len(names) == 1 and not args.json and not args.one
    if live:  # one answer: print it as it arrives
        fx.subscribe(lambda e: print(e.text, end="", flush=True) if e.kind == "text_delta" else None)
    progress: TerminalProgress | None = None
    if not live and not args.json:
        progress = TerminalProgress(names)
        fx.subscribe(progress)
    batching = _batch_kwargs(args, via)
    if progress is not None and batching:
        progress.state_path = batching["batch_state"]
    params: dict[str, Any] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.stream:
        params["stream"] = True
    if args.one:
        if args.synthesize:
            raise UsageError("--one asks for one answer, so there is nothing to synthesize: drop --synthesize or --one")
        await with_heartbeat(fx.ask(prompt, models=models, pool=args.pool, timeout=args.timeout, **params), progress)
        assert isinstance(fx.last_result, FanoutResult)
        result = fx.last_result
    elif batching:  # one prompt as a map: the same rows, each through its provider's batch API where it has one
        try:
            batch = await with_heartbeat(fx.map([prompt], models, pool=args.pool, timeout=args.timeout,
                                                **batching, **params), progress)
        except asyncio.CancelledError:
            _interrupted_with_batches(progress)
            raise
        result = replace(batch.rows[0], elapsed_s=batch.elapsed_s)
    else:
        result = await with_heartbeat(fx.run(prompt, models, pool=args.pool, timeout=args.timeout, **params), progress)
    if args.synthesize and result.succeeded:
        result = await fx.synthesize(result, args.synthesize)
    elif args.synthesize:
        print(f"nbfanout: no model answered, so nothing was synthesized by {args.synthesize}", file=sys.stderr)
    if args.out:
        result.save(args.out)
    if args.json:
        print(result.to_json())
    else:
        _summary_table(result, sys.stdout)
        if result.synthesis is not None:
            print(f"\nSynthesis by {result.synthesis.model}:\n{result.synthesis.text}")
    _say_shared(fx)
    ok = len(result.succeeded)
    if ok == len(result.results):
        return 0
    return 0 if (args.partial_success_ok and ok) else 1


async def _map(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompts, args.column)
    models = [m for part in (args.models or []) for m in part.replace(",", " ").split()] or None
    check_out_dir(args.out)
    via = batch_via(args)
    if via != "live" and args.route:
        raise UsageError("--route picks one model per prompt as capacity frees up, which a provider batch "
                         "cannot: drop --route or --batch / --via")
    fx = _fanout(args)
    names = fx._resolve(models, args.pool, prompts[0])
    if args.judge:
        fx.config.model(args.judge)
    shown = names[:1] if args.route else names
    batching = _batch_kwargs(args, via)  # a --batch-state that holds a map already is refused before anything
    print(f"{len(prompts)} prompts × {len(names)} models"
          + (" (one answer per prompt, routed)" if args.route else "")
          + ("" if via == "live" else f", via {via}"), file=sys.stderr)
    progress = MapProgress(shown, len(prompts))
    fx.subscribe(progress)
    if batching:
        progress.state_path = batching["batch_state"]
    params: dict[str, Any] = {"max_tokens": args.max_tokens} if args.max_tokens is not None else {}
    try:
        batch = await with_heartbeat(fx.map(prompts, models, pool=args.pool, judge=args.judge, route=args.route,
                                            timeout=args.timeout, **batching, **params), progress)
    except asyncio.CancelledError:
        _interrupted_with_batches(progress)
        raise
    return _map_output(fx, batch, args)


def _map_output(fx: Any, batch: Any, args: argparse.Namespace) -> int:
    """A map's results as JSONL in prompt order (stdout, or DIR/results.jsonl with --out), a summary on
    stderr, and the exit status: 0 when every answer came (or at least one, with --partial-success-ok)."""
    lines = [json.dumps(rec, ensure_ascii=False) for rec in batch.to_records()]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {len(lines)} results to {out / 'results.jsonl'}", file=sys.stderr)
    else:
        print("\n".join(lines))
    results = batch.results
    ok = sum(r.ok for r in results)
    unpriced = f" + {len(batch.unpriced)} unpriced" if batch.unpriced else ""
    by_batch = sum(r.via == "batch" for r in results)
    how = f" ({by_batch} via batch)" if by_batch else ""
    print(f"{ok}/{len(results)} succeeded in {batch.elapsed_s:.2f}s{how}; ${batch.total_cost:.5f}{unpriced}",
          file=sys.stderr)
    _say_shared(fx)
    if ok == len(results):
        return 0
    return 0 if (args.partial_success_ok and ok) else 1


async def _resume(args: argparse.Namespace) -> int:
    """``resume PATH``: the map a state file describes, finished, printed as ``map`` prints it."""
    from nbfanout.core.batch import BatchState

    check_out_dir(args.out)
    state = BatchState.load(args.path)  # a missing or broken file: its UsageError says which and why
    fx = _fanout(args)
    if args.judge:
        fx.config.model(args.judge)
    open_jobs = sum(j.state in ("running", "ended") for j in state.jobs)
    print(f"resuming {state.path}: {len(state.prompts)} prompts × {len(state.models)} models, "
          f"{len(state.jobs)} batch(es), {open_jobs} not read yet", file=sys.stderr)
    progress = MapProgress(state.models, len(state.prompts))
    progress.state_path, progress.said_path = state.path, True
    progress.model.seed_batches(state.jobs)
    fx.subscribe(progress)
    try:
        batch = await with_heartbeat(fx.resume(state.path, judge=args.judge, concurrency=args.concurrency), progress)
    except asyncio.CancelledError:
        _interrupted_with_batches(progress)
        raise
    return _map_output(fx, batch, args)


def _job_line(job: Any) -> str:
    from nbfanout.render import short_batch_id

    counts = f"{job.succeeded}/{job.total} ✓" + (f" · {job.failed} ✗" if job.failed else "")
    return (f"{job.model} {short_batch_id(job.batch_id)} {job.status or job.state} · {counts} · {job.state}"
            + (f" — {job.message}" if job.message else ""))


async def _batches(args: argparse.Namespace) -> int:
    """``batches``: the state files under --dir with their batches' status as the providers report it
    now (--saved: as the files hold it); ``--cancel PATH``: ask the providers to cancel its open batches."""
    from nbfanout.core.batch import STATE_DIR, BatchState
    from nbfanout.progress import saved_batches, state_files
    from nbfanout.render import saved_batches_text

    if args.cancel:
        state = BatchState.load(args.cancel)
        running = [j for j in state.jobs if j.state == "running" and j.batch_id]
        if not running:
            print(f"nothing to cancel in {state.path}: none of its {len(state.jobs)} batch(es) is still running")
            return 0
        fx = _fanout(args)
        jobs = await fx.cancel_batches(state.path)
        for job in jobs:
            print(f"  asked {job.provider} to cancel: {_job_line(job)}")
        print(f"cancelled {len(jobs)} batch(es) of {state.path}; requests already done stay readable: "
              f"`nbfanout resume {state.path}` returns them, the others as cancelled")
        return 0
    folder = Path(args.dir) if args.dir else STATE_DIR
    if args.dir and not folder.is_dir():
        raise UsageError(f"--dir {args.dir}: no such directory")
    paths = state_files(folder)
    fx = None if args.saved or not paths else _fanout(args)
    entries = await saved_batches(fx, paths, ask=not args.saved)
    if args.json:
        print(json.dumps([{
            "path": str(e.path), "error": e.error or None, "note": e.note or None, "created_at": e.created_at,
            "config": e.config, "prompts": e.prompts, "models": list(e.models), "batched": list(e.batched),
            "done": e.done, "asked": e.asked,
            "jobs": [{k: v for k, v in j.to_json().items() if k not in ("key_digest", "extra")} for j in e.jobs],
        } for e in entries], indent=2, ensure_ascii=False))
        return 0
    if not paths:
        print(f"no batch state files in {folder} (map --batch writes one per map)")
        return 0
    print(saved_batches_text(entries))
    return 0


def _models(args: argparse.Namespace) -> int:
    from nbfanout.config import load_config
    from nbfanout.render import models_rows, models_text  # pure text, no widgets

    config = load_config(args.config)
    filters = {"pool": args.pool, "provider": args.provider, "capability": args.capability}
    if args.json:
        print(json.dumps(models_rows(config, **filters), indent=2))
        return 0
    print(models_text(config, **filters))
    return 0


def _state(args: argparse.Namespace) -> Any:
    from nbfanout.config import load_config
    from nbfanout.core.state import LearnedLimits

    d = load_config(args.config).defaults
    return LearnedLimits(Path(d.state_path) if d.state_path else None, ttl_s=d.learned_ttl_s)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _limits(args: argparse.Namespace) -> int:
    state = _state(args)
    if args.forget is not None:
        n = state.forget(args.forget or None)
        state.save()
        print(f"forgot {n} learned limit(s){f' matching {args.forget!r}' if args.forget else ''} in {state.path}")
        return 0
    entries = state.entries()
    now = state.wall()
    if args.json:
        print(json.dumps([{"scope": e.scope, "metric": e.metric, "value": e.value, "learned_at": e.learned_at,
                           "expires_at": e.expires_at} for e in entries], indent=2))
        return 0
    print(f"learned limits in {state.path} (each trusted for {_age(state.ttl_s)}):")
    for e in entries:
        print(f"  {e.scope:<50} {e.metric:<12} {e.value:>12,.0f}   learned {_age(now - e.learned_at)} ago, "
              f"expires in {_age(e.expires_at - now)}")
    if not entries:
        print("  none")
    return 0


def _cooldowns(args: argparse.Namespace) -> int:
    state = _state(args)
    if args.clear is not None:
        n = state.clear_cooldowns(None if not args.clear else (lambda scope: args.clear in scope))
        state.save()
        print(f"cleared {n} cooldown(s){f' matching {args.clear!r}' if args.clear else ''} in {state.path}")
        return 0
    live = state.cooldowns()
    now = state.wall()
    if args.json:
        print(json.dumps([{"scope": c.scope, "seconds_left": c.until - now, "reason": c.reason} for c in live], indent=2))
        return 0
    print(f"cooldowns saved in {state.path}:")
    for c in live:
        print(f"  {c.scope:<50} {_age(c.until - now):>10} left   {c.reason}")
    if not live:
        print("  none")
    return 0


def _probe_model(config: Any, provider_id: str) -> Any:
    """The provider's cheapest chat model, for doctor's one-token request (None: it has none)."""
    chat = [m for m in config.models.values()
            if m.provider == provider_id and "transcription" not in m.capabilities]
    return min(chat, key=lambda m: (m.input_price is None, m.input_price or 0.0, m.name), default=None)


async def _doctor(args: argparse.Namespace) -> int:
    import httpx

    from nbfanout.config import load_config
    from nbfanout.core.errors import ErrorCategory, ProviderError
    from nbfanout.providers import adapter_for
    from nbfanout.providers.base import ChatRequest, Endpoint, Message

    # a listing answers for an exhausted key too: only a request shows the quota is gone
    fatal = {ErrorCategory.AUTH, ErrorCategory.PERMISSION, ErrorCategory.QUOTA_EXHAUSTED, ErrorCategory.MISSING_KEY}
    config = load_config(args.config)
    print(f"config: {config.source}")
    bad = 0
    async with httpx.AsyncClient(timeout=20) as client:
        for provider in config.providers.values():
            if not provider.keys:
                print(f"  – {provider.id}: no key (set {' or '.join(provider.key_vars)})")
                continue
            adapter = adapter_for(provider.wire)
            probe = None if args.no_request else _probe_model(config, provider.id)
            for key in provider.keys:
                endpoint = Endpoint(provider.id, provider.base_url, key.value, dict(provider.headers), dict(provider.params))
                where = f"{provider.id} {key.id} ({key.origin})"
                try:
                    found = await adapter.list_models(client, endpoint)
                    note = f"{len(found)} models listed"
                    if probe is not None:
                        await adapter.complete(client, endpoint, ChatRequest(probe.model_id, (Message("user", "ping"),),
                                                                             max_tokens=1))
                        note += f"; {probe.name} answered a 1-token request"
                except ProviderError as exc:
                    info = exc.info
                    status = f" HTTP {info.status}" if info.status else ""
                    if info.category in fatal:
                        bad += 1
                        print(f"  ✗ {where}: {info.category.value}{status}: {info.message}")
                        continue
                    note = f"valid, but {info.category.value}{status} right now: {info.message}"
                    print(f"  ✓ {where}: {note}")
                    continue
                print(f"  ✓ {where}: valid, {note}")
    return 1 if bad else 0


def _sandbox(args: argparse.Namespace) -> int:
    import errno

    from nbfanout.sandbox import run_server

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected 0 (any free port) to 65535")
    if args.write_config and not Path(args.write_config).resolve().parent.is_dir():
        raise UsageError(f"--write-config {args.write_config}: its directory does not exist; create it first")
    try:
        run_server(args.host, args.port, args.scenario, args.write_config, allow_remote=args.allow_remote)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"--port {args.port}: already in use on {args.host}; pass another port, or --port 0 "
                             "for any free one") from exc
        raise
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from nbfanout.core.fanout import Fanout
    from nbfanout.sandbox import start_sandbox

    with start_sandbox(args.scenario) as sandbox:
        fx = Fanout(sandbox.config, learn=False)
        models = [f"{p.id}/{m.id}" for p in sandbox.scenario.providers for m in p.models if m.kind == "chat"]
        print(f"sandbox {args.scenario} at {sandbox.url}: fanning one prompt out to {len(models)} models\n", file=sys.stderr)
        fx.subscribe(TerminalProgress(models))
        result = await fx.run("Suggest three ways to make a README easier to follow for a newcomer.", models)
        _summary_table(result, sys.stdout)
        refused = sandbox.stats()["totals"]["rejected"]
        limits = ("rpm", "tpm", "rpd", "concurrency")
        for_limits = sum(v for k, v in refused.items() if k in limits)
        faults = ", ".join(f"{v} {k}" for k, v in refused.items() if k not in limits)
        print(f"sandbox ledger: {for_limits} requests refused for a rate limit"
              + (f"; refused by the scenario's simulated faults: {faults}" if faults else ""))
        return 0 if result.succeeded else 1


def _batch_flags(parser: argparse.ArgumentParser) -> None:
    """--batch, --via, --batch-state, --batch-after: the same on run and map."""
    parser.add_argument("--batch", action="store_true",
                        help="send through the providers' batch APIs (half the price, their own quota; minutes to "
                             "hours); models whose provider has none run live. Same as --via batch")
    parser.add_argument("--via", choices=("live", "batch", "auto"),
                        help="live (default), batch, or auto: batch only the models whose live run the known "
                             "limits make last longer than --batch-after")
    parser.add_argument("--batch-state", metavar="PATH",
                        help="the batch map's state file, for `nbfanout resume` (default: a new file under "
                             ".nbfanout/batches/)")
    parser.add_argument("--batch-after", type=positive_float, metavar="S",
                        help="with --via auto: batch a model whose live run would last longer than S seconds "
                             "(default 600)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbfanout", description="Send prompts to many LLMs at once.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="send one prompt to many models")
    run.add_argument("--models", nargs="+", help="models, space or comma separated (provider/model)")
    run.add_argument("--pool", help="a pool instead of models: fast, research, code, vision, auto")
    run.add_argument("--config", help="config file (default: ./nbfanout.toml)")
    run.add_argument("--prompt", help="the prompt text")
    run.add_argument("--prompt-file", help="read the prompt from this file")
    run.add_argument("--file", action="append", help="attach a file's contents to the prompt (repeatable)")
    run.add_argument("--provider-rpm", help="override request limits: openai:1000,gemini:60")
    run.add_argument("--concurrency", type=positive_int, help="requests in flight at most, over all models")
    run.add_argument("--timeout", type=positive_float, help="seconds per request")
    run.add_argument("--shared", nargs="?", const=True, metavar="URL",
                     help="keep budgets jointly with other processes in Redis at URL (default: $NBFANOUT_REDIS_URL)")
    run.add_argument("--max-tokens", type=positive_int, help="maximum output tokens per answer")
    run.add_argument("--rerun", metavar="DIR",
                     help="ask again only the models that failed in DIR/results.json (from --out), and merge")
    run.add_argument("--stream", action="store_true",
                     help="stream the answers: with one model its text is printed as it arrives")
    run.add_argument("--one", action="store_true",
                     help="one answer from the first of the models (or the pool) that can give it, failing over in order")
    run.add_argument("--synthesize", metavar="MODEL", help="combine the answers into one with MODEL")
    run.add_argument("--out", help="write each answer and results.json into this directory")
    run.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    run.add_argument("--dry-run", action="store_true", help="show the plan; send nothing")
    run.add_argument("--partial-success-ok", action="store_true", help="exit 0 when at least one model succeeded")
    _batch_flags(run)

    batch = sub.add_parser("map", help="send every prompt of a file to many models; JSONL results in prompt order")
    batch.add_argument("--prompts", required=True, metavar="FILE",
                       help="one prompt per line (.txt), a string or {\"prompt\": ...} per line (.jsonl), or a .csv")
    batch.add_argument("--column", help="the .csv column (or .jsonl key) holding the prompt (default: prompt)")
    batch.add_argument("--models", nargs="+", help="models, space or comma separated (provider/model)")
    batch.add_argument("--pool", help="a pool instead of models")
    batch.add_argument("--route", action="store_true",
                       help="one answer per prompt from the first model that can give it, instead of one per model")
    batch.add_argument("--judge", metavar="MODEL", help="score each answer 0-10 with MODEL")
    batch.add_argument("--config", help="config file (default: ./nbfanout.toml)")
    batch.add_argument("--provider-rpm", help="override request limits: openai:1000,gemini:60")
    batch.add_argument("--concurrency", type=positive_int, help="requests in flight at most, over all models")
    batch.add_argument("--timeout", type=positive_float, help="seconds per request")
    batch.add_argument("--shared", nargs="?", const=True, metavar="URL",
                       help="keep budgets jointly with other processes in Redis at URL (default: $NBFANOUT_REDIS_URL)")
    batch.add_argument("--max-tokens", type=positive_int, help="maximum output tokens per answer")
    batch.add_argument("--out", metavar="DIR", help="write results.jsonl into DIR instead of printing it")
    batch.add_argument("--partial-success-ok", action="store_true", help="exit 0 when at least one answer came")
    _batch_flags(batch)

    resume = sub.add_parser("resume", help="pick up a batch map from its state file: wait for its batches, "
                                           "read every answer; JSONL results in prompt order, as map prints them")
    resume.add_argument("path", metavar="PATH", help="the state file (`nbfanout batches` lists them)")
    resume.add_argument("--config", help="config file (default: ./nbfanout.toml); it must hold the keys that "
                                         "created the batches")
    resume.add_argument("--judge", metavar="MODEL", help="score each answer 0-10 with MODEL")
    resume.add_argument("--concurrency", type=positive_int, help="requests in flight at most (what runs live)")
    resume.add_argument("--out", metavar="DIR", help="write results.jsonl into DIR instead of printing it")
    resume.add_argument("--partial-success-ok", action="store_true", help="exit 0 when at least one answer came")

    batches = sub.add_parser("batches", help="list batch maps' state files with their batches' status now, "
                                             "or cancel one's batches")
    batches.add_argument("--dir", metavar="DIR", help="where the state files are (default: .nbfanout/batches)")
    batches.add_argument("--cancel", metavar="PATH", help="ask the providers to cancel this state file's open batches")
    batches.add_argument("--config", help="config file (default: ./nbfanout.toml), to ask the providers")
    batches.add_argument("--saved", action="store_true", help="show the status the files hold; ask no provider")
    batches.add_argument("--json", action="store_true")

    models = sub.add_parser("models", help="list the models: prices, limits (with source and date), capabilities, keys")
    models.add_argument("--config")
    models.add_argument("--pool", help="only this pool's models")
    models.add_argument("--provider", help="only this provider's models")
    models.add_argument("--capability", help="only models with this capability (tools, vision, reasoning, ...)")
    models.add_argument("--json", action="store_true")

    limits = sub.add_parser("limits", help="list the limits learned from providers (saved between runs)")
    limits.add_argument("--config")
    limits.add_argument("--forget", nargs="?", const="", metavar="MATCH",
                        help="forget them all, or those whose scope contains MATCH")
    limits.add_argument("--json", action="store_true")

    cooldowns = sub.add_parser("cooldowns", help="list the waits providers asked for that are not over yet")
    cooldowns.add_argument("--config")
    cooldowns.add_argument("--clear", nargs="?", const="", metavar="MATCH",
                           help="clear them all, or those whose scope contains MATCH")
    cooldowns.add_argument("--json", action="store_true")

    doctor = sub.add_parser("doctor", help="check config and validate each key: its model list, and a 1-token request")
    doctor.add_argument("--config")
    doctor.add_argument("--no-request", action="store_true",
                        help="only list models (free), without the 1-token request that shows an exhausted quota")

    sandbox = sub.add_parser("sandbox", help="serve the simulated providers on loopback")
    sandbox.add_argument("--host", default="127.0.0.1", help="loopback unless --allow-remote")
    sandbox.add_argument("--allow-remote", action="store_true",
                         help="let --host be an address other machines can reach (the sandbox has no real keys, "
                              "but its ledger and faults are anyone's to use)")
    sandbox.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    sandbox.add_argument("--scenario", default="seed15", help="built-in name (seed15, storm, fast) or a TOML file")
    sandbox.add_argument("--write-config", metavar="FILE", help="write an nbfanout.toml pointing at this sandbox")

    demo = sub.add_parser("demo", help="start the sandbox and fan a prompt out to its models")
    demo.add_argument("--scenario", default="seed15")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return asyncio.run(_run(args))
        if args.command == "map":
            return asyncio.run(_map(args))
        if args.command == "resume":
            return asyncio.run(_resume(args))
        if args.command == "batches":
            return asyncio.run(_batches(args))
        if args.command == "models":
            return _models(args)
        if args.command == "limits":
            return _limits(args)
        if args.command == "cooldowns":
            return _cooldowns(args)
        if args.command == "doctor":
            return asyncio.run(_doctor(args))
        if args.command == "sandbox":
            return _sandbox(args)
        if args.command == "demo":
            return asyncio.run(_demo(args))
    except FanoutError as exc:
        print(f"nbfanout: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nbfanout: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
