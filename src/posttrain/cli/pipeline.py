"""`posttrain run`, `watch`, `status`, `stop` and `init`: the unattended pipeline from the shell."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from posttrain._files import read_json_file, write_json_atomic, write_text_atomic
from posttrain._terminal import fit_table
from posttrain.cli._app import app, console, esc, print_error
from posttrain.cli._display import command_log, long_command, verbose_option
from posttrain.cli._options import PipelineOptions, config_option, home_option, pipeline_options
from posttrain.contracts import RunLayout
from posttrain.errors import PosttrainError

EX_TEMPFAIL = 75  # sysexits.h: "temporary failure, try again" — an interrupted run resumes when rerun

def _console_logging(verbose: bool = False) -> None:
    root = logging.getLogger("posttrain")
    if not any(getattr(h, "_posttrain_console", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._posttrain_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _stage_lines(display):
    """The runner's step events as the display's stages: one line per step when it ends."""
    def on_event(run_id: str, step: str, event: str) -> None:
        if event == "running":
            display.begin(step)
        elif event in ("reused", "skipped") and display.stage != step:
            if event == "reused":  # a step skipped before it ran: the runner's warning says why
                display.line(f"[dim]· {esc(step)} reused[/]")
        else:
            display.end("" if event == "done" else event, ok=event == "done")

    return on_event


def _print_result(result) -> None:
    """The step table, then what the run concluded and where its report is."""
    from posttrain.pipeline import outcome_sentences

    colour = {"succeeded": "green", "failed": "red", "interrupted": "yellow"}[result.status]
    table = Table(title=f"run {esc(result.run_id)}: [{colour}]{result.status}[/]", title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1))
    # Units in the headers and every value but the note on one line: at 80 columns the table reads
    # as one row per step, and the note (the only free text) wraps last.
    for col in ("step", "status", "time s", "peak MB"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("time s", "peak MB") else "left")
    table.add_column("note", overflow="fold")
    for s in result.steps:
        status = "reused" if s.reused else s.status
        table.add_row(esc(s.name), esc(status), f"{s.wall_s:.1f}" if s.wall_s is not None else "",
                      f"{s.peak_rss_bytes / 1e6:.0f}" if s.peak_rss_bytes else "",  # MB: powers of 1000, as everywhere
                      esc(s.error or "", one_line=False))
    console.print(fit_table(table, console.width, drop=("peak MB", "time s")))
    _print_outcome(outcome_sentences(result), result.run_dir)


def _print_outcome(sentences: list[str], run_dir: Path) -> None:
    """The answer (a sentence per comparison, the ship pick), then the report's path: last, to be copied."""
    for sentence in sentences:
        console.print(esc(sentence), highlight=False)
    report = RunLayout(run_dir).report_html
    if report.exists():
        console.print(f"report: {esc(report)}", highlight=False, soft_wrap=True)


@app.command("run")
@pipeline_options
def run_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Finished checkpoint directories (processed in order)."),
    verbose: bool = verbose_option(),
    options: PipelineOptions = None,  # the shared pipeline options, added by @pipeline_options
) -> None:
    """Convert, register, evaluate, compare, report and notify for each CHECKPOINT; resumes after any crash.

    A LoRA adapter directory (adapter_config.json) is merged into its base and also kept as a GGUF
    adapter; both are evaluated against the base (the default baseline).

    Exit 0 when every run succeeded, 1 when a step failed (the report says which), 75 when
    interrupted (run the same command again to resume).
    """
    from posttrain.pipeline import install_stop_handlers, run_many

    cfg = options.load_config()
    stop = threading.Event()
    install_stop_handlers(stop)
    log_path = cfg.base_dir / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with long_command(log_path, verbose=verbose, follow_children=True) as display:
        # posttrain's own log lines (timestamps, every step) go where the libraries' output goes:
        # the terminal with --verbose, else the log file the display names.
        _console_logging(verbose)
        results = run_many(checkpoints, cfg, stop_event=stop, on_event=_stage_lines(display))
    code = 0
    for ckpt, result in zip(checkpoints, results, strict=True):
        if isinstance(result, PosttrainError):
            text = result.one_line()
            where = "" if str(ckpt) in text or str(ckpt.resolve()) in text else f"{ckpt}: "
            print_error(f"{where}{text}")
            code = max(code, 1)
            continue
        _print_result(result)
        if result.status == "failed":
            # The table wraps its notes; each failure is also one whole line on stderr, as every
            # other failure of the CLI is (scripts and logs grep it).
            for failed in result.failures():
                print_error(f"run {result.run_id}: {failed.name}: {failed.error}")
            code = max(code, 1)
        elif result.status == "interrupted" and code == 0:
            console.print(f"interrupted: run the same command again to resume run {esc(result.run_id)}")
            code = EX_TEMPFAIL
    raise typer.Exit(code)


@app.command("watch")
@pipeline_options
def watch_cmd(
    dirs: list[Path] = typer.Argument(..., help="Directories to watch (recursively)."),
    pattern: str | None = typer.Option(None, "--pattern", "-p", help="Checkpoint directories to pick up (default '**/final_model')."),
    once: bool = typer.Option(False, "--once", help="Scan once, process finished checkpoints not processed before, exit."),
    series: bool = typer.Option(False, "--series", help="Also take the checkpoint-N folders beside final_model and "
                                "keep each training run's series report (score vs step, best checkpoint)."),
    daemon: bool = typer.Option(False, "--daemon", "-d", help="Detach and keep watching in the background."),
    interval: float | None = typer.Option(None, "--interval", help="Seconds between full rescans (default 300)."),
    settle: float | None = typer.Option(None, "--settle", help="Seconds a checkpoint must stay unchanged (default 1)."),
    no_events: bool = typer.Option(False, "--no-events", help="Poll only (for filesystems without inotify)."),
    settings_file: Path | None = typer.Option(None, "--settings", hidden=True,
                                              help="(internal) the settings `watch --daemon` resolved"),
    detached: bool = typer.Option(False, "--detached", hidden=True),
    options: PipelineOptions = None,  # the shared pipeline options, added by @pipeline_options
) -> None:
    """Watch DIRS for finished checkpoints and run the pipeline on each one, once (by content hash).

    One watcher per home: a second one refuses and names the running PID. SIGTERM/SIGINT let the
    current step finish (a step's units on an executor are cancelled instead), then exit 0. `posttrain status` / `posttrain stop` from any shell.
    """
    from posttrain import llamacpp
    from posttrain.pipeline import check_inputs, pipeline_handler, serve_watch, spawn_detached

    # The watcher's log gets the runner's stage lines; the libraries' bars are off (the detached
    # watcher and every step child inherit this).
    llamacpp.quiet_libraries()
    if settings_file is not None:
        # The detached child: the settings its parent parsed and validated, nothing parsed again.
        cfg, dirs, no_events = _read_watch_settings(settings_file)
    else:
        cfg = options.load_config(pattern=pattern, check_interval_s=interval, settle_s=settle,
                                  series=True if series else None)
        cfg = _absolute(cfg)
        dirs = [d.expanduser().resolve() for d in dirs]
    for d in dirs:
        if not d.is_dir():
            raise PosttrainError(f"cannot watch {d}: not a directory", remedy="create it or fix the path")
    check_inputs(cfg, baseline_may_appear=True)
    settings = _watch_settings(cfg, dirs, no_events)
    if daemon and not once:
        path = cfg.base_dir / WATCH_SETTINGS_FILE
        write_json_atomic(path, settings)
        # Until the detached watcher holds its lock: a posttrain process's start, seconds on a busy machine.
        with long_command(command_log("watch-start", cfg.base_dir)) as display:
            display.begin("starting the watcher in the background")
            pid = spawn_detached(["watch", *map(str, dirs), "--settings", str(path), "--detached"], cfg.base_dir)
        console.print(f"watcher started in the background: PID {pid}; `posttrain status` to follow, "
                      f"`posttrain stop` to stop (log: {esc(cfg.base_dir / 'logs' / 'watch.log')})", highlight=False)
        return
    if not detached:
        _console_logging()
    w = cfg.watch
    handled: list[dict] = []
    code = serve_watch(cfg.base_dir, dirs, _kept(pipeline_handler(cfg), handled), pattern=w.effective_pattern,
                       poll_interval_s=w.check_interval_s, settle_s=w.settle_s, once=once, use_events=not no_events,
                       jobs=cfg.jobs, allow_pickle=cfg.allow_pickle, log_max_bytes=w.log_max_bytes,
                       log_backups=w.log_backups, settings=settings)
    if once:
        for out in handled:
            _print_handled(out)
    raise typer.Exit(code)


def _kept(factory, handled: list[dict]):
    """The watcher's handler factory, its handlers also keeping what each run gave back in `handled`."""
    def keeping_factory(watcher, stop):
        handle = factory(watcher, stop)

        def keeping(path: Path, sha: str) -> dict:
            try:
                out = handle(path, sha)
            except Exception as e:  # the watcher records it as failed; the summary says so too
                why = e.one_line() if isinstance(e, PosttrainError) else f"{e.__class__.__name__}: {e}"
                handled.append({"status": "failed", "error": why, "path": str(path)})
                raise
            handled.append({**out, "path": str(path)})
            return out

        return keeping

    return keeping_factory


def _print_handled(out: dict) -> None:
    """One checkpoint `watch --once` processed: its run and status, then the answer and the report."""
    colour = {"succeeded": "green", "failed": "red"}.get(out.get("status"), "yellow")
    console.print(f"{esc(out['path'])}: run {esc(out.get('run_id') or '?')} [{colour}]{esc(out.get('status'))}[/]",
                  highlight=False, soft_wrap=True)
    if out.get("error"):
        console.print(esc(out["error"]), highlight=False)
    if out.get("run_dir"):
        _print_outcome(out.get("verdicts") or [], Path(out["run_dir"]))
    if out.get("series"):  # with --series: where the training run's checkpoints stand so far
        if out.get("series_sentence"):
            console.print(esc(out["series_sentence"]), highlight=False)
        console.print(f"series: {esc(out['series'])}", highlight=False, soft_wrap=True)


WATCH_SETTINGS_FILE = "watch.settings.json"


def _absolute(cfg):
    """The same settings with every path absolute: the watcher may run from another directory."""
    from posttrain.pipeline import Baseline

    def absolute(path: Path | None) -> Path | None:
        return path.expanduser().resolve() if path is not None else None

    updates = {"home": absolute(cfg.base_dir), "data_dir": absolute(cfg.data_dir), "base": absolute(cfg.base),
               "shared_dir": absolute(cfg.shared_dir), "ship_text": absolute(cfg.ship_text),
               "task_paths": [p.resolve() for p in cfg.task_paths]}
    if cfg.baseline:
        updates["baseline"] = Baseline.parse(cfg.baseline).absolute()
    return cfg.model_copy(update=updates)


def _watch_settings(cfg, dirs: list[Path], no_events: bool) -> dict:
    """What a watcher runs with, as JSON: handed to a detached watcher, shown by `posttrain status`."""
    return {"config": cfg.model_dump(mode="json"), "dirs": [str(d) for d in dirs], "events": not no_events}


def _read_watch_settings(path: Path):
    from posttrain.pipeline import Config

    doc = read_json_file(path)
    if doc is None or not isinstance(doc.get("config"), dict):
        raise PosttrainError(f"{path} holds no watcher settings", remedy="start the watcher again")
    # Validated again (types, ranges), but from these values alone: no file, variable or flag is read.
    cfg = Config.model_validate(doc["config"])
    return cfg, [Path(d) for d in doc.get("dirs") or []], not doc.get("events", True)


@app.command("status")
def status_cmd(
    home: Path | None = home_option(),
    config: Path | None = config_option(),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    last: int = typer.Option(5, "--last", help="How many recent runs to list."),
) -> None:
    """Is a watcher running (PID, uptime, watched dirs, queue, current stage), and the latest runs' verdicts.

    Exit 0 when a watcher is running, 3 when none is (like `systemctl status`).
    """
    from posttrain.pipeline import gather_status

    cfg = PipelineOptions(config=config, home=home).load_config()
    doc = gather_status(cfg.base_dir, last=last)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        _print_status(doc)
    raise typer.Exit(0 if doc["running"] else 3)


def _print_status(doc: dict) -> None:
    w = doc.get("watcher") or {}
    if doc["running"]:
        up = int(w.get("uptime_s") or 0)
        console.print(f"[green]watcher running[/]: PID {w['pid']}, up {up // 3600}h{up % 3600 // 60:02d}m{up % 60:02d}s, "
                      f"home {esc(doc['home'])}", highlight=False)
        console.print(f"  watching: {esc(', '.join(w.get('roots') or []))}  pattern {esc(w.get('pattern'))}  "
                      f"({'file events + ' if w.get('events') else ''}rescan every {w.get('poll_interval_s', 0):g} s)",
                      highlight=False)
        console.print(f"  queue: {len(w.get('queue') or [])}" + "".join(f"\n    {esc(q)}" for q in w.get("queue") or []),
                      highlight=False)
        for path, cur in (w.get("current") or {}).items():
            step, run_id = cur.get("step") or "starting", cur.get("run_id") or "…"
            console.print(f"  now: {esc(path)}: step {esc(step)} (run {esc(run_id)})", highlight=False)
        console.print(f"  log: {esc(w.get('log'))}", highlight=False)
        effective = (w.get("settings") or {}).get("config") or {}
        if effective:
            shown = {k: effective.get(k) for k in ("quants", "tasks", "data_dir", "limit", "per_subject", "baseline",
                                                   "jobs", "n_gpu_layers") if effective.get(k) not in (None, [])}
            console.print("  settings: " + esc(", ".join(f"{k}={v}" for k, v in shown.items())), highlight=False)
    else:
        console.print(f"[yellow]no watcher running[/] for {esc(doc['home'])}", highlight=False)
    for run in doc.get("active_runs") or []:
        console.print(f"  active run {esc(run['id'])} (PID {run['owner_pid']}): step {esc(run.get('step') or '?')}",
                      highlight=False)
    if doc.get("runs"):
        table = Table(title="recent runs", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
        table.add_column("run", no_wrap=True)  # copied into `posttrain report RUN`: never split
        for col in ("status", "finished", "verdicts"):
            table.add_column(col, overflow="fold")
        for r in doc["runs"]:
            verdicts = "\n".join(r.get("verdicts") or []) or (r.get("failed") or "")
            table.add_row(esc(r["id"]), esc(r["status"]), esc(r.get("finished_at") or ""),
                          esc(verdicts, one_line=False))
        console.print(fit_table(table, console.width, drop=("finished", "status")))


@app.command("stop")
def stop_cmd(
    home: Path | None = home_option(),
    config: Path | None = config_option(),
    grace: float = typer.Option(120.0, "--grace", help="Seconds to wait for the current step before SIGKILL."),
) -> None:
    """Stop the watcher: SIGTERM (it finishes the current step, or cancels the step's units on an
    executor, which the next start resumes), SIGKILL after the grace period."""
    from posttrain.pipeline import stop_daemon

    cfg = PipelineOptions(config=config, home=home).load_config()
    t0 = time.monotonic()
    pid, how = stop_daemon(cfg.base_dir, grace_s=grace)
    if how == "stopped":
        console.print(f"watcher PID {pid} stopped cleanly in {time.monotonic() - t0:.1f} s", highlight=False)
    else:
        console.print(f"watcher PID {pid} did not stop within {grace:g} s and was killed; "
                      "its run resumes on the next start", highlight=False)


@app.command("init")
def init_cmd(
    path: Path = typer.Argument(Path("posttrain.toml"), help="Where to write the file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented posttrain.toml with every setting at its default."""
    from posttrain.pipeline import config_template

    if path.exists() and not force:
        raise PosttrainError(f"{path} already exists", remedy="pass --force to overwrite it")
    write_text_atomic(path, config_template())  # a fresh temporary name: never someone's .tmp file
    console.print(f"wrote {esc(path)}", highlight=False, soft_wrap=True)
