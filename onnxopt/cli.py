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
from .errors import OnnxoptError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ONNX graph-rewriting passes, checked in ONNX Runtime.")
out = Console(highlight=False, soft_wrap=True)
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


@app.command()
def optimize(
    model: Path = typer.Argument(..., help="input .onnx model"),
    output: Path = typer.Option(..., "-o", "--output", help="where to write the optimized model"),
    passes: Optional[str] = typer.Option(None, "-p", "--passes", help="pipeline, e.g. 'cleanup,fold,fuse'"),
    calib: Optional[Path] = typer.Option(None, "--calib", help=".npz file or directory of them"),
    report: Optional[Path] = typer.Option(None, "--report", help="write a JSON report of every pass"),
    verify_each: bool = typer.Option(False, "--verify-each", help="check validity and numerics after every pass"),
    time_passes: bool = typer.Option(False, "--time-passes", help="print seconds per pass"),
    dump_after: Optional[Path] = typer.Option(None, "--dump-after", help="write NNN_<pass>.onnx after each pass"),
    force: bool = typer.Option(False, "--force", help="allow overwriting the input model"),
    external_data: Optional[bool] = typer.Option(None, "--external-data/--no-external-data",
                                                 help="weights in OUT.onnx.data (default: as needed)"),
    no_check: bool = typer.Option(False, "--no-check", help="skip onnx.checker on the input"),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="pin symbolic dims: NAME=1,3,224,224"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="print nothing on success"),
):
    """Run a pipeline of passes over MODEL and write the result atomically."""
    _check_output(model, output, force)
    shapes = _parse_shapes(shape)
    result = api.run_pipeline(model, passes, calib, check=not no_check, verify_each=verify_each,
                              dump_after=dump_after, shapes=shapes)
    before = summary.summarize(result.source.proto, result.source.path)
    external = external_data if external_data is not None else (result.source.has_external_data or None)
    result.save(output, external=external)
    after = summary.summarize(onnx.load(str(output), load_external_data=False), output)
    if report is not None:
        payload = {"input": str(model), "output": str(output), "pipeline": str(result.pipeline),
                   "passes": [r.to_dict() for r in result.report.records],
                   "before": before.to_dict(), "after": after.to_dict()}
        tmp = report.with_name(report.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        tmp.replace(report)
    if quiet:
        return
    table = Table(title=f"{model.name} -> {output.name}", title_justify="left")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("nodes", str(before.nodes), str(after.nodes))
    table.add_row("initializers", str(before.initializers), str(after.initializers))
    table.add_row("params", f"{before.params:,}", f"{after.params:,}")
    table.add_row("file size", _fmt_bytes(before.file_bytes), _fmt_bytes(after.file_bytes))
    out.print(table)
    if time_passes or verify_each:
        t = Table(title="passes", title_justify="left")
        for col in ("pass", "seconds", "changed", "nodes", "stats") + (("max rel",) if verify_each else ()):
            t.add_column(col)
        for r in result.report.records:
            row = [r.name, f"{r.seconds:.3f}", "yes" if r.changed else "no", f"{r.nodes_before}->{r.nodes_after}",
                   ", ".join(f"{k}={v}" for k, v in r.stats.items())]
            if verify_each:
                row.append(f"{max((o['max_rel'] for o in r.verify['outputs']), default=0):.2e}" if r.verify else "-")
            t.add_row(*row)
        out.print(t)


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
        command.main(args=args, prog_name="onnxopt", standalone_mode=False)
        return 0
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
