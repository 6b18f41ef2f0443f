"""`posttrain doctor`: what is installed and usable, and the command that fixes what is not."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
from rich.table import Table

from posttrain._versions import package_version
from posttrain.checkpoint import human_bytes
from posttrain.cli._app import app, console, esc
from posttrain.cli._display import command_log, long_command
from posttrain.cli._options import n_gpu_layers_option
from posttrain.errors import PosttrainError


def _build_info() -> dict[str, str]:
    """llama-cpp-python's version and llama.cpp's system info (build flags: AVX, BLAS, GPU backends).
    Doctor's own: the converter's toolchain, below llama.cpp's package, need not load llama.cpp."""
    from posttrain import toolchain

    info = {"llama_cpp_python": toolchain.llama_cpp_python_version()}
    try:
        from posttrain import llamacpp

        info["system_info"] = llamacpp.system_info()
        info["gpu_offload"] = str(llamacpp.gpu_offload_supported())
    except Exception as e:  # a broken build must still be reportable by `doctor`
        info["error"] = f"{type(e).__name__}: {e}"
    return info


def _selftest_rows(row, table: Table, system_info: str, n_gpu_layers: int | None) -> None:
    """llama.cpp decoding in a child process: how posttrain loads models, and llama.cpp's defaults."""
    from posttrain import llamacpp

    try:
        ours, control = llamacpp.run_selftest(n_gpu_layers)
    except RuntimeError as e:
        row("llama.cpp self-test", False, str(e))
        return
    if ours.ok:
        row("llama.cpp self-test", True, f"{ours.detail} (extra CPU buffer types off)")
    else:
        row("llama.cpp self-test", False,
            (f"{ours.status}: {ours.detail}. llama.cpp: {system_info}. Fix: rebuild llama.cpp for this machine, "
                   f"e.g. without AMX: POSTTRAIN_LLAMA_CMAKE_ARGS=\"{llamacpp.cmake_args_without_amx(system_info)}\" "
                   f"bash scripts/setup.sh"))
    if control.ok:
        table.add_row("llama.cpp defaults", "[green]ok[/]", "extra CPU buffer types (repacking, AMX) work here too: "
                                                            "the machine profile turns them on")
    else:
        # Not a failure of posttrain's: its own loads avoid this. Other llama.cpp programs here may crash.
        table.add_row("llama.cpp defaults", "[yellow]crash[/]" if control.status == "crashed" else "[yellow]fails[/]",
                      esc(f"{control.status}: {control.detail} with llama.cpp's extra CPU buffer types on; "
                             f"posttrain keeps them off (unless {llamacpp.EXTRA_BUFTS_ENV}=1)"))


def _profile_rows(table: Table, display, reprofile: bool) -> None:
    """This machine's llama.cpp profile (measured once per CPU and build): what every load uses, why,
    and what overrides it."""
    from posttrain import llamacpp
    from posttrain.llamacpp import _settings

    if reprofile:
        llamacpp.forget_machine_profile()
    profile = llamacpp.ensure_profile(say=display.begin)
    if profile is None:
        table.add_row("machine profile", "[yellow]off[/]",
                      f"{_settings.PROFILE_ENV}=0: the safe settings (no extra CPU buffer types, every CPU, "
                      f"micro-batch {_settings.SAFE_UBATCH}, F16)")
        return
    when = f"{profile.cpu}, measured {profile.measured_at} in {profile.seconds:.0f} s"
    conditions = profile.conditions
    if profile.fallback:
        table.add_row("machine profile", "[yellow]fallback[/]",
                      esc(f"{when}; the safe settings, because {profile.fallback}; `posttrain doctor --reprofile` "
                          f"measures again"))
    elif conditions is not None and conditions.busy:
        table.add_row("machine profile", "[yellow]busy[/]",
                      esc(f"{when}, while other work used {conditions.others_cpu_pct:.0f} % of the CPUs: its "
                          f"choices may be off; `posttrain doctor --reprofile` on a quiet machine"))
    else:
        table.add_row("machine profile", "[green]ok[/]", esc(when))
    table.add_row("  extra CPU buffer types", "on" if _settings.extra_bufts_allowed() else "off",
                  esc(f"the self-test's decode with them on: {profile.extra_bufts_detail}"))
    rates = {(p.reference, p.threads, p.n_ubatch): p.tokens_per_s for p in profile.probes}
    best = rates.get((profile.reference, profile.threads, profile.n_ubatch))
    table.add_row("  threads, micro-batch", f"{_settings.best_threads()}, {_settings.n_ubatch()}",
                  esc("; ".join(f"{r} {t} threads n_ubatch {u}: {v:,.0f} tok/s" for (r, t, u), v in rates.items())
                      or "not measured"))
    speedup = profile.speedup("BF16")
    table.add_row("  faster reference", _settings.reference_type(),
                  esc(f"BF16 prefills {speedup:.2f}x as fast as F16 on the probe" if speedup else "not measured")
                  + (f" (best {best:,.0f} tok/s)" if best else "")
                  + ("; runs evaluate BF16 where the checkpoint allows it (docs/hardware.md)"
                     if _settings.reference_type() == "BF16" else ""))
    overrides = _settings.overrides_set()
    if overrides:
        table.add_row("  overridden by", "env", esc(", ".join(f"{k}={v}" for k, v in overrides.items())))


def _imatrix_tools_row(row, table: Table, build: bool) -> None:
    """llama.cpp's llama-imatrix and llama-quantize (`ship --imatrix-text`, `convert --imatrix`): built, or
    when they will be. Not building them is no failure: most runs never need them."""
    from posttrain import _progress
    from posttrain.llamacpp import ToolsNotBuilt, find_llama_tools

    try:
        tools = find_llama_tools(build=build, say=_progress.begin)  # a build takes minutes: a stage of its own
    except ToolsNotBuilt:
        table.add_row("imatrix tools", "[yellow]not built[/]",
                      "built on first use of --imatrix-text or convert --imatrix (minutes, once per version), "
                      "or now: posttrain doctor --build-imatrix-tools")
        return
    except PosttrainError as e:
        row("imatrix tools", False, e.one_line())
        return
    row("imatrix tools", True, f"llama-imatrix and llama-quantize {tools.llama_version} ({tools.commit}, "
                               f"{tools.profile or tools.source}) in {tools.bin_dir}")


@app.command("doctor")
def doctor(
    out: Path = typer.Option(Path("."), "--out", help="Output directory whose free space to check."),
    ollama_url: str = typer.Option("http://127.0.0.1:11434", "--ollama", envvar="OLLAMA_HOST",
                                   help="Ollama server to probe."),
    provision: bool = typer.Option(False, "--provision", help="Fetch llama.cpp's converter now if it is missing."),
    sdist: Path = typer.Option(None, "--sdist", exists=True, dir_okay=False,
                               help="Provision the converter (if missing) from this llama-cpp-python sdist file "
                                    "(the one the runtime was built from; scripts/setup.sh passes it) instead of "
                                    "downloading it."),
    build_imatrix_tools: bool = typer.Option(
        False, "--build-imatrix-tools", help="Build llama.cpp's llama-imatrix and llama-quantize now if they are "
        "missing (for ship --imatrix-text and convert --imatrix; minutes, once per version; needs cmake and a "
        "C++ compiler)."),
    llama_cpp_dir: Path = typer.Option(None, "--llama-cpp-dir", envvar="POSTTRAIN_LLAMA_CPP_DIR"),
    selftest: bool = typer.Option(True, "--selftest/--no-selftest",
                                  help="Load and decode a tiny quantized GGUF in child processes (seconds; the "
                                       "first run makes the model)."),
    n_gpu_layers: int | None = n_gpu_layers_option(),
    reprofile: bool = typer.Option(False, "--reprofile",
                                   help="Measure this machine's llama.cpp profile again (threads, micro-batch, "
                                        "extra CPU buffer types, F16 or BF16), e.g. after a measurement on a busy "
                                        "machine."),
) -> None:
    """Check the toolchain: llama.cpp, converter, lm-eval, torch, transformers, Ollama, disk."""
    # Each check that can take seconds (llama.cpp's load, provisioning, a build, the self-test) is a
    # stage of the display; what llama.cpp and the children print goes to the log.
    with long_command(command_log("doctor"), title="checking the toolchain") as display:
        table, ok = _checks(display, out, ollama_url, provision, build_imatrix_tools, llama_cpp_dir, selftest,
                            n_gpu_layers, sdist, reprofile)
    console.print(table)
    if not ok:
        raise typer.Exit(1)


def _checks(display, out: Path, ollama_url: str, provision: bool, build_imatrix_tools: bool,
            llama_cpp_dir: Path | None, selftest: bool, n_gpu_layers: int | None,
            sdist: Path | None = None, reprofile: bool = False) -> tuple[Table, bool]:
    from posttrain import toolchain

    table = Table("component", "status", "detail / fix")
    ok = True

    def row(name: str, good: bool, detail: str) -> None:
        nonlocal ok
        ok &= good
        table.add_row(name, "[green]ok[/]" if good else "[red]missing[/]", esc(detail))

    llama = package_version("llama-cpp-python")
    if llama:
        display.begin("loading llama.cpp")
        info = _build_info()
        row("llama-cpp-python", "error" not in info,
            f"{llama}; {info.get('system_info', info.get('error', ''))}; GPU offload: {info.get('gpu_offload')}")
    else:
        row("llama-cpp-python", False, "pip install 'llama-cpp-python[server]'")
    if llama:
        display.begin("finding llama.cpp's converter" + (" (provisioning it when missing: ~75 MB once)"
                                                          if provision else ""))
        try:
            tree = toolchain.find_converter(llama_cpp_dir, provision=provision or sdist is not None, sdist=sdist)
            row("converter", True, tree.describe())
        except PosttrainError as e:
            row("converter", False, e.one_line())
    if llama:
        display.begin("finding llama-imatrix and llama-quantize")
        _imatrix_tools_row(row, table, build_imatrix_tools)
    if llama and selftest:
        display.begin("llama.cpp self-test (decoding a tiny GGUF in child processes)")
        _selftest_rows(row, table, info.get("system_info", ""), n_gpu_layers)
        _profile_rows(table, display, reprofile)
    for dist, fix in (("lm-eval", "pip install 'lm-eval>=0.4.13'"), ("torch", "pip install torch==2.13.0"),
                      ("transformers", "pip install transformers"), ("ollama", "pip install ollama")):
        v = package_version(dist)
        row(dist, v is not None, v or fix)
    display.begin(f"reaching Ollama at {ollama_url}")
    try:
        import ollama

        server = ollama.Client(host=ollama_url, timeout=3).ps  # cheap endpoint
        server()
        row("ollama server", True, f"reachable at {ollama_url}")
    except Exception as e:  # unreachable is a normal state: registration is then skipped
        table.add_row("ollama server", "[yellow]absent[/]",
                      f"not reachable at {ollama_url} ({type(e).__name__}); registration will be skipped")
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    row("disk", free > 2_000_000_000, f"{human_bytes(free)} free at {out.resolve()}")
    display.end()
    return table, ok
