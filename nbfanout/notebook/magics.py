"""``%%fanout`` and ``%fanout``: a thin shell over ``Fanout`` for notebooks.

``%%fanout --models A B`` sends the cell body (``{name}`` filled from the notebook's
variables, ``{{`` for a literal brace) to every model at once. Everything the user typed is
checked before any request is sent; mistakes raise IPython's UsageError, so the cell shows
one clear line instead of a traceback. The core runs on nbfanout's own loop thread
(``_runner``); the dashboard is displayed first and then only updated from that thread.
``%fanout models | status | config`` show the catalog, live budgets and configuration.
``%%fanout --batch`` sends the cell through the providers' batch APIs (half the price, their
own quota); ``%fanout resume PATH`` picks such a map up from its state file after a restart,
with the dashboard, and ``%fanout batches`` lists the state files (``--cancel PATH`` cancels).

One ``Fanout`` is kept per configuration (and ``--provider-rpm`` / ``--concurrency``), so
budgets, cooldowns and learned limits carry over from cell to cell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import string
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, kwds, magic_arguments, parse_argstring
from IPython.display import display

from nbfanout.config import parse_provider_rpm
from nbfanout.core.errors import ConfigError, ErrorCategory, ErrorInfo
from nbfanout.core.errors import UsageError as FanoutUsageError
from nbfanout.core.fanout import Fanout
from nbfanout.core.results import BatchResult, FanoutResult, ModelResult
from nbfanout import render
from nbfanout._argtypes import positive_float, positive_int, temperature
from nbfanout._batchflags import batch_via, new_batch_state
from nbfanout.notebook._runner import LoopJob, call_in_loop

__all__ = ["BackgroundRun", "FanoutMagics", "fill_prompt", "load_ipython_extension", "split_models"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def split_models(values: list[str] | None) -> list[str] | None:
    """``--models a b,c`` → ["a", "b", "c"] (space or comma separated); None when not given."""
    if not values:
        return None
    return [m for part in values for m in re.split(r"[,\s]+", part) if m]


class _Filler(string.Formatter):
    """str.format over the notebook's variables; in the magic's line a list of names becomes space separated."""

    def __init__(self, join_lists: bool) -> None:
        super().__init__()
        self.join_lists = join_lists

    def format_field(self, value: Any, format_spec: str) -> Any:
        if self.join_lists and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = " ".join(value)
        return super().format_field(value, format_spec)


def fill_prompt(template: str, namespace: Mapping[str, Any], *, join_lists: bool = False) -> str:
    """``template`` with ``{name}`` filled from ``namespace``; every missing name is reported at once."""
    filler = _Filler(join_lists)
    try:
        fields = [f for _, f, _, _ in filler.parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(f"unmatched brace in {template[:60]!r} ({exc}); write {{{{ and }}}} for literal braces") from None
    missing = []
    for f in fields:
        root = re.split(r"[.\[!:]", f, maxsplit=1)[0]
        if root == "" or root.isdigit():
            raise UsageError(f"{{{f}}} names no variable; write {{{{ and }}}} for literal braces")
        if root not in namespace and root not in missing:
            missing.append(root)
    if missing:
        names = ", ".join(f"{{{m}}}" for m in missing)
        plural = len(missing) > 1
        raise UsageError(f"{names} {'are' if plural else 'is'} used but the notebook defines no such "
                         f"variable{'s' if plural else ''}; define {'them' if plural else 'it'} in a cell above, "
                         "or write {{ and }} for literal braces")
    try:
        return filler.vformat(template, (), namespace)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"could not fill {{...}} from the notebook: {type(exc).__name__}: {exc}") from None


_CELL_EXAMPLES = """examples:
  %%fanout --models openai/gpt-5.5 anthropic/claude-sonnet-5 gemini/gemini-3.5-flash
  Explain {topic} in two sentences.

  %%fanout --pool fast --synthesize openai/gpt-5.5 --out answers
  What are three risks of this plan? {plan}

  %%fanout --config sandbox.config --models openai/gpt-4o-mini --dry-run
  Hello

  %%fanout --rerun answers      (only the models that failed in `answers`)

  %%fanout --shared redis://localhost:6379/0 --models openai/gpt-5.5
  Budgets kept jointly with every kernel using that Redis.

  %%fanout --batch --models openai/gpt-4o-mini anthropic/claude-haiku-4-5-20251001 --out r
  Half the price through the providers' batch APIs; answers in minutes to hours.
  (--batch-state runs/q.json names the state file; %fanout resume runs/q.json picks it up)

  %%fanout --via auto --batch-after 300 --models openai/gpt-4o-mini
  Batch only where the known limits make the live run last longer than 300 s.
"""

_LINE_EXAMPLES = """examples:
  %fanout models --provider openrouter
  %fanout status
  %fanout cooldowns --clear
  %fanout batches                       (state files under .nbfanout/batches, status asked now)
  %fanout batches --cancel .nbfanout/batches/20260101-120000-ab12cd.json
  %fanout resume .nbfanout/batches/20260101-120000-ab12cd.json --out answers
"""

#: The core's messages name the terminal command; in a notebook the line magic does the same.
_NOTEBOOK_COMMANDS = {"`nbfanout models`": "`%fanout models`", "`nbfanout status`": "`%fanout status`",
                      "`nbfanout batches`": "`%fanout batches`"}


def _in_notebook_words(exc: BaseException) -> str:
    """The message of ``exc`` with the commands it suggests as a notebook user types them."""
    text = str(exc)
    for cli, magic in _NOTEBOOK_COMMANDS.items():
        text = text.replace(cli, magic)
    return text


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Misuse (bad config, unknown model, bad argument) becomes one UsageError line, not a traceback."""
    try:
        yield
    except (FanoutUsageError, ConfigError) as exc:
        raise UsageError(_in_notebook_words(exc)) from None


# --- what one cell asks for ----------------------------------------------------------------------
@dataclass
class CellRequest:
    """A checked ``%%fanout`` cell: everything needed to run it, nothing sent yet."""

    prompt: str
    models: list[str] | None
    pool: str | None
    names: list[str]
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    stream: bool = False
    timeout: float | None = None
    synthesize: str | None = None
    out: str | None = None
    rerun: FanoutResult | None = None
    dry_run: bool = False
    dashboard: bool = True
    background: bool = False
    one: bool = False
    via: str = "live"  # live, batch or auto (the providers' batch APIs)
    batch_state: Path | None = None
    batch_after: float | None = None


@dataclass
class _Progress:
    """What the run coroutine has finished so far, read by the cell's thread after an interrupt."""

    main: FanoutResult | None = None
    final: FanoutResult | None = None
    handle: BackgroundRun | None = None  # a background run's handle, told when the run ends
    failed: bool = False  # the run raised: a background dashboard keeps its message rather than a snapshot


class BackgroundRun:
    """The handle ``%%fanout --background`` returns: the run goes on; ``result()`` waits for it.

    Shown as the cell's output with a display id, so the line says "done" once the run is over
    (``refresh``, from the loop thread) instead of "running" for ever.
    """

    def __init__(self, job: LoopJob[FanoutResult], names: list[str], out: str | None) -> None:
        self.job = job
        self.names = names
        self.out = out
        self._display: Any = None
        self._ended = False

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self._display = display(_Bundle({"text/plain": repr(self)}), display_id=True)

    def refresh(self, *, ended: bool = False) -> None:
        """Update the cell's line to the run's state now (``ended``: the run's last step is running it)."""
        self._ended = self._ended or ended
        if self._display is not None:
            self._display.update(_Bundle({"text/plain": repr(self)}))

    def done(self) -> bool:
        return self._ended or self.job.done()

    def result(self, timeout: float | None = None) -> FanoutResult:
        """The FanoutResult (waits; Ctrl-C while waiting cancels the run)."""
        return self.job.wait(timeout)

    def cancel(self) -> None:
        """Cancel every in-flight request of this run."""
        self.job.cancel()

    def __repr__(self) -> str:
        if self.done():
            return f"<BackgroundRun {len(self.names)} models, done" + (f"; stored as {self.out!r}>" if self.out else ">")
        where = f"; stored as {self.out!r} when done" if self.out else ""
        return f"<BackgroundRun {len(self.names)} models, running in the background{where}>"


# --- the magics ----------------------------------------------------------------------------------
@magics_class
class FanoutMagics(Magics):
    """``%%fanout`` (send the cell to many models) and ``%fanout models|status|config``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self._fanouts: dict[tuple[Any, ...], tuple[Any, Fanout]] = {}
        self._jobs: dict[int, LoopJob[Any]] = {}

    @property
    def _ns(self) -> dict[str, Any]:
        """The notebook's namespace (the shell is always set once IPython has registered the magics)."""
        assert self.shell is not None
        return self.shell.user_ns

    # -- Fanout per configuration ------------------------------------------------------------------
    def _config_source(self, ref: str | None) -> tuple[tuple[Any, ...], Any]:
        """(cache key, config) for ``--config``: a notebook variable (dict/Config, dotted ok) or a file path."""
        if ref is None:
            local = Path("nbfanout.toml")
            stamp = local.stat().st_mtime_ns if local.exists() else None
            return ("default", os.getcwd(), stamp), None
        obj = self._lookup(ref)
        if isinstance(obj, Mapping):  # by content: sandbox.config builds a new, equal dict on every access
            return ("dict", json.dumps(obj, sort_keys=True, default=str)), obj
        if obj is not None:
            return ("object", id(obj)), obj
        path = Path(ref).expanduser()
        if path.is_file():
            return ("path", str(path.resolve()), path.stat().st_mtime_ns), str(path)
        raise UsageError(f"--config {ref}: no such file, and no variable {ref!r} in the notebook "
                         "(pass a TOML path, or a variable holding a config dict such as sandbox.config)")

    def _lookup(self, ref: str) -> Any:
        """A notebook variable, optionally with attributes (``sb.config``); None when there is none."""
        parts = ref.split(".")
        if not all(_IDENTIFIER.match(p) for p in parts) or parts[0] not in self._ns:
            return None
        obj = self._ns[parts[0]]
        for p in parts[1:]:
            if not hasattr(obj, p):
                return None
            obj = getattr(obj, p)
        return obj

    def fanout_for(self, ref: str | None, provider_rpm: dict[str, float] | None = None,
                   concurrency: int | None = None, shared: str | bool | None = None) -> Fanout:
        """The session's Fanout for this configuration, created on first use."""
        key, source = self._config_source(ref)
        key = (*key, tuple(sorted((provider_rpm or {}).items())), concurrency, shared)
        held = self._fanouts.get(key)  # an object's id is only its key while we hold the object itself
        if held is not None and (key[0] != "object" or held[0] is source):
            return held[1]
        with _clean_errors():
            fx = Fanout(source, provider_rpm=provider_rpm, concurrency=concurrency, shared=shared)
        self._fanouts[key] = (source, fx)
        return fx

    # -- %%fanout ------------------------------------------------------------------------------------
    @magic_arguments(name="%fanout")  # shown as %%fanout: IPython prefixes one %
    @kwds(epilog=_CELL_EXAMPLES)
    @argument("--models", "-m", nargs="+", metavar="MODEL",
              help="models to ask, space or comma separated (provider/model, e.g. openai/gpt-4.1)")
    @argument("--pool", "-p",
              help="a pool instead of --models: fast, research, code, vision, audio, auto, or one from the config")
    @argument("--config", "-c", help="a TOML file, or a notebook variable holding a config dict (e.g. sandbox.config)")
    @argument("--system", "-s", help="system prompt; {name} is filled from the notebook as in the cell")
    @argument("--max-tokens", type=positive_int, metavar="N", help="largest answer, in tokens")
    @argument("--temperature", type=temperature, metavar="T", help="sampling temperature, 0 to 2")
    @argument("--provider-rpm", metavar="P:N,...", help="cap requests per minute per provider, e.g. openai:500,gemini:60")
    @argument("--concurrency", type=positive_int, metavar="N", help="most requests in flight at once")
    @argument("--timeout", type=positive_float, metavar="S", help="seconds one request may take")
    @argument("--shared", nargs="?", const=True, default=None, metavar="URL",
              help="keep budgets jointly with other kernels and processes in Redis at URL "
                   "(default: $NBFANOUT_REDIS_URL; see [shared] in nbfanout.toml)")
    @argument("--file", "-f", action="append", default=[], metavar="PATH", help="attach a text file's contents (repeatable)")
    @argument("--image", "-i", action="append", default=[], metavar="PATH|URL", help="attach an image (repeatable)")
    @argument("--one", action="store_true",
              help="one answer from the first of the models (or the pool) that can give it, failing over in order")
    @argument("--synthesize", metavar="MODEL", help="afterwards, have MODEL combine the answers into one")
    @argument("--out", "-o", metavar="NAME", help="store the FanoutResult in the notebook as NAME")
    @argument("--rerun", metavar="NAME", help="send NAME's prompt again to only the models that failed in that FanoutResult")
    @argument("--stream", action="store_true", help="stream answers: each grows live, side by side (up to four), else in a section per model")
    @argument("--dry-run", action="store_true", help="show the plan (models, keys, tokens, cost); send nothing")
    @argument("--no-dashboard", action="store_true", help="no live dashboard, timeline or answers; the cell returns the FanoutResult")
    @argument("--background", action="store_true",
              help="return at once; the dashboard keeps updating and --out is stored when done")
    @argument("--batch", action="store_true",
              help="send through the providers' batch APIs: half the price, their own quota, answers in minutes "
                   "to hours; models whose provider has none run live (same as --via batch)")
    @argument("--via", choices=("live", "batch", "auto"),
              help="live (default), batch, or auto: batch only the models whose live run the known limits make "
                   "last longer than --batch-after")
    @argument("--batch-state", metavar="PATH",
              help="the batch map's state file, for %%fanout resume PATH (default: a new file under .nbfanout/batches/)")
    @argument("--batch-after", type=positive_float, metavar="S",
              help="with --via auto: batch a model whose live run would last longer than S seconds (default 600)")
    @cell_magic("fanout")  # type: ignore[arg-type]  # IPython's decorator types reject methods
    @no_var_expand  # {name} is filled by fill_prompt, with its checks, in the line as in the body
    def fanout_cell(self, line: str, cell: str) -> Any:
        """Send the cell body to many LLMs at once and show a live dashboard.

        The cell body is the prompt; ``{name}`` is replaced by the notebook variable ``name``
        (write ``{{`` and ``}}`` for literal braces). With the dashboard, the run ends as a static
        snapshot (dashboard, timeline, answers) that a saved notebook keeps, and the FanoutResult
        goes to --out NAME; without it (--no-dashboard, plain IPython) the cell returns it. With
        --background it returns a handle whose ``result()`` waits for it. Interrupting the kernel
        cancels every request still in flight and keeps what had finished.
        """
        args = parse_argstring(self.fanout_cell, fill_prompt(line, self._ns, join_lists=True))
        fx, req = self._check(args, cell)
        if req.dry_run:
            return self._dry_run(fx, req)
        busy = self._jobs.get(id(fx))
        if busy is not None and not busy.done():
            raise UsageError("a --background run with this configuration is still going; wait for it "
                             "(handle.result()) or cancel it (handle.cancel()) first")
        kind = self._view_kind(req.dashboard)
        view: Any = None
        if kind == "widgets":
            from nbfanout.notebook.dashboard import Dashboard

            expected = 4 * req.params["max_tokens"] if "max_tokens" in req.params else None  # ~4 characters a token
            view = Dashboard(req.names, stream=req.stream, expected_chars=expected, background=req.background)
            view.model.state_path = str(req.batch_state) if req.batch_state else None
            view.display()
        elif kind == "text":
            from nbfanout.notebook.dashboard import TextProgress

            view = TextProgress(req.names)
            view.model.state_path = str(req.batch_state) if req.batch_state else None
        before = fx.last_result
        progress = _Progress()
        job: LoopJob[FanoutResult] = LoopJob(self._drive(fx, req, view, kind, progress), name="nbfanout-cell")
        if req.background:
            self._jobs[id(fx)] = job
            progress.handle = BackgroundRun(job, req.names, req.out)
            return progress.handle
        interrupted = False
        try:
            result = job.wait()
        except KeyboardInterrupt:
            interrupted = True
            result = self._partial(fx, req, progress, before)
        except BaseException as exc:
            if kind == "widgets":  # whatever went wrong, no live widget is left for a saved notebook to lose
                view.freeze(None)
            if isinstance(exc, (FanoutUsageError, ConfigError)):
                raise UsageError(_in_notebook_words(exc)) from None
            raise
        if req.out:
            self._ns[req.out] = result
        if interrupted:
            answered = len(result.succeeded)
            print(f"interrupted: {answered} of {len(result.results)} models had answered; "
                  "every request still in flight was cancelled", file=sys.stderr, flush=True)
            if req.batch_state is not None and req.batch_state.exists():
                _say_batches_go_on(req.batch_state)
        if kind == "widgets":
            # the snapshot shows everything the result's own table would: returning it would repeat it
            self._show_final(view, result)
            return None
        if kind == "text":
            print(render.result_text(result), flush=True)
        return result

    def _check(self, args: argparse.Namespace, cell: str) -> tuple[Fanout, CellRequest]:
        """Every argument checked and the prompt filled; raises UsageError before anything is sent."""
        ns = self._ns
        models = split_models(args.models)
        rerun: FanoutResult | None = None
        if args.rerun is not None:
            rerun = ns.get(args.rerun)
            if not isinstance(rerun, FanoutResult):
                found = "nothing" if args.rerun not in ns else type(rerun).__name__
                raise UsageError(f"--rerun {args.rerun}: expected a FanoutResult in the notebook (from --out), found {found}")
            if models or args.pool:
                raise UsageError("--rerun resends the failed models of that result; leave out --models and --pool")
            if cell.strip() and cell.strip() != rerun.prompt.strip():
                # IPython refuses a cell magic without a body, so here the body is only a note
                print(f"note: --rerun resends the prompt of {args.rerun}; this cell's text is not sent", file=sys.stderr)
        elif not models and not args.pool:
            raise UsageError("no models: pass --models A B ... or --pool NAME (%%fanout? lists every option)")
        with _clean_errors():  # the shared checks raise nbfanout's UsageError
            via = batch_via(args)
        if via != "live":
            for flag, on in (("--one", args.one), ("--stream", args.stream), ("--rerun", args.rerun is not None),
                             ("--image", bool(args.image))):
                why = ("a provider batch sends text prompts" if flag == "--image" else
                       "a provider batch answers every request at once, later")
                if on:
                    raise UsageError(f"{flag} needs live requests, and {why}: drop {flag} or --batch / --via {via}")
        if models and args.pool:
            raise UsageError("pass --models or --pool, not both")
        if args.one and (args.synthesize or args.rerun is not None):
            raise UsageError("--one asks for one answer: it does not combine with --synthesize or --rerun")
        for flag, name in (("--out", args.out),):
            if name is not None and not _IDENTIFIER.match(name):
                raise UsageError(f"{flag} {name}: not a valid Python variable name")
        prompt = rerun.prompt if rerun is not None else fill_prompt(cell.strip("\n"), ns)
        if rerun is None and not prompt.strip():
            raise UsageError("the cell is empty: its body is the prompt")
        for f in args.file:
            path = Path(f).expanduser()
            if not path.is_file():
                raise UsageError(f"--file {f}: no such file")
            prompt += f"\n\n--- {path.name} ---\n" + path.read_text(encoding="utf-8", errors="replace")
        for img in args.image:
            if not img.startswith(("http://", "https://", "data:")) and not Path(img).expanduser().is_file():
                raise UsageError(f"--image {img}: no such file (or pass an http(s) URL)")
        with _clean_errors():
            provider_rpm = parse_provider_rpm(args.provider_rpm)
        fx = self.fanout_for(args.config, provider_rpm or None, args.concurrency, args.shared)
        system = args.system or None
        params: dict[str, Any] = {}
        if args.max_tokens is not None:
            params["max_tokens"] = args.max_tokens
        if args.temperature is not None:
            params["temperature"] = args.temperature
        with _clean_errors():
            if rerun is not None:
                names = [r.requested for r in rerun.results if not r.ok]
                for n in names:
                    fx.config.model(n)
            else:
                names = list(dict.fromkeys(r.requested for r in fx.plan(prompt, models, pool=args.pool, system=system).rows))
                if args.one:  # one request, shown under the first choice; the answer names who gave it
                    names = names[:1]
            if args.synthesize:
                fx.config.model(args.synthesize)
        return fx, CellRequest(
            prompt=prompt, models=models, pool=args.pool, names=names, system=system, params=params,
            images=list(args.image), stream=args.stream, timeout=args.timeout, synthesize=args.synthesize,
            out=args.out, rerun=rerun, dry_run=args.dry_run, dashboard=not args.no_dashboard, background=args.background,
            one=args.one, via=via, batch_state=None if via == "live" else _batch_state(args.batch_state),
            batch_after=args.batch_after,
        )

    def _view_kind(self, dashboard: bool) -> str | None:
        """"widgets" in a kernel with ipywidgets, "text" in plain IPython (or without ipywidgets), None if off."""
        if not dashboard:
            return None
        if getattr(self.shell, "kernel", None) is None:
            return "text"
        from nbfanout.notebook.dashboard import import_widgets

        try:
            import_widgets()
        except ImportError as exc:
            print(f"{exc} (showing plain-text progress instead)", file=sys.stderr)
            return "text"
        return "widgets"

    async def _drive(self, fx: Fanout, req: CellRequest, view: Any, kind: str | None, progress: _Progress) -> FanoutResult:
        """The run, on the loop thread: subscribe the view, run (and synthesize), close the view."""
        unsubscribe = fx.subscribe(view.on_event) if view is not None else None
        cancelled = False
        result: FanoutResult | None = None
        try:
            if req.rerun is not None:
                result = await fx.rerun(req.rerun, system=req.system, images=req.images, stream=req.stream,
                                        timeout=req.timeout, **req.params)
            elif req.one:
                await fx.ask(req.prompt, models=req.models, pool=req.pool, system=req.system, images=req.images,
                             stream=req.stream, timeout=req.timeout, **req.params)
                assert isinstance(fx.last_result, FanoutResult)
                result = fx.last_result
            elif req.via != "live":  # the cell as a one-prompt map: the same rows, each by batch where it can be
                extra: dict[str, Any] = {} if req.batch_after is None else {"batch_after_s": req.batch_after}
                batch = await fx.map([req.prompt], req.models, pool=req.pool, system=req.system, timeout=req.timeout,
                                     via=req.via, batch_state=req.batch_state, **extra, **req.params)
                result = replace(batch.rows[0], elapsed_s=batch.elapsed_s)
            else:
                result = await fx.run(req.prompt, req.models, pool=req.pool, system=req.system, images=req.images,
                                      stream=req.stream, timeout=req.timeout, **req.params)
            progress.main = result
            if req.synthesize and result.succeeded:
                result = await fx.synthesize(result, req.synthesize, timeout=req.timeout, **req.params)
            progress.final = result
            return result
        except asyncio.CancelledError:
            cancelled = True
            raise
        except Exception as exc:
            if req.background:  # nobody is waiting on this cell: say so where its outputs are
                progress.failed = True
                message = f"nbfanout: the background run failed: {type(exc).__name__}: {exc}\n"
                if kind == "widgets" and view.after is not None:
                    view.after.append_stderr(message)
                else:
                    print(message, end="", file=sys.stderr, flush=True)
            raise
        finally:
            if unsubscribe is not None:
                unsubscribe()
            if req.background and req.out and progress.final is not None:  # stored before anything says "done"
                self._ns[req.out] = progress.final
            if kind == "widgets":
                await view.aclose(cancelled=cancelled, result=progress.main)
                if req.background:
                    await self._finish_background(req, progress, view)
            elif kind == "text":
                view.close(cancelled=cancelled)
                if req.background and progress.final is not None:
                    print(render.result_text(progress.final), flush=True)

    async def _finish_background(self, req: CellRequest, progress: _Progress, view: Any) -> None:
        """A background run ends as a foreground one does: its dashboard becomes the static snapshot
        (timeline and answers included) through its display id, so a saved notebook keeps it; and
        the handle's line says it is done."""
        result = progress.final or progress.main
        if progress.failed:  # the widget keeps the message it shows (in its Output) where the snapshot has none
            return
        png = None
        if result is not None and any(r.attempts for r in result.results):
            from nbfanout.notebook.timeline import timeline_png

            png = await asyncio.get_running_loop().run_in_executor(None, timeline_png, result)
        view.freeze(result, png)
        if progress.handle is not None:
            progress.handle.refresh(ended=True)

    def _partial(self, fx: Fanout, req: CellRequest, progress: _Progress, before: Any) -> FanoutResult:
        """After an interrupt: what had finished (Fanout.last_result holds the cancelled run's partial batch)."""
        if progress.main is not None:  # interrupted while synthesizing: the fan-out itself had finished
            return progress.main
        last = fx.last_result
        part: FanoutResult | None = None
        if last is not before:
            if isinstance(last, BatchResult) and last.rows:
                part = last.rows[0]
            elif isinstance(last, FanoutResult):
                part = last
        cancelled = ErrorInfo(ErrorCategory.CANCELLED, False, "cancelled before an answer arrived")
        if part is None:
            part = FanoutResult(prompt=req.prompt, results=tuple(
                ModelResult(requested=n, model=n, ok=False, error=cancelled) for n in req.names))
        if req.rerun is not None:
            fresh = {r.requested: r for r in part.results if r.category != "cancelled"}
            part = replace(req.rerun, results=tuple(fresh.get(r.requested, r) for r in req.rerun.results))
        return part

    def _show_final(self, view: Any, result: FanoutResult) -> None:
        """After the run, the live dashboard becomes its static snapshot, timeline and answers included."""
        png = None
        try:
            from nbfanout.notebook.timeline import timeline_png

            png = timeline_png(result) if any(r.attempts for r in result.results) else None
        except Exception as exc:  # noqa: BLE001 - no timeline (matplotlib missing or failing), the rest stays
            print(f"no retry timeline: {exc}", file=sys.stderr)
        view.freeze(result, png)

    def _dry_run(self, fx: Fanout, req: CellRequest) -> None:
        with _clean_errors():
            plan = fx.plan(req.prompt, req.models, pool=req.pool, system=req.system, max_tokens=req.params.get("max_tokens"))
        display(_Bundle({"text/html": render.plan_html(plan), "text/plain": render.plan_text(plan)}))
        if req.out:
            self._ns[req.out] = plan

    # -- %fanout models | status | config -----------------------------------------------------------
    @magic_arguments(name="fanout")
    @kwds(epilog=_LINE_EXAMPLES)
    @argument("command", choices=["models", "status", "config", "cooldowns", "resume", "batches"],
              help="models: every model and whether it is usable; status: live budgets and cooldowns; "
                   "config: the configuration; cooldowns: the waits providers asked for that are not over; "
                   "resume PATH: pick up a batch map from its state file, with the dashboard; "
                   "batches: the batch maps' state files with their batches' status now")
    @argument("path", nargs="?", metavar="PATH", help="with resume: the batch state file")
    @argument("--config", "-c", help="a TOML file, or a notebook variable holding a config dict")
    @argument("--clear", action="store_true", help="with cooldowns: end them now (saved ones too)")
    @argument("--pool", help="with models: only this pool's models")
    @argument("--provider", help="with models: only this provider's models")
    @argument("--capability", help="with models: only models with this capability (tools, vision, reasoning, ...)")
    @argument("--out", "-o", metavar="NAME", help="with resume: store the BatchResult in the notebook as NAME")
    @argument("--judge", metavar="MODEL", help="with resume: score each answer 0-10 with MODEL")
    @argument("--concurrency", type=positive_int, metavar="N", help="with resume: most live requests in flight")
    @argument("--no-dashboard", action="store_true", help="with resume: no dashboard; the line returns the BatchResult")
    @argument("--dir", metavar="DIR", help="with batches: where the state files are (default: .nbfanout/batches)")
    @argument("--cancel", metavar="PATH", help="with batches: ask the providers to cancel this state file's open batches")
    @argument("--saved", action="store_true", help="with batches: the status the files hold; ask no provider")
    @line_magic("fanout")  # type: ignore[arg-type]
    def fanout_line(self, line: str) -> Any:
        """Show the models (``%fanout models``), live budgets (``%fanout status``), configuration
        (``%fanout config``) or cooldowns (``%fanout cooldowns [--clear]``); pick up a batch map
        (``%fanout resume PATH``) or list and cancel them (``%fanout batches [--cancel PATH]``)."""
        args = parse_argstring(self.fanout_line, line)
        if args.clear and args.command != "cooldowns":
            raise UsageError("--clear goes with %fanout cooldowns")
        for flag, value, command in (("--out", args.out, "resume"), ("--judge", args.judge, "resume"),
                                     ("--concurrency", args.concurrency, "resume"),
                                     ("--no-dashboard", args.no_dashboard, "resume"), ("--dir", args.dir, "batches"),
                                     ("--cancel", args.cancel, "batches"), ("--saved", args.saved, "batches"),
                                     ("PATH", args.path, "resume")):
            if value not in (None, False) and args.command != command:
                raise UsageError(f"{flag} goes with %fanout {command}")
        if args.command == "resume":
            return self._resume(args)
        if args.command == "batches":
            self._batches(args)
            return None
        if args.command == "status":
            self._status(args.config)
            return
        if args.command == "cooldowns":
            self._cooldowns(args.config, clear=args.clear)
            return
        with _clean_errors():
            fx = self.fanout_for(args.config)
        if args.command == "models":
            filters = {"pool": args.pool, "provider": args.provider, "capability": args.capability}
            with _clean_errors():
                bundle = {"text/html": render.models_html(fx.config, **filters),
                          "text/plain": render.models_text(fx.config, **filters)}
            display(_Bundle(bundle))
        else:
            text = render.config_text(fx.config)
            display(_Bundle({"text/plain": text}))
        return None

    # -- %fanout resume | batches --------------------------------------------------------------------
    def _resume(self, args: argparse.Namespace) -> Any:
        """A batch map picked up from its state file: its batches waited for and read with the dashboard
        (a static snapshot when done), the BatchResult stored as --out NAME (and returned without widgets)."""
        from nbfanout.core.batch import BatchState

        if not args.path:
            raise UsageError("%fanout resume needs the state file: %fanout resume PATH (%fanout batches lists them)")
        if args.out is not None and not _IDENTIFIER.match(args.out):
            raise UsageError(f"--out {args.out}: not a valid Python variable name")
        with _clean_errors():
            state = BatchState.load(args.path)
            fx = self.fanout_for(args.config)
            for name in [*state.models, *([args.judge] if args.judge else [])]:
                fx.config.model(name)
        kind = self._view_kind(not args.no_dashboard)
        view: Any = None
        if kind == "widgets":
            from nbfanout.notebook.dashboard import Dashboard

            view = Dashboard(state.models)
        elif kind == "text":
            from nbfanout.notebook.dashboard import TextProgress

            view = TextProgress(state.models)
        if view is not None:
            view.model.state_path = str(state.path)
            view.model.seed_batches(state.jobs)
        if kind == "widgets":
            view.display()
        elif kind == "text":
            open_jobs = sum(j.state in ("running", "ended") for j in state.jobs)
            print(f"resuming {state.path}: {len(state.prompts)} prompts × {len(state.models)} models, "
                  f"{len(state.jobs)} batch(es), {open_jobs} not read yet", flush=True)

        async def drive() -> BatchResult:
            unsubscribe = fx.subscribe(view.on_event) if view is not None else None
            cancelled = False
            try:
                return await fx.resume(state.path, judge=args.judge, concurrency=args.concurrency)
            except asyncio.CancelledError:
                cancelled = True
                raise
            finally:
                if unsubscribe is not None:
                    unsubscribe()
                if kind == "widgets":
                    await view.aclose(cancelled=cancelled)
                elif kind == "text":
                    view.close(cancelled=cancelled)

        job: LoopJob[BatchResult] = LoopJob(drive(), name="nbfanout-resume")
        try:
            result = job.wait()
        except KeyboardInterrupt:
            if kind == "widgets":
                view.freeze(None)
            _say_batches_go_on(state.path)
            last = fx.last_result
            if isinstance(last, BatchResult) and args.out:
                self._ns[args.out] = last
            return None
        except BaseException as exc:
            if kind == "widgets":
                view.freeze(None)
            if isinstance(exc, (FanoutUsageError, ConfigError)):
                raise UsageError(_in_notebook_words(exc)) from None
            raise
        if args.out:
            self._ns[args.out] = result
        if kind == "widgets":
            view.freeze(result)
            return None
        if kind == "text":
            print(render.batch_result_text(result), flush=True)
        return result

    def _batches(self, args: argparse.Namespace) -> None:
        """The state files under --dir with their batches' status as the providers report it now, or
        (--cancel PATH) the providers asked to cancel one's open batches."""
        from nbfanout.core.batch import STATE_DIR, BatchState
        from nbfanout.progress import saved_batches, state_files

        if args.cancel:
            with _clean_errors():
                state = BatchState.load(args.cancel)
                fx = self.fanout_for(args.config)
                jobs = LoopJob(fx.cancel_batches(state.path), name="nbfanout-cancel").wait()
            lines = [f"asked {j.provider} to cancel {j.model} {render.short_batch_id(j.batch_id)}: "
                     f"{j.status or j.state} · {j.succeeded}/{j.total} ✓" for j in jobs]
            lines.append(f"cancelled {len(jobs)} batch(es) of {state.path}" if jobs else
                         f"nothing to cancel in {state.path}: none of its batches is still running")
            if jobs:
                lines.append(f"requests already done stay readable: %fanout resume {state.path} returns them, "
                             "the others as cancelled")
            display(_Bundle({"text/plain": "\n".join(lines)}))
            return
        folder = Path(args.dir).expanduser() if args.dir else STATE_DIR
        if args.dir and not folder.is_dir():
            raise UsageError(f"--dir {args.dir}: no such directory")
        paths = state_files(folder)
        fx = None
        if paths and not args.saved:
            with _clean_errors():
                fx = self.fanout_for(args.config)
        entries = LoopJob(saved_batches(fx, paths, ask=not args.saved), name="nbfanout-batches").wait()
        if not paths:
            text = f"no batch state files in {folder} (%%fanout --batch writes one per cell)"
            display(_Bundle({"text/plain": text}))
            return
        display(_Bundle({"text/html": render.saved_batches_html(entries, resume="%fanout resume"),
                         "text/plain": render.saved_batches_text(entries, resume="%fanout resume")}))

    def _cooldowns(self, ref: str | None, *, clear: bool) -> None:
        """Cooldowns of every Fanout this session used (or of one), with those saved by earlier runs."""
        held = [fx for _, fx in self._fanouts.values()] if ref is None else [self.fanout_for(ref)]
        if not held:
            with _clean_errors():
                held = [self.fanout_for(None)]
        lines = []
        for fx in held:
            if clear:
                cleared = call_in_loop(fx.clear_cooldowns)
                lines.append(f"{fx.config.source}: cleared {len(cleared)} cooldown(s)")
                continue
            live = call_in_loop(fx.cooldowns)
            lines.append(f"{fx.config.source}: " + ("no cooldowns" if not live else f"{len(live)} cooldown(s)"))
            lines += [f"  {c.scope} {c.name}: {c.seconds_left:.0f}s left ({c.reason})" for c in live]
        display(_Bundle({"text/plain": "\n".join(lines)}))

    def _status(self, ref: str | None) -> None:
        """Budgets of every Fanout this session used (or of one), read on the loop thread that owns them."""
        held = list(self._fanouts.values())
        if ref is not None:
            held = [(None, self.fanout_for(ref))]
        sections = []
        texts = []
        for _, fx in held:
            budgets = list(call_in_loop(fx.statistics))
            running = [j for j in self._jobs.values() if not j.done()]
            title = f"{fx.config.source}" + (f" · {len(running)} background run(s) going" if running else "")
            if fx.shared is not None:
                title += (f" · budgets shared through {fx.shared.config.shown}" if fx.shared.active
                          else f" · {fx.shared.config.shown} unreachable: budgets kept in this kernel")
            sections.append((title, budgets))
            texts.append(f"{title}\n{render.budgets_text(budgets)}")
        display(_Bundle({"text/html": render.status_html(sections),
                         "text/plain": "\n\n".join(texts) or "nothing has run yet in this session"}))


def _batch_state(given: str | None) -> Path:
    with _clean_errors():
        return new_batch_state(given, "%fanout resume")


def _say_batches_go_on(path: Path) -> None:
    """Stopping the cell stops the waiting, not the provider's batches."""
    print(f"the provider batches go on: %fanout resume {path} picks them up, "
          f"%fanout batches --cancel {path} cancels them", file=sys.stderr, flush=True)


class _Bundle:
    """A ready-made MIME bundle for display()."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return self.data


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbfanout``: register ``%%fanout`` and ``%fanout``."""
    ipython.register_magics(FanoutMagics)
