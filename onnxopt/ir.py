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
        check_valid(proto, str(path))
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


def check_valid(proto: onnx.ModelProto, where: str) -> None:
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
    """Export, keeping what gs drops: model metadata, doc strings, every opset import."""
    model = gs.export_onnx(graph, do_type_check=False)
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
    return model


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


def save(model: onnx.ModelProto, path: str | os.PathLike, *, external: bool | None = None) -> Path:
    """Write atomically: into a temporary sibling first, then rename; nothing half-written remains.

    With external data (forced, or needed past protobuf's 2 GB limit) the weights go to
    ``<name>.data`` next to the model. Note that writing external data moves the weights out of
    ``model`` (onnx does this in place), which is what keeps peak memory at one copy.
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
            if (tmpdir / data_name).exists():
                os.replace(tmpdir / data_name, out.parent / data_name)
        else:
            with open(tmp_model, "wb") as fh:
                fh.write(model.SerializeToString())
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp_model, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


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


def constant_digest(const: gs.Constant) -> str:
    """Hash of a constant's dtype, shape and values, independent of its name and storage form."""
    proto = getattr(const._values, "tensor", None)
    if isinstance(proto, onnx.TensorProto) and proto.data_type not in _PLAIN_DTYPES:
        copy = onnx.TensorProto()
        copy.CopyFrom(proto)
        copy.name = ""
        return hashlib.sha1(copy.SerializeToString()).hexdigest()
    values = np.ascontiguousarray(const.values)
    head = f"{values.dtype}{values.shape}".encode()
    if values.dtype == object:
        return hashlib.sha1(head + repr(values.tolist()).encode()).hexdigest()
    return hashlib.sha1(head + values.tobytes()).hexdigest()
