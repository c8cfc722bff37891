"""Model I/O and the graph IR boundary.

Everything that touches files or converts between ``onnx.ModelProto`` and ``gs.Graph`` lives here,
so passes only ever see a ``gs.Graph`` and the rest of the framework never re-implements I/O.

Memory: weights stored as external data are never read into RAM at load time; they are memory
mapped, and only the export that writes the output materialises them once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper

from .errors import BadInputError, UsageError

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of weights above which we must write external data
_MODEL_FIELDS = ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string")


@dataclass
class LoadedModel:
    """A model proto plus the directory its external data is relative to."""

    proto: onnx.ModelProto
    path: Path | None = None
    has_external_data: bool = False

    @property
    def base_dir(self) -> Path | None:
        return self.path.parent if self.path else None


# ---------------------------------------------------------------------------------------------
# loading


def load(path: str | os.PathLike, *, check: bool = True) -> LoadedModel:
    """Read a model's structure; weights in external files stay on disk until used."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if path.is_dir():
        raise BadInputError(f"{path}: is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: file is empty")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: not an ONNX model or truncated ({_first_line(exc)})") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    loaded = LoadedModel(proto, path)
    _check_is_model(proto, str(path))
    loaded.has_external_data = _check_external_data(proto, path.parent, str(path))
    check_supported(proto, str(path))
    if check:
        check_valid(str(path) if loaded.has_external_data else proto, str(path))
    return loaded


def from_proto(proto: onnx.ModelProto, *, check: bool = True) -> LoadedModel:
    """Wrap an in-memory model (weights must be inside it: there is no directory to resolve)."""
    if not isinstance(proto, onnx.ModelProto):
        raise UsageError(f"expected an onnx.ModelProto or a path, got {type(proto).__name__}")
    _check_is_model(proto, "model")
    if any(external_data_helper.uses_external_data(t) for t in _all_tensors(proto)):
        raise BadInputError("model: has external data but was given in memory; pass its file path instead")
    check_supported(proto, "model")
    if check:
        check_valid(proto, "model")
    return LoadedModel(proto, None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _check_is_model(proto: onnx.ModelProto, where: str) -> None:
    # protobuf happily parses many byte strings; a real model always has these.
    if proto.ir_version <= 0 or not proto.HasField("graph") or (not proto.opset_import and proto.ir_version >= 3):
        raise BadInputError(f"{where}: not an ONNX model (no ir_version, graph or opset_import)")


def check_supported(proto: onnx.ModelProto, where: str) -> None:
    """Refuse what onnx itself cannot reason about: newer IR or opsets than the installed onnx."""
    if proto.ir_version > onnx.IR_VERSION:
        raise BadInputError(
            f"{where}: IR version {proto.ir_version} is newer than this onnx ({onnx.__version__}) "
            f"supports ({onnx.IR_VERSION})"
        )
    newest = {"": onnx.defs.onnx_opset_version(), "ai.onnx": onnx.defs.onnx_opset_version()}
    newest["ai.onnx.ml"] = max(onnx.defs.get_schema("LinearClassifier", domain="ai.onnx.ml").since_version, 5)
    for imp in proto.opset_import:
        limit = newest.get(imp.domain)
        if limit is not None and imp.version > limit:
            raise BadInputError(
                f"{where}: opset {imp.version} of domain '{imp.domain or 'ai.onnx'}' is unsupported "
                f"(onnx {onnx.__version__} knows up to {limit})"
            )
        if imp.domain in ("", "ai.onnx") and imp.version < 1:
            raise BadInputError(f"{where}: invalid opset version {imp.version}")


def check_valid(proto: onnx.ModelProto | str, where: str) -> None:
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise BadInputError(f"{where}: invalid ONNX model: {_first_line(exc)} (skip with --no-check)") from None


def _all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from external_data_helper._get_all_tensors(proto)


def _check_external_data(proto: onnx.ModelProto, base_dir: Path, where: str) -> bool:
    """Every external reference must point at an existing file that is long enough."""
    found = False
    for tensor in _all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        found = True
        info = external_data_helper.ExternalDataInfo(tensor)
        loc = Path(info.location)
        if loc.is_absolute() or ".." in loc.parts:
            raise BadInputError(f"{where}: external data location '{info.location}' escapes the model directory")
        file = base_dir / loc
        if not file.is_file():
            raise BadInputError(f"{where}: external data file '{info.location}' for tensor '{tensor.name}' is missing")
        size = file.stat().st_size
        offset = int(info.offset or 0)
        length = info.length if info.length is not None else size - offset
        if offset + int(length) > size:
            raise BadInputError(f"{where}: external data file '{info.location}' is truncated (tensor '{tensor.name}')")
    return found


# ---------------------------------------------------------------------------------------------
# gs.Graph <-> ModelProto


def to_graph(loaded: LoadedModel) -> gs.Graph:
    """Import into gs; external weights become read-only memory maps (no RAM copy)."""
    graph = gs.import_onnx(loaded.proto)
    graph.onnxopt_types = _record_types(loaded.proto)
    graph.onnxopt_type_attrs = _record_type_attrs(loaded.proto)
    if loaded.has_external_data:
        for sub in iter_graphs(graph):
            for tensor in sub.tensors().values():
                if isinstance(tensor, gs.Constant):
                    _map_external(tensor, loaded.base_dir)
    return graph


def _map_external(const: gs.Constant, base_dir: Path) -> None:
    lazy = const._values
    proto = getattr(lazy, "tensor", None)
    if not isinstance(proto, onnx.TensorProto) or not external_data_helper.uses_external_data(proto):
        return
    info = external_data_helper.ExternalDataInfo(proto)
    np_dtype = helper.tensor_dtype_to_np_dtype(proto.data_type) if proto.data_type in _PLAIN_DTYPES else None
    if np_dtype is None:  # exotic packed types: load this one tensor into the proto itself
        external_data_helper.load_external_data_for_tensor(proto, str(base_dir))
        proto.data_location = onnx.TensorProto.DEFAULT
        return
    shape = tuple(proto.dims)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    array = np.memmap(base_dir / info.location, dtype=np.dtype(np_dtype).newbyteorder("<"), mode="r",
                      offset=int(info.offset or 0), shape=(count,)) if count else np.zeros(0, np_dtype)
    const.values = np.asarray(array).reshape(shape)


_PLAIN_DTYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
    onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL,
}


def iter_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph and every subgraph (If/Loop/Scan bodies), outermost first."""
    yield graph
    for node in graph.nodes:
        for attr in node.attrs.values():
            if isinstance(attr, gs.Graph):
                yield from iter_graphs(attr)


def to_proto(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export to a self-contained proto (weights inline), keeping what gs drops."""
    model, deferred = _export(graph, template)
    try:
        _fill_deferred(model, deferred)
    finally:
        _restore(deferred)
    return model


def skeleton(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with large weights reduced to their dims (no data): enough for shape inference,
    at no extra copy of the weights."""
    model, deferred = _export(graph, template)
    _restore(deferred)
    for gp in _graph_protos(model.graph):
        for init in gp.initializer:
            item = deferred.get(init.name)
            if item is not None and not init.raw_data and list(init.dims) == [0]:
                del init.dims[:]
                init.dims.extend(item[1].shape)
    return model


def _export(graph: gs.Graph, template: onnx.ModelProto):
    """Export with large array-backed constants (memory-mapped weights) left as placeholders.

    gs builds every TensorProto first and ``make_graph`` then copies them all, which would hold
    the weights twice; placeholders keep the export itself weightless. Callers fill them in
    (``_fill_deferred``) or stream them to disk (``save_graph``), then ``_restore``.
    """
    deferred = _defer_large_constants(graph)
    # gs renames the source TensorProto of a lazily loaded constant in place when exporting it;
    # put the names back so the caller's ModelProto is never modified.
    lazy_names = [(p, p.name if p.HasField("name") else None) for p in _lazy_protos(graph)]
    hidden = _hide_unexportable_types(graph)
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    except BaseException:
        _restore(deferred)
        raise
    finally:
        for proto, name in lazy_names:
            if name is None:
                proto.ClearField("name")
            else:
                proto.name = name
        for tensor, dtype in hidden:
            tensor.dtype = dtype
    # (gs.Graph.__getattr__ logs an error for unknown names: read our annotations from __dict__)
    _restore_types(model, graph.__dict__.get("onnxopt_types", {}))
    _restore_type_attrs(model, graph.__dict__.get("onnxopt_type_attrs", {}))
    for field in _MODEL_FIELDS:
        if template.HasField(field):
            setattr(model, field, getattr(template, field))
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    versions = {imp.domain: imp.version for imp in template.opset_import}
    for imp in model.opset_import:
        versions.setdefault(imp.domain, imp.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())
    if template.training_info:
        model.training_info.extend(template.training_info)
    return model, deferred


_GS_TYPES = ("tensor_type", "sequence_type", "sparse_tensor_type")


def _record_types(proto: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Declared types of every named value: gs cannot express optional or nested types."""
    types = {}
    for gp in _graph_protos(proto.graph):
        for vi in list(gp.input) + list(gp.output) + list(gp.value_info):
            if vi.type.WhichOneof("value") is not None:
                types[vi.name] = vi.type
    return types


def _record_type_attrs(proto: onnx.ModelProto) -> dict[str, list[onnx.AttributeProto]]:
    """TYPE_PROTO attributes (e.g. Optional's ``type``), which gs drops, keyed by first output."""
    found = {}
    for gp in _graph_protos(proto.graph):
        for node in gp.node:
            attrs = [a for a in node.attribute if a.type in (onnx.AttributeProto.TYPE_PROTO,
                                                             onnx.AttributeProto.TYPE_PROTOS)]
            if attrs and node.output and node.output[0]:
                found[node.output[0]] = attrs
    return found


def _restore_type_attrs(model: onnx.ModelProto, found: dict[str, list[onnx.AttributeProto]]) -> None:
    if not found:
        return
    for gp in _graph_protos(model.graph):
        for node in gp.node:
            attrs = found.get(node.output[0]) if node.output else None
            if attrs:
                have = {a.name for a in node.attribute}
                node.attribute.extend(a for a in attrs if a.name not in have)


def _hide_unexportable_types(graph: gs.Graph) -> list[tuple[gs.Variable, object]]:
    hidden = []
    for sub in iter_graphs(graph):
        for t in sub.tensors().values():
            if isinstance(t, gs.Variable) and t.dtype is not None and getattr(t, "type", "tensor_type") not in _GS_TYPES:
                hidden.append((t, t.dtype))
                t.dtype = None
    return hidden


def _incomplete(tp: onnx.TypeProto) -> bool:
    kind = tp.WhichOneof("value")
    return kind is None or (kind == "tensor_type" and not tp.tensor_type.elem_type)


def _restore_types(model: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> None:
    """Put back declared types gs lost; drop value_info entries that say nothing."""
    for gp in _graph_protos(model.graph):
        for vi in list(gp.input) + list(gp.output):
            # Graph inputs and outputs are the contract: passes never change them, and gs loses
            # details (scalar shapes, optional types, denotations), so the declared type wins.
            original = types.get(vi.name)
            if original is not None:
                vi.type.CopyFrom(original)
        keep = []
        for vi in gp.value_info:
            original = types.get(vi.name)
            if original is not None and original.WhichOneof("value") not in (None, "tensor_type"):
                vi.type.CopyFrom(original)
            if not _incomplete(vi.type):
                keep.append(vi)
        if len(keep) != len(gp.value_info):
            kept = [onnx.ValueInfoProto() for _ in keep]
            for dst, src in zip(kept, keep):
                dst.CopyFrom(src)
            del gp.value_info[:]
            gp.value_info.extend(kept)


def _lazy_protos(graph: gs.Graph) -> Iterator[onnx.TensorProto]:
    scopes = [g for top in [graph, *graph.functions] for g in iter_graphs(top)]
    for sub in scopes:
        tensors = list(sub.tensors().values())
        tensors += [v for node in sub.nodes for v in node.attrs.values() if isinstance(v, gs.Constant)]
        for t in tensors:
            proto = getattr(getattr(t, "_values", None), "tensor", None)
            if isinstance(proto, onnx.TensorProto):
                yield proto


def header_of(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Everything but the graph and functions: what export restores (no weights copied)."""
    header = onnx.ModelProto()
    for field in _MODEL_FIELDS:
        if proto.HasField(field):
            setattr(header, field, getattr(proto, field))
    header.opset_import.extend(proto.opset_import)
    header.metadata_props.extend(proto.metadata_props)
    header.training_info.extend(proto.training_info)
    return header


def _restore(deferred) -> None:
    for const, values in deferred.values():
        const._values = values


DEFER_BYTES = 1 << 20


def _defer_large_constants(graph: gs.Graph) -> dict[str, tuple[gs.Constant, np.ndarray]]:
    deferred = {}
    for sub in iter_graphs(graph):
        for tensor in sub.tensors().values():
            values = getattr(tensor, "_values", None)
            if (isinstance(tensor, gs.Constant) and isinstance(values, np.ndarray) and values.nbytes >= DEFER_BYTES
                    and values.dtype.kind in "biuf" and np.dtype(tensor.export_dtype or values.dtype) == values.dtype):
                deferred[tensor.name] = (tensor, values)
                tensor._values = np.empty((0,), dtype=values.dtype)
    return deferred


def _graph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graph_protos(attr.g)
            for sub in attr.graphs:
                yield from _graph_protos(sub)


def _fill_deferred(model: onnx.ModelProto, deferred: dict[str, tuple[gs.Constant, np.ndarray]]) -> None:
    if not deferred:
        return
    for gp in _graph_protos(model.graph):
        for init in gp.initializer:
            item = deferred.get(init.name)
            if item is None or init.raw_data or list(init.dims) != [0]:
                continue
            values = item[1]
            del init.dims[:]
            init.dims.extend(values.shape)
            init.raw_data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


# ---------------------------------------------------------------------------------------------
# saving


def weights_nbytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in _all_tensors(model))


def save(model: onnx.ModelProto, path: str | os.PathLike, *, external: bool | None = None,
         before_commit=None) -> Path:
    """Write atomically: into a temporary sibling first, then rename; nothing half-written remains.

    With external data (forced, or needed past protobuf's 2 GB limit) the weights go to
    ``<name>.data`` next to the model. Note that writing external data moves the weights out of
    ``model`` (onnx does this in place), which is what keeps peak memory at one copy.
    ``before_commit(tmp_path)`` runs on the finished temporary file; if it raises, nothing is written.
    """
    out = Path(path)
    if out.exists() and out.is_dir():
        raise UsageError(f"{out}: is a directory")
    if not out.parent.exists():
        raise UsageError(f"{out.parent}: output directory does not exist")
    if external is None:
        external = weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp_model = tmpdir / out.name
        if external:
            data_name = out.name + ".data"
            onnx.save_model(model, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024, convert_attribute=False)
            if before_commit is not None:
                before_commit(tmp_model)
            if (tmpdir / data_name).exists():
                os.replace(tmpdir / data_name, out.parent / data_name)
        else:
            with open(tmp_model, "wb") as fh:
                fh.write(model.SerializeToString())
                fh.flush()
                os.fsync(fh.fileno())
            if before_commit is not None:
                before_commit(tmp_model)
        os.replace(tmp_model, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def _mapped_file(values: np.ndarray) -> tuple[str, int] | None:
    """(file, byte offset) when ``values`` is exactly a memory map of a file region."""
    base = values
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    if base is None or getattr(base, "filename", None) is None or base.nbytes != values.nbytes:
        return None
    if values.__array_interface__["data"][0] != base.__array_interface__["data"][0]:
        return None
    if not values.flags.c_contiguous or values.dtype.byteorder == ">":
        return None
    return base.filename, int(base.offset)


def _write_tensor(fh, values: np.ndarray, chunk: int = 64 << 20) -> None:
    """Stream one tensor into ``fh``: file-to-file for memory maps, so RSS stays flat."""
    source = _mapped_file(values)
    if source is not None:
        remaining = values.nbytes
        with open(source[0], "rb") as src:
            src.seek(source[1])
            while remaining:
                block = src.read(min(chunk, remaining))
                if not block:
                    raise BadInputError(f"{source[0]}: external data ended early")
                fh.write(block)
                remaining -= len(block)
        return
    flat = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).reshape(-1)
    step = max(1, chunk // max(1, flat.itemsize))
    for start in range(0, flat.size, step):
        fh.write(flat[start:start + step].tobytes())


def save_graph(graph: gs.Graph, template: onnx.ModelProto, path: str | os.PathLike, *,
               external: bool | None = None, align: int = 4096, before_commit=None) -> Path:
    """Export and write atomically; large weights stream straight to ``<name>.data``.

    This is the path for big models: weights that came memory-mapped go file to file and are
    never all in RAM, so a 2 GB+ model round-trips with at most one copy resident.
    """
    model, deferred = _export(graph, template)
    try:
        deferred_bytes = sum(v.nbytes for _, v in deferred.values())
        if external is None:
            external = deferred_bytes + weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD
        if not external:
            _fill_deferred(model, deferred)
            return save(model, path, external=False, before_commit=before_commit)
        out = Path(path)
        if not out.parent.exists():
            raise UsageError(f"{out.parent}: output directory does not exist")
        data_name = out.name + ".data"
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            with open(tmpdir / data_name, "wb") as fh:
                for gp in _graph_protos(model.graph):
                    for init in gp.initializer:
                        item = deferred.get(init.name)
                        if item is not None and not init.raw_data and list(init.dims) == [0]:
                            values = item[1]
                            del init.dims[:]
                            init.dims.extend(values.shape)
                        elif init.HasField("raw_data") and len(init.raw_data) >= 1024:
                            values = None
                        else:
                            continue
                        pad = (-fh.tell()) % align
                        fh.write(b"\0" * pad)
                        offset = fh.tell()
                        if values is None:
                            fh.write(init.raw_data)
                            init.ClearField("raw_data")
                        else:
                            _write_tensor(fh, values)
                        length = fh.tell() - offset
                        init.data_location = onnx.TensorProto.EXTERNAL
                        del init.external_data[:]
                        for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                            init.external_data.add(key=key, value=value)
                fh.flush()
                os.fsync(fh.fileno())
            with open(tmpdir / out.name, "wb") as fh:
                fh.write(model.SerializeToString())
                fh.flush()
                os.fsync(fh.fileno())
            if before_commit is not None:
                before_commit(tmpdir / out.name)
            os.replace(tmpdir / data_name, out.parent / data_name)
            os.replace(tmpdir / out.name, out)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return out
    finally:
        _restore(deferred)


# ---------------------------------------------------------------------------------------------
# fingerprint


def fingerprint(graph: gs.Graph | onnx.ModelProto) -> str:
    """A hash of structure and weights: equal fingerprints mean an unchanged model (change guard)."""
    if isinstance(graph, onnx.ModelProto):
        graph = gs.import_onnx(graph)
    digest = hashlib.sha256()
    _feed_graph(digest, graph)
    return digest.hexdigest()


def _feed_graph(digest, graph: gs.Graph) -> None:
    def tensor_key(t: gs.Tensor) -> str:
        if isinstance(t, gs.Constant):
            return f"C:{t.name}:{constant_digest(t)}"
        return f"V:{t.name}:{t.dtype}:{t.shape}"

    digest.update(b"in")
    for t in graph.inputs:
        digest.update(tensor_key(t).encode())
    digest.update(b"out")
    for t in graph.outputs:
        digest.update(tensor_key(t).encode())
    for node in graph.nodes:
        digest.update(f"N:{node.op}:{node.domain}:{node.name}".encode())
        for t in node.inputs:
            digest.update(tensor_key(t).encode())
        for t in node.outputs:
            digest.update(b">" + tensor_key(t).encode())
        for key in sorted(node.attrs):
            value = node.attrs[key]
            digest.update(key.encode())
            if isinstance(value, gs.Graph):
                _feed_graph(digest, value)
            elif isinstance(value, gs.Tensor):
                digest.update(tensor_key(value).encode())
            elif isinstance(value, np.ndarray):
                digest.update(value.tobytes())
            else:
                digest.update(repr(value).encode())


def read_values(const: gs.Constant) -> np.ndarray:
    """A constant's values WITHOUT caching them on the tensor.

    gs's ``Constant.values`` replaces a lazily loaded tensor by a numpy copy for good: that holds
    the weights twice and breaks the export of string tensors. Analyses read through this.
    """
    values = const._values
    if isinstance(values, gs.ir.tensor.LazyValues):
        return values.load()
    return np.asarray(values)


def constant_digest(const: gs.Constant) -> str:
    """Hash of a constant's dtype, shape and values, independent of its name and storage form."""
    proto = getattr(const._values, "tensor", None)
    if isinstance(proto, onnx.TensorProto) and proto.data_type not in _PLAIN_DTYPES:
        copy = onnx.TensorProto()
        copy.CopyFrom(proto)
        copy.name = ""
        return hashlib.sha1(copy.SerializeToString()).hexdigest()
    values = read_values(const)  # not ascontiguousarray: that turns 0-d into shape (1,)
    digest = hashlib.sha1(f"{values.dtype}{values.shape}".encode())
    if values.dtype == object:
        digest.update(repr(values.tolist()).encode())
    else:
        flat = np.ascontiguousarray(values).reshape(-1)
        digest.update(memoryview(flat.view(np.uint8)))  # no copy of big contiguous weights
    return digest.hexdigest()
