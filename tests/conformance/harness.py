"""Conformance harness: ONNX backend node tests run through a model transform.

The cases come from the onnx package's own definitions
(``onnx.backend.test.case.node.collect_testcases``), not from the data files it ships, so the
suite follows whatever onnx version is installed.  Their inputs and expected outputs are
normalised exactly the way onnx's backend test runner sees them after its file round-trip
(``cmd_tools.generate_data`` writes them with ``numpy_helper.from_array/from_list/
from_optional``, the runner reads them back with ``to_array/to_list/to_optional``).

Two modes per case:

* ``given``:  the model as the case defines it; outputs are compared to the case's expected
  outputs.
* ``frozen``: every *tensor* graph input is turned into an initializer of the same name and
  removed from the graph inputs, which makes every node foldable.  Sequence and optional
  inputs cannot be initializers (an initializer is a TensorProto), so they stay graph inputs
  and are fed as in ``given``.  IR version 3 models (initializers had to be listed as inputs)
  are raised to IR 4, the first version where an initializer need not be an input; nothing
  else in the model changes.  The reference is ORT's own run of the frozen original, which
  must itself match the case's expected outputs for the case to count.

"ORT passes" means: onnxruntime's CPU provider, graph optimisations disabled, loads the model,
runs it, and its outputs match the reference with the case's rtol/atol, compared the way
``onnx.backend.test.runner.Runner.assert_similar_outputs`` compares (strings exactly, NaN equal
to NaN, sequences element-wise, optional None equal to None).

Everything here is plain functions so that both the pytest suite (conftest.py /
test_node_conformance.py) and the standalone ``measure.py`` use one code path.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

MODES = ("given", "frozen")
SKIP_GIVEN = "ORT does not pass this case as given"
SKIP_FROZEN = "ORT does not pass this case frozen"

Transform = Callable[[onnx.ModelProto], onnx.ModelProto]


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    model: onnx.ModelProto
    inputs: list[Any]  # normalised values, one per graph input, in graph-input order
    raw_inputs: list[Any]  # values as the case definition gave them (ndarray / TensorProto / ...)
    expected: list[Any]  # normalised expected outputs, one per graph output
    rtol: float
    atol: float
    data_error: str | None = None  # set when the case's data could not be normalised


def _kind(type_proto: onnx.TypeProto) -> str:
    return type_proto.WhichOneof("value") or "unknown"


def _normalise(value: Any, vi: onnx.ValueInfoProto) -> Any:
    """Round-trip one value through its protobuf form, like the backend runner's data files."""
    kind = _kind(vi.type)
    if kind == "sequence_type":
        return numpy_helper.to_list(numpy_helper.from_list(value, vi.name))
    if kind == "optional_type":
        return numpy_helper.to_optional(numpy_helper.from_optional(value, vi.name))
    if kind == "map_type":
        return numpy_helper.to_dict(numpy_helper.from_dict(value, vi.name))
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return numpy_helper.to_array(numpy_helper.from_array(value, vi.name))


def _make_case(tc: Any) -> Case:
    model = tc.model
    inputs, outputs = tc.data_sets[0]
    case = Case(
        name=tc.name,
        model=model,
        inputs=[],
        raw_inputs=list(inputs),
        expected=[],
        rtol=getattr(tc, "rtol", 1e-3),
        atol=getattr(tc, "atol", 1e-7),
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case.inputs = [
                _normalise(v, vi) for v, vi in zip(inputs, model.graph.input, strict=True)
            ]
            case.expected = [
                _normalise(v, vi) for v, vi in zip(outputs, model.graph.output, strict=True)
            ]
    except Exception as e:  # noqa: BLE001 - reported, the case is skipped
        case.data_error = f"{type(e).__name__}: {e}"
    return case


def _collect_uncached() -> dict[str, Case]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        # The case definitions compute their expected outputs with numpy and trip
        # overflow / divide-by-zero warnings on purpose.
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            tcs = collect_testcases()
    cases: dict[str, Case] = {}
    for tc in tcs:
        if tc.kind != "node" or tc.model is None or not tc.data_sets:
            continue
        cases[tc.name] = _make_case(tc)
    return cases


def _cache_key() -> str:
    """Changes whenever the installed onnx (and so its case definitions) changes."""
    import onnx.backend.test.case.node as node_mod

    node_dir = Path(node_mod.__file__).parent
    h = hashlib.sha256(onnx.__version__.encode())
    h.update(np.__version__.encode())
    h.update(Path(__file__).read_bytes())  # this file decides how cases are normalised
    for p in sorted(node_dir.glob("*.py")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


_CASES: dict[str, Case] | None = None


def load_cases(cache_dir: str | os.PathLike | None = None) -> dict[str, Case]:
    """All node cases, by name, in definition order.

    ``collect_testcases`` imports ~200 modules and computes every expected output (about five
    seconds); with ``cache_dir`` the normalised cases are pickled there, keyed by the onnx
    version and the case sources, and later loads take a fraction of a second.
    """
    global _CASES  # noqa: PLW0603 - a per-process memo of immutable test data
    if _CASES is not None:
        return _CASES
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"node-cases-{_cache_key()}.pkl"
        if path.exists():
            try:
                with path.open("rb") as f:
                    _CASES = pickle.load(f)
                return _CASES
            except Exception:  # noqa: BLE001 - a stale or torn cache is rebuilt
                pass
    _CASES = _collect_uncached()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with tmp.open("wb") as f:
                pickle.dump(_CASES, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except Exception:  # noqa: BLE001 - caching is an optimisation only
            pass
    return _CASES


# --------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------


def freeze(case: Case) -> tuple[onnx.ModelProto, list[Any]]:
    """The case's model with every tensor input turned into an initializer.

    Returns the frozen model and the feeds that remain (non-tensor inputs, in order).
    """
    m = onnx.ModelProto()
    m.CopyFrom(case.model)
    g = m.graph
    keep: list[onnx.ValueInfoProto] = []
    feeds: list[Any] = []
    for vi, raw, norm in zip(case.model.graph.input, case.raw_inputs, case.inputs, strict=True):
        if _kind(vi.type) != "tensor_type":
            keep.append(vi)
            feeds.append(norm)
            continue
        if isinstance(raw, onnx.TensorProto):
            t = onnx.TensorProto()
            t.CopyFrom(raw)
            t.name = vi.name
        else:
            t = numpy_helper.from_array(norm, vi.name)
        g.initializer.append(t)
    del g.input[:]
    g.input.extend(keep)
    if m.ir_version < 4:
        m.ir_version = 4
    return m, feeds


def model_and_feeds(case: Case, mode: str) -> tuple[onnx.ModelProto, list[Any]]:
    if mode == "given":
        return case.model, list(case.inputs)
    if mode == "frozen":
        return freeze(case)
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------


# numpy has no dtype for these; onnx maps them to ml_dtypes, ORT's Python binding does not.
_NUMPY_NATIVE = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64, onnx.TensorProto.BOOL, onnx.TensorProto.STRING,
    onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128,
}


def _is_exotic(value: Any) -> bool:
    """An ml_dtypes array (bfloat16, float8*, float4, int4, int2, ...)."""
    return isinstance(value, np.ndarray) and _is_ml_dtype(value.dtype)


def _is_ml_dtype(dtype: np.dtype) -> bool:
    # kind is not enough: float8_e5m2 reports kind "f", the others "V"
    return dtype.isbuiltin == 2 or dtype.type.__module__.startswith("ml_dtypes")


def _to_ortvalue(value: np.ndarray) -> Any:
    """An OrtValue for an ml_dtypes array (bfloat16, float8*, int4, ...): copy its packed bytes."""
    import ctypes

    import onnxruntime as ort

    tp = numpy_helper.from_array(value)
    raw = tp.raw_data
    ov = ort.OrtValue.ortvalue_from_shape_and_type(list(value.shape), tp.data_type, "cpu")
    if ov.tensor_size_in_bytes() != len(raw):
        raise RuntimeError(
            f"cannot feed {value.dtype}: ORT wants {ov.tensor_size_in_bytes()} bytes, "
            f"have {len(raw)}"
        )
    if raw:
        ctypes.memmove(ov.data_ptr(), raw, len(raw))
    return ov


def _from_ortvalue(ov: Any, elem_type: int) -> np.ndarray:
    """Decode a CPU tensor OrtValue of a type numpy lacks through a TensorProto's raw bytes."""
    import ctypes

    tp = onnx.TensorProto()
    tp.data_type = elem_type
    tp.dims.extend(ov.shape())
    n = ov.tensor_size_in_bytes()
    tp.raw_data = ctypes.string_at(ov.data_ptr(), n) if n else b""
    return numpy_helper.to_array(tp)


def run_ort(model: onnx.ModelProto, feeds: Sequence[Any]) -> list[Any]:
    """Run ``model`` on ORT's CPU provider, graph optimisations off, feeds in graph-input order.

    Tensors of types numpy lacks (bfloat16, float8, int4, ...; onnx gives them as ml_dtypes
    arrays) are passed in and out as raw bytes, since ORT's Python binding cannot convert them.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    sess = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    # Feed by the model's own graph-input names (those that are not also initializers), not
    # by session order: the names are what a transform must keep.
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != len(feeds):
        raise RuntimeError(f"model has {len(names)} inputs {names}, have {len(feeds)} feeds")
    feed = {
        n: (_to_ortvalue(v) if _is_exotic(v) else v) for n, v in zip(names, feeds, strict=True)
    }
    outs = list(model.graph.output)
    out_names = [o.name for o in outs]
    exotic = [
        o.type.tensor_type.elem_type
        if o.type.HasField("tensor_type") and o.type.tensor_type.elem_type not in _NUMPY_NATIVE
        else None
        for o in outs
    ]
    if not any(exotic):
        return list(sess.run(out_names, feed))
    # run_with_ort_values wants every feed as an OrtValue
    feed = {
        n: (v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(np.asarray(v)))
        for n, v in feed.items()
    }
    res = sess.run_with_ort_values(out_names, feed)
    return [
        _from_ortvalue(ov, et) if et else ov.numpy() for ov, et in zip(res, exotic, strict=True)
    ]


def assert_similar_outputs(
    ref: Sequence[Any], out: Sequence[Any], rtol: float, atol: float
) -> None:
    """onnx.backend.test.runner.Runner.assert_similar_outputs, plus optional None handling."""
    np.testing.assert_equal(len(out), len(ref), err_msg="number of outputs")
    for i, (r, o) in enumerate(zip(ref, out, strict=True)):
        if r is None or o is None:  # optional without a value
            if not (r is None and o is None):
                raise AssertionError(f"output {i}: expected {r!r}, got {o!r}")
            continue
        if isinstance(r, (list, tuple)) or isinstance(o, (list, tuple)):
            if not (isinstance(r, (list, tuple)) and isinstance(o, (list, tuple))):
                raise AssertionError(
                    f"output {i}: expected {type(r).__name__}, got {type(o).__name__}"
                )
            np.testing.assert_equal(len(o), len(r), err_msg=f"output {i}: sequence length")
            assert_similar_outputs(list(r), list(o), rtol, atol)
            continue
        o = np.asarray(o)
        r = np.asarray(r)
        np.testing.assert_array_equal(o.shape, r.shape, err_msg=f"Output {i} has incorrect shape")
        if r.dtype == object:
            np.testing.assert_array_equal(o, r, err_msg=f"output {i}")
            continue
        np.testing.assert_equal(o.dtype, r.dtype, err_msg=f"output {i}: dtype")
        out_rtol = rtol
        if o.dtype.name == "bfloat16":
            out_rtol = max(rtol, 2**-6)  # two bfloat16 ULPs, as onnx's runner
            o, r = o.astype(np.float32), r.astype(np.float32)
        elif _is_ml_dtype(o.dtype):
            # ml_dtypes float8 / int4 / float4 and the like: compare as float32
            o, r = o.astype(np.float32), r.astype(np.float32)
        np.testing.assert_allclose(o, r, rtol=out_rtol, atol=atol, err_msg=f"output {i}")


@dataclasses.dataclass
class Reference:
    ok: bool
    outputs: list[Any] | None = None  # what a transformed model must reproduce
    why: str = ""  # when not ok: why ORT does not pass
    full_check: bool = False  # original passes onnx.checker.check_model(full_check=True)


def _reference_uncached(case: Case, mode: str) -> Reference:
    if case.data_error:
        return Reference(False, why=f"case data: {case.data_error}")
    try:
        model, feeds = model_and_feeds(case, mode)
        got = run_ort(model, feeds)
    except Exception as e:  # noqa: BLE001
        return Reference(False, why=f"ORT: {type(e).__name__}: {str(e).strip()[:500]}")
    try:
        assert_similar_outputs(case.expected, got, case.rtol, case.atol)
    except Exception as e:  # noqa: BLE001
        return Reference(False, why=f"mismatch: {type(e).__name__}: {str(e).strip()[:500]}")
    try:
        onnx.checker.check_model(model, full_check=True)
        full = True
    except Exception:  # noqa: BLE001
        full = False
    return Reference(True, outputs=case.expected if mode == "given" else got, full_check=full)


_REFS: dict[tuple[str, str], Reference] = {}


def reference(case: Case, mode: str) -> Reference:
    """ORT's verdict on the untransformed case in ``mode`` (memoised per process)."""
    key = (case.name, mode)
    ref = _REFS.get(key)
    if ref is None:
        ref = _REFS[key] = _reference_uncached(case, mode)
    return ref


# --------------------------------------------------------------------------------------------
# Checking one transformed case
# --------------------------------------------------------------------------------------------


class ConformanceFailure(AssertionError):
    pass


def _io_names(m: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [i.name for i in m.graph.input], [o.name for o in m.graph.output]


def _io_types(m: onnx.ModelProto) -> list[bytes]:
    return [vi.type.SerializeToString(deterministic=True) for vi in list(m.graph.input) + list(m.graph.output)]


def check_transformed(
    case: Case, mode: str, transform: Transform, *, check_mutation: bool = True
) -> None:
    """Raise ConformanceFailure unless ``transform`` keeps the case passing in ``mode``.

    The transform gets a private copy of the model; with ``check_mutation`` it must also leave
    that copy as it was (an optimizer API must not edit its caller's model).  The caller has
    made sure ``reference(case, mode).ok``.
    """
    ref = reference(case, mode)
    assert ref.ok, "check_transformed called on a case ORT does not pass"
    model, feeds = model_and_feeds(case, mode)
    before = model.SerializeToString()
    arg = onnx.ModelProto()
    arg.CopyFrom(model)
    try:
        out = transform(arg)
    except Exception as e:
        raise ConformanceFailure(f"transform raised {type(e).__name__}: {e}") from e
    if not isinstance(out, onnx.ModelProto):
        raise ConformanceFailure(f"transform returned {type(out).__name__}, not onnx.ModelProto")
    if check_mutation and arg.SerializeToString() != before:
        raise ConformanceFailure("transform mutated the ModelProto it was given")
    try:
        onnx.checker.check_model(out, full_check=ref.full_check)
    except Exception as e:
        raise ConformanceFailure(
            f"onnx.checker.check_model(full_check={ref.full_check}) rejects the result: "
            f"{type(e).__name__}: {str(e).strip()[:2000]}"
        ) from e
    want_in, want_out = _io_names(model)
    got_in, got_out = _io_names(out)
    if (got_in, got_out) != (want_in, want_out):
        raise ConformanceFailure(
            f"graph inputs/outputs changed: inputs {want_in} -> {got_in}, "
            f"outputs {want_out} -> {got_out}"
        )
    if check_mutation and _io_types(out) != _io_types(model):
        raise ConformanceFailure("graph input/output types changed")
    try:
        got = run_ort(out, feeds)
    except Exception as e:
        raise ConformanceFailure(
            f"ORT fails on the result: {type(e).__name__}: {str(e).strip()[:2000]}"
        ) from e
    try:
        assert_similar_outputs(ref.outputs, got, case.rtol, case.atol)
    except AssertionError as e:
        raise ConformanceFailure(f"outputs differ from the reference: {e}") from e


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def gs_roundtrip(model: onnx.ModelProto) -> onnx.ModelProto:
    """Identity through onnx-graphsurgeon: what onnxopt does around its passes.

    gs.import_onnx edits the ModelProto it is given (it sets ``name: ""`` on the TensorProto
    of every Constant node's ``value`` attribute), so this works on a copy.
    """
    import onnx_graphsurgeon as gs

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return gs.export_onnx(gs.import_onnx(m))


def load_transform(spec: str) -> Transform:
    """``module:function`` (or ``module:obj.attr``) -> callable ModelProto -> ModelProto."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"transform must be given as module:function, got {spec!r}")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def onnxopt_passes(
    override: Sequence[str] | None = None,
) -> tuple[list[str], Callable[[str], Transform]]:
    """The lossless passes under test and a factory for their transforms.

    Names come from ``onnxopt.registry.lossless_pass_names()`` unless ``override`` is given.
    While onnxopt has neither ``optimize`` nor ``registry.lossless_pass_names`` (before they are
    written) an onnx-graphsurgeon round-trip named ``gsroundtrip`` stands in; having one
    without the other is an error rather than a silent fallback, so a broken onnxopt cannot
    turn the suite green.  ``gsroundtrip`` may also be named in ``override``.
    """
    import onnxopt  # an import error here is a real error

    optimize = getattr(onnxopt, "optimize", None)
    try:
        registry = importlib.import_module("onnxopt.registry")
    except ModuleNotFoundError as e:
        if e.name != "onnxopt.registry":
            raise
        registry = None
    lossless = getattr(registry, "lossless_pass_names", None)

    def factory(name: str) -> Transform:
        if name == "gsroundtrip":
            return gs_roundtrip
        if optimize is None:
            raise RuntimeError(f"onnxopt has no optimize(); cannot run pass {name!r}")
        return lambda m: optimize(m, passes=name)

    if override:
        return list(override), factory
    if optimize is None and lossless is None:
        return ["gsroundtrip"], factory
    if optimize is None or lossless is None:
        missing = "onnxopt.optimize" if optimize is None else "onnxopt.registry.lossless_pass_names"
        raise RuntimeError(
            f"{missing} is missing; set ONNXOPT_CONFORMANCE_PASSES=name,... to choose passes"
        )
    return list(lossless()), factory
