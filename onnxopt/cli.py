"""The `onnxopt` command: thin wrappers over the library; the only place that prints."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

try:  # typer >= 0.20 vendors its own click
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer uses click itself
    import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import onnx

from . import api, ir, summary
from .errors import CheckFailedError, OnnxoptError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ONNX graph-rewriting passes, checked in ONNX Runtime.")
# Pipes and CI logs get wide tables instead of rich's 80-column default.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _parse_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        if not sep or not name:
            raise UsageError(f"--shape '{item}': expected NAME=D0,D1,...")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(",") if d)
        except ValueError:
            raise UsageError(f"--shape '{item}': dimensions must be integers") from None
    return shapes


def _check_output(src: Path, dst: Path, force: bool) -> None:
    if dst.exists() and src.exists() and os.path.samefile(src, dst) and not force:
        raise UsageError(f"refusing to overwrite the input {src} (use --force)")
    if dst.suffix.lower() != ".onnx" and dst.suffix:
        pass  # any name is allowed; .onnx is only a convention
    if not dst.parent.exists():
        raise UsageError(f"output directory {dst.parent} does not exist")
    if dst.is_dir():
        raise UsageError(f"{dst} is a directory")


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _progress(enabled: bool):
    """A rich progress bar fed by the library's (what, done, total) callbacks."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        return None, None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=True)
    tasks: dict[str, int] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done, total=total)

    return bar, update


_TOLERANCE = {"exact": 1e-5, "approx": 1e-4, "lossy": float("inf")}


@app.command()
def optimize(
    model: Path = typer.Argument(..., help="input .onnx model"),
    output: Path = typer.Option(..., "-o", "--output", help="where to write the optimized model"),
    passes: Optional[str] = typer.Option(None, "-p", "--passes", help="pipeline, e.g. 'cleanup,fold,fuse'"),
    calib: Optional[Path] = typer.Option(None, "--calib", help=".npz file or directory of them"),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help="validation inputs (default: --calib, else random)"),
    report: Optional[Path] = typer.Option(None, "--report", help="write the report: .json or .html"),
    validate_out: bool = typer.Option(False, "--validate", help="compare and bench input vs output before writing"),
    verify_each: bool = typer.Option(False, "--verify-each", help="check validity and numerics after every pass"),
    time_passes: bool = typer.Option(False, "--time-passes", help="print seconds per pass"),
    dump_after: Optional[Path] = typer.Option(None, "--dump-after", help="write NNN_<pass>.onnx after each pass"),
    force: bool = typer.Option(False, "--force", help="allow overwriting the input model"),
    external_data: Optional[bool] = typer.Option(None, "--external-data/--no-external-data",
                                                 help="weights in OUT.onnx.data (default: as needed)"),
    no_check: bool = typer.Option(False, "--no-check", help="skip onnx.checker on the input"),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="pin symbolic dims: NAME=1,3,224,224"),
    threads: int = typer.Option(0, "--threads", help="ORT threads for --validate latency (0: ORT default)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="print nothing on success"),
):
    """Run a pipeline of passes over MODEL and write the result atomically."""
    from . import benchmark, report as report_mod, validate
    from .data import Dataset

    _check_output(model, output, force)
    shapes = _parse_shapes(shape)
    bar, progress = _progress(not (quiet or as_json))
    with bar if bar is not None else _nullcontext():
        result = api.run_pipeline(model, passes, calib, check=not no_check, verify_each=verify_each,
                                  dump_after=dump_after, shapes=shapes, progress=progress)
        checks: dict = {}

        def check_before_commit(tmp_path: Path) -> None:
            data = Dataset.open(inputs) if inputs is not None else (Dataset.open(calib) if calib else None)
            tol = _TOLERANCE[result.numerics.value]
            rep = validate.compare(model, tmp_path, data=data, shapes=shapes, tol=tol)
            checks["validation"] = rep.to_dict()
            feeds = validate.feeds_for(validate.session(model), data, shapes, samples=1)[0]
            stats = benchmark.measure({"before": model, "after": tmp_path}, feeds, threads=threads, runs=30,
                                      progress=progress)
            checks["latency"] = {"stats": {k: s.to_dict() for k, s in stats.items()},
                                 "ratio": stats["after"].median_ms / stats["before"].median_ms}
            if not rep.ok:
                worst = max(rep.outputs, key=lambda o: o.max_rel)
                raise CheckFailedError(f"validation failed: output '{worst.name}' moved by max rel "
                                       f"{worst.max_rel:.3g} > {tol:g} ({result.numerics.value} pipeline); "
                                       "nothing was written")

        before = summary.summarize(result.source.proto, result.source.path)
        external = external_data if external_data is not None else (result.source.has_external_data or None)
        result.save(output, external=external, before_commit=check_before_commit if validate_out else None)
    after = summary.summarize(onnx.load(str(output), load_external_data=False), output)
    data = report_mod.build(source=str(model), output=str(output), pipeline=str(result.pipeline),
                            records=result.report.records, before=before.to_dict(), after=after.to_dict(),
                            validation=checks.get("validation"), latency=checks.get("latency"))
    if report is not None:
        report_mod.write(report, data)
    if as_json:
        out.print_json(json.dumps(data, default=str))
        return
    if quiet:
        return
    _print_optimize(data, time_passes or verify_each, verify_each)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _print_optimize(data: dict, show_passes: bool, show_verify: bool) -> None:
    before, after = data["before"], data["after"]
    table = Table(title=f"{Path(data['input']).name} -> {Path(data['output']).name}", title_justify="left")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")

    def pct(a, b):
        return f"{(b - a) / a:+.1%}" if a else "-"

    table.add_row("nodes", str(before["nodes"]), str(after["nodes"]), pct(before["nodes"], after["nodes"]))
    table.add_row("initializers", str(before["initializers"]), str(after["initializers"]), "")
    table.add_row("params", f"{before['params']:,}", f"{after['params']:,}", pct(before["params"], after["params"]))
    table.add_row("file size", _fmt_bytes(before["file_bytes"]), _fmt_bytes(after["file_bytes"]),
                  pct(before["file_bytes"] or 0, after["file_bytes"] or 0))
    latency = data.get("latency")
    if latency:
        b, a = latency["stats"]["before"], latency["stats"]["after"]
        table.add_row(f"latency (median, {b['provider'].replace('ExecutionProvider', '')})",
                      f"{b['median_ms']:.3f} ms", f"{a['median_ms']:.3f} ms", f"x{latency['ratio']:.3f}")
    validation = data.get("validation")
    if validation:
        worst = max(validation["outputs"], key=lambda o: o["max_rel"])
        table.add_row("numerics (worst output)", "", f"max rel {worst['max_rel']:.2e}",
                      f"cos {min(o['cosine'] for o in validation['outputs']):.6f}")
    out.print(table)
    if show_passes:
        t = Table(title="passes", title_justify="left")
        for col in ("pass", "seconds", "changed", "nodes", "stats") + (("max rel",) if show_verify else ()):
            t.add_column(col)
        for r in data["passes"]:
            row = [r["name"], f"{r['seconds']:.3f}", "yes" if r["changed"] else "no",
                   f"{r['nodes_before']}->{r['nodes_after']}",
                   ", ".join(f"{k}={v}" for k, v in r["stats"].items() if not isinstance(v, (dict, list)))]
            if show_verify:
                v = r.get("verify")
                row.append(f"{max((o['max_rel'] for o in v['outputs']), default=0):.2e}" if v else "-")
            t.add_row(*row)
        out.print(t)


@app.command()
def compare(
    a: Path = typer.Argument(..., help="reference model"),
    b: Path = typer.Argument(..., help="model to check against A"),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help=".npz data (default: seeded random inputs)"),
    tol: float = typer.Option(1e-3, "--tol", help="max relative error allowed per output"),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="pin symbolic dims: NAME=1,3,224,224"),
    samples: int = typer.Option(3, "--samples", help="how many inputs to run"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Run A and B in ONNX Runtime on the same inputs; exit 1 when any output is over --tol."""
    from . import validate
    from .data import Dataset

    for path in (a, b):
        ir.load(path, check=False)  # one clear line for missing/truncated/not-ONNX files
    data = Dataset.open(inputs) if inputs is not None else None
    rep = validate.compare(a, b, data=data, shapes=_parse_shapes(shape), tol=tol, samples=samples)
    if as_json:
        out.print_json(json.dumps(rep.to_dict()))
    else:
        t = Table(title=f"{a.name} vs {b.name}  ({rep.samples} samples, tol {tol:g})", title_justify="left")
        for col in ("output", "max abs", "max rel", "cosine", "mismatch", ""):
            t.add_column(col)
        for o in rep.outputs:
            t.add_row(o.name, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", f"{o.cosine:.6f}", f"{o.mismatch:.3%}",
                      "ok" if o.ok(tol) else "OVER")
        out.print(t)
    if not rep.ok:
        raise typer.Exit(1)


@app.command()
def bench(
    model: Path = typer.Argument(..., help=".onnx model"),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help=".npz data (default: seeded random inputs)"),
    threads: int = typer.Option(0, "--threads", help="intra-op threads (0: ORT default)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    runs: int = typer.Option(50, "--runs", help="timed runs"),
    warmup: int = typer.Option(5, "--warmup", help="untimed runs first"),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="pin symbolic dims: NAME=1,3,224,224"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Latency in ONNX Runtime as shipped: warm-up, median, p90, mean, throughput."""
    from . import benchmark, validate
    from .data import Dataset

    if device not in benchmark.PROVIDERS:
        raise UsageError(f"--device must be one of {', '.join(benchmark.PROVIDERS)}, not '{device}'")
    if runs < 1 or warmup < 0 or threads < 0:
        raise UsageError("--runs must be >= 1, --warmup and --threads >= 0")
    ir.load(model, check=False)
    benchmark.providers_for(device)
    data = Dataset.open(inputs) if inputs is not None else None
    feeds = validate.feeds_for(validate.session(model), data, _parse_shapes(shape), samples=1)[0]
    bar, progress = _progress(not as_json)
    with bar if bar is not None else _nullcontext():
        stats = benchmark.measure({"model": model}, feeds, threads=threads, device=device, runs=runs,
                                  warmup=warmup, progress=progress)["model"]
    if as_json:
        out.print_json(json.dumps(stats.to_dict()))
        return
    t = Table(title=f"{model.name}  ({stats.provider}, threads {stats.threads or 'default'}, ORT {stats.ort_version})",
              title_justify="left")
    for col in ("median ms", "p90 ms", "mean ms", "min ms", "per s", "runs"):
        t.add_column(col, justify="right")
    t.add_row(f"{stats.median_ms:.3f}", f"{stats.p90_ms:.3f}", f"{stats.mean_ms:.3f}", f"{stats.min_ms:.3f}",
              f"{stats.throughput_per_s:.1f}", str(stats.runs))
    out.print(t)
    out.print(f"sha256 {stats.sha256}")


@app.command()
def blocks(
    model: Path = typer.Argument(..., help=".onnx model"),
    calib: Optional[Path] = typer.Option(None, "--calib", help="measure each block's sensitivity on this data"),
    samples: int = typer.Option(8, "--samples", help="calibration samples used for sensitivity"),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="pin symbolic dims for MACs: NAME=1,3,224,224"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Candidate blocks for `depth`: id, kind, op span, params, MACs, sensitivity with --calib."""
    from .data import Dataset
    from .registry import get_pass

    depth = get_pass("depth")  # through the registry: the CLI knows no pass module
    if not hasattr(depth, "list_blocks"):
        raise UsageError("the registered 'depth' pass cannot list blocks")
    ir.load(model, check=False)
    data = Dataset.open(calib) if calib is not None else None
    bar, progress = _progress(not as_json)
    with bar if bar is not None else _nullcontext():
        found = depth.list_blocks(model, data, samples=samples, shapes=_parse_shapes(shape), progress=progress)
    rows = [b.to_dict() for b in found]
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    t = Table(title=f"{model.name}: {len(rows)} candidate blocks", title_justify="left")
    for col in ("id", "kind", "nodes", "params", "MACs", "cos if removed"):
        t.add_column(col, no_wrap=True, justify="left" if col == "kind" else "right")
    t.add_column("span", overflow="ellipsis", no_wrap=True, max_width=40)
    for r in rows:
        t.add_row(str(r["id"]), r["kind"], str(r["nodes"]), f"{r['params']:,}",
                  f"{r['macs']:,}" if r.get("macs") is not None else "?",
                  f"{r['sensitivity']:.5f}" if r.get("sensitivity") is not None else "-", r["span"])
    out.print(t)
    if data is None:
        out.print("add --calib DATA to measure how much each removal moves the outputs")


@app.command()
def passes(name: Optional[str] = typer.Argument(None, help="show one pass in detail")):
    """List every pass: name, summary, numerics, options with defaults."""
    from . import options as opts
    from .pipeline import GROUP_HELP, GROUPS
    from .registry import REGISTRY, default_pipeline, get_pass

    classes = [get_pass(name)] if name and name not in GROUPS else ([] if name else list(REGISTRY.all()))
    for cls in classes:
        out.print(f"[bold]{cls.name}[/bold]  ({cls.numerics.value})  " + escape(cls.describe()))
        for key, tp, default, help_text in opts.option_fields(cls.Options):
            out.print(escape(f"    {key}={opts.format_value(default)}  [{opts.describe_type(tp)}]  {help_text}"))
    for gname, gcls in GROUPS.items():
        if name in (None, gname):
            out.print(f"[bold]{gname}[/bold](...)  (group)  {GROUP_HELP[gname]}")
            for key, tp, default, help_text in opts.option_fields(gcls):
                out.print(escape(f"    {key}={opts.format_value(default)}  [{opts.describe_type(tp)}]  {help_text}"))
    if not name:
        out.print(f"default pipeline: {default_pipeline()}")


@app.command()
def info(model: Path = typer.Argument(..., help=".onnx model"),
         as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Opsets, inputs/outputs, op histogram, parameters and size."""
    loaded = ir.load(model, check=False)
    s = summary.summarize(loaded.proto, loaded.path)
    if as_json:
        out.print_json(json.dumps(s.to_dict()))
        return
    out.print(f"[bold]{model}[/bold]  ir {s.ir_version}  opsets "
              + ", ".join(f"{d}:{v}" for d, v in s.opsets.items()) + (f"  producer {s.producer}" if s.producer else ""))
    io = Table(title="inputs / outputs", title_justify="left")
    for col in ("", "name", "type", "shape"):
        io.add_column(col)
    for kind, items in (("in", s.inputs), ("out", s.outputs)):
        for v in items:
            io.add_row(kind, v["name"], v["type"], "x".join(map(str, v["shape"])) if v["shape"] is not None else "?")
    out.print(io)
    out.print(f"nodes {s.nodes}  initializers {s.initializers}  params {s.params:,}  weights "
              f"{_fmt_bytes(s.weight_bytes)}  file {_fmt_bytes(s.file_bytes)}  subgraphs {s.subgraphs}  functions {s.functions}")
    hist = Table(title="ops", title_justify="left")
    hist.add_column("op")
    hist.add_column("count", justify="right")
    for op, n in s.op_histogram.items():
        hist.add_row(op, str(n))
    out.print(hist)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one clear line and exit 2 on bad input; tracebacks only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="onnxopt", standalone_mode=False)
        return code if isinstance(code, int) else 0  # click returns Exit codes in non-standalone mode
    except OnnxoptError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"onnxopt: error: {exc}", markup=False)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("onnxopt: aborted", markup=False)
        return 130
    except click.ClickException as exc:  # usage errors: unknown option, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None:
            out.print(exc.ctx.get_help())
            return 2
        err.print(f"onnxopt: error: {exc.format_message()}", markup=False)
        return 2
    except KeyboardInterrupt:
        err.print("onnxopt: interrupted", markup=False)
        return 130
    except MemoryError:
        err.print("onnxopt: error: out of memory", markup=False)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        err.print(f"onnxopt: internal error: {type(exc).__name__}: {first} (rerun with --debug for a traceback)",
                  markup=False)
        return 3


def entry() -> None:
    sys.exit(main())
