#!/usr/bin/env python
"""Measure how many ONNX node conformance cases an arbitrary model transform keeps.

    python tests/conformance/measure.py TRANSFORM [-j N] [-k SUBSTR] [--timeout S]
                                        [--failures] [--json OUT.json]

TRANSFORM is ``module:function`` for any callable ModelProto -> ModelProto (a tuple result is
accepted: its first ModelProto is used), or one of the built-in names:

    onnxopt[=PIPELINE]  onnxopt.optimize(m, passes=PIPELINE)  (default: the lossless passes)
    onnxsim             onnxsim.simplify(m)[0]                 (onnx-simplifier, defaults)
    onnxslim            onnxslim.slim(m)                       (defaults)
    gs                  onnx-graphsurgeon import + export      (identity through gs)
    identity            the model unchanged                    (checks the harness itself)

It uses the same harness as the pytest suite (harness.py): a case counts in a mode when ORT
passes the untransformed case in that mode; it is kept when the transformed model passes
onnx.checker, keeps its graph input/output names, and ORT still reproduces the reference.
Unlike the pytest suite it does not require the transform to leave its argument unmodified.

Each case runs in a pool of worker processes, so a transform that crashes the interpreter
(native code) or hangs (``--timeout``, default 60 s per case) costs that case only; such a
case counts as not kept in every mode ORT passes.  Output of the transform is discarded.

Exit status: 0 when every case ORT passes is kept in both modes, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections import defaultdict
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402

CACHE_DIR = HERE.parent.parent / ".pytest_cache" / "d" / "onnxopt-conformance"


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def _first_model(result: Any) -> Any:
    import onnx

    if isinstance(result, onnx.ModelProto):
        return result
    if isinstance(result, (tuple, list)):
        for r in result:
            if isinstance(r, onnx.ModelProto):
                return r
    return result  # check_transformed reports the wrong type


def _builtin(spec: str) -> harness.Transform | None:
    name, _, arg = spec.partition("=")
    if name == "identity":
        return lambda m: m
    if name == "gs":
        return harness.gs_roundtrip
    if name == "onnxsim":
        import onnxsim

        return lambda m: onnxsim.simplify(m)[0]
    if name == "onnxslim":
        import onnxslim

        return lambda m: onnxslim.slim(m)
    if name == "onnxopt":
        import onnxopt

        if arg:
            pipeline = arg
        else:
            from onnxopt import registry

            pipeline = ",".join(registry.lossless_pass_names())
        return lambda m: onnxopt.optimize(m, passes=pipeline)
    return None


def resolve(spec: str) -> harness.Transform:
    t = _builtin(spec)
    if t is None:
        t = harness.load_transform(spec)
    inner = t
    return lambda m: _first_model(inner(m))


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------


def _silence() -> None:
    """Send fd 1 and 2 of a worker to /dev/null: third-party tools print a lot."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)


def _worker(conn: Any, spec: str, quiet: bool) -> None:
    if quiet:
        _silence()
    try:
        transform = resolve(spec)
        cases = harness.load_cases(CACHE_DIR)
    except Exception as e:  # noqa: BLE001
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        name = conn.recv()
        if name is None:
            return
        case = cases[name]
        res: dict[str, tuple[str, str]] = {}
        for mode in harness.MODES:
            ref = harness.reference(case, mode)
            if not ref.ok:
                res[mode] = ("ort-fails", ref.why)
                continue
            try:
                harness.check_transformed(case, mode, transform, check_mutation=False)
                res[mode] = ("kept", "")
            except Exception as e:  # noqa: BLE001
                res[mode] = ("lost", f"{type(e).__name__}: {e}")
        conn.send(("result", (name, res)))


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


class _Slot:
    def __init__(self, ctx: Any, spec: str, quiet: bool) -> None:
        self.parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, spec, quiet), daemon=True)
        self.proc.start()
        child.close()
        self.case: str | None = None
        self.since = 0.0
        self.ready = False

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.parent.close()


def _ort_verdicts(names: list[str]) -> dict[str, dict[str, tuple[str, str]]]:
    """ORT's verdict per case and mode, computed once here so crashed cases are classified."""
    cases = harness.load_cases(CACHE_DIR)
    return {
        n: {
            m: ("ok", "") if (r := harness.reference(cases[n], m)).ok else ("ort-fails", r.why)
            for m in harness.MODES
        }
        for n in names
    }


def measure(spec: str, names: list[str], jobs: int, timeout: float, quiet: bool = True,
            progress: bool = True) -> dict[str, dict[str, tuple[str, str]]]:
    ctx = mp.get_context("spawn")  # no inherited ORT / thread state
    todo = list(reversed(names))
    results: dict[str, dict[str, tuple[str, str]]] = {}
    slots = [_Slot(ctx, spec, quiet) for _ in range(max(1, min(jobs, len(names))))]
    ort = None
    done = 0
    t0 = time.monotonic()

    def lost_all(name: str, why: str) -> None:
        nonlocal ort
        if ort is None:
            ort = {}
        if name not in ort:
            ort.update(_ort_verdicts([name]))
        results[name] = {
            m: (("lost", why) if v[0] == "ok" else v) for m, v in ort[name].items()
        }

    def feed(slot: _Slot) -> None:
        if todo:
            slot.case = todo.pop()
            slot.since = time.monotonic()
            slot.parent.send(slot.case)
        else:
            slot.case = None
            slot.parent.send(None)

    try:
        while slots:
            ready = wait([s.parent for s in slots] + [s.proc.sentinel for s in slots], timeout=1.0)
            now = time.monotonic()
            for i, slot in enumerate(list(slots)):
                dead = slot.proc.sentinel in ready and not slot.parent.poll()
                if slot.parent in ready and slot.parent.poll():
                    try:
                        kind, payload = slot.parent.recv()
                    except EOFError:
                        dead = True
                    else:
                        if kind == "fatal":
                            raise SystemExit(
                                f"measure.py: cannot load transform {spec!r}: {payload}"
                            )
                        if kind == "result":
                            name, res = payload
                            results[name] = res
                            done += 1
                        slot.ready = True
                        feed(slot)
                        if slot.case is None:
                            slot.proc.join(timeout=5)
                            slot.kill()
                            slots.remove(slot)
                        continue
                timed_out = slot.case is not None and now - slot.since > timeout
                if dead or timed_out:
                    if slot.case is not None:
                        why = (f"timed out after {timeout:g} s" if timed_out
                               else f"worker died (exit code {slot.proc.exitcode})")
                        lost_all(slot.case, why)
                        done += 1
                    elif not slot.ready:
                        raise SystemExit(f"measure.py: worker died while loading {spec!r}")
                    slot.kill()
                    slots.remove(slot)
                    if todo:
                        slots.append(_Slot(ctx, spec, quiet))
            if progress and sys.stderr.isatty():
                print(f"\r{done}/{len(names)} cases, {time.monotonic() - t0:.0f} s",
                      end="", file=sys.stderr, flush=True)
    finally:
        for s in slots:
            s.kill()
        if progress and sys.stderr.isatty():
            print(file=sys.stderr)
    return results


def summarise(results: dict[str, dict[str, tuple[str, str]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for mode in harness.MODES:
        c: dict[str, int] = defaultdict(int)
        for res in results.values():
            c[res[mode][0]] += 1
        base = c["kept"] + c["lost"]
        out[mode] = {
            "ort_passes": base,
            "kept": c["kept"],
            "kept_pct": round(100.0 * c["kept"] / base, 2) if base else None,
            "ort_fails": c["ort-fails"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Kept share of ONNX node conformance cases under a model transform.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Exit status")[0].split("\n\n", 2)[2],
    )
    ap.add_argument("transform", help="module:function, or onnxopt[=PIPELINE] | onnxsim | "
                    "onnxslim | gs | identity")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                    help="worker processes (default: all cores)")
    ap.add_argument("-k", dest="substr", action="append", default=[],
                    help="only cases whose name contains SUBSTR (repeatable: any)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case (default 60)")
    ap.add_argument("--failures", action="store_true", help="list every case not kept, and why")
    ap.add_argument("--ort-failures", action="store_true",
                    help="list every case ORT does not pass, and why")
    ap.add_argument("--json", metavar="PATH", help="write the summary and per-case results here")
    ap.add_argument("--verbose-transform", action="store_true",
                    help="let the transform print (workers discard its output by default)")
    args = ap.parse_args(argv)

    try:
        resolve(args.transform)  # fail fast, in this process, with a clear message
    except Exception as e:  # noqa: BLE001
        print(f"measure.py: cannot load transform {args.transform!r}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 2

    cases = harness.load_cases(CACHE_DIR)
    names = [n for n in cases if not args.substr or any(s in n for s in args.substr)]
    if not names:
        print("measure.py: no case matches", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    results = measure(args.transform, names, args.jobs, args.timeout,
                      quiet=not args.verbose_transform)
    wall = time.monotonic() - t0
    summary = summarise(results)

    import onnx
    import onnxruntime

    print(f"transform: {args.transform}")
    print(f"onnx {onnx.__version__} node cases: {len(names)}; onnxruntime {onnxruntime.__version__}"
          f" (CPU, graph optimizations off); {args.jobs} jobs, {wall:.1f} s")
    print(f"{'mode':<8}{'ORT passes':>11}{'kept':>7}{'kept %':>9}")
    for mode, s in summary.items():
        pct = "-" if s["kept_pct"] is None else f"{s['kept_pct']:.2f}%"
        print(f"{mode:<8}{s['ort_passes']:>11}{s['kept']:>7}{pct:>9}")
    if args.failures:
        for name in names:
            for mode, (status, why) in results[name].items():
                if status == "lost":
                    print(f"LOST {mode:<6} {name}: {why.splitlines()[0][:300] if why else ''}")
    if args.ort_failures:
        for name in names:
            for mode, (status, why) in results[name].items():
                if status == "ort-fails":
                    print(f"ORT-FAILS {mode:<6} {name}: {' '.join(why.split())[:300]}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"transform": args.transform, "onnx": onnx.__version__,
             "onnxruntime": onnxruntime.__version__, "summary": summary,
             "cases": {n: {m: list(v) for m, v in r.items()} for n, r in results.items()}},
            indent=1))
    lost = sum(s["ort_passes"] - s["kept"] for s in summary.values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
