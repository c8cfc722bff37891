"""Real inputs for the real models: rendered text for the PP-OCR models, tokenized sentences
for all-MiniLM-L6-v2, crops of real photos for resnet50 and keras_mobilenetv2. Shared by tests,
benchmarks, the export scripts and the demo-input script.

Text comes from Python's own module docstrings (``docstring_sentences``, ``text_lines``).
Images are rendered with Pillow's bundled font (``ImageFont.load_default(size=...)``) and
preprocessed exactly as rapidocr-onnxruntime 1.4.4 does (its ``resize_norm_img``: keep the
aspect ratio, resize to height 48 with bilinear interpolation, ``(x/255 - 0.5)/0.5``, zero-pad
on the right), with cv2's INTER_LINEAR reimplemented in numpy so OpenCV is not needed.

Photos (``photo_crops``, ``imagenet_batch``, ``mobilenet_v2_batch``) are the colour sample
images of the scikit-image and scikit-learn wheels, which models/fetch.py extracts into the
cache (neither package is installed); models/registry.json splits them into disjoint
calibration and evaluation photos.

Dependencies: numpy always; Pillow only for rendering (``render_text``, ``ocr_*``) and for
decoding and resizing photos; for
``minilm_batch`` the ``tokenizers`` package when installed, else a pure-Python BERT WordPiece
tokenizer that gives the same ids for this vocabulary (checked against ``tokenizers`` and
``transformers`` at export time by models/export_minilm.py).
"""

from __future__ import annotations

import importlib
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

__all__ = [
    "DOCSTRING_MODULES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cls_input",
    "ctc_greedy_decode",
    "docstring_sentences",
    "imagenet_batch",
    "load_ctc_keys",
    "mean_pool",
    "minilm_batch",
    "mobilenet_v2_batch",
    "normalize",
    "ocr_batch",
    "ocr_page",
    "ocr_text_line",
    "photo_crops",
    "render_text",
    "resize_bilinear",
    "text_lines",
]

# Standard-library modules with long, stable English docstrings.
DOCSTRING_MODULES = (
    "argparse", "json", "collections", "functools", "pathlib", "subprocess", "textwrap",
    "tarfile", "zipfile", "pickle", "logging", "unittest", "difflib", "heapq", "bisect",
    "csv", "shlex", "string", "inspect", "typing", "email", "http", "random", "decimal",
)


# --------------------------------------------------------------------------------------- text

def _module_docs(modules: Iterable[str]) -> list[str]:
    docs = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # pragma: no cover - stdlib
            continue
        if mod.__doc__:
            docs.append(mod.__doc__)
    return docs


def docstring_sentences(n: int | None = None, *, min_len: int = 20, max_len: int = 300,
                        modules: Sequence[str] = DOCSTRING_MODULES) -> list[str]:
    """Sentences (whitespace-collapsed) from stdlib module docstrings, in a stable order."""
    out: list[str] = []
    seen = set()
    for doc in _module_docs(modules):
        for para in re.split(r"\n\s*\n", doc):
            para = " ".join(para.split())
            for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
                sent = sent.strip()
                if min_len <= len(sent) <= max_len and sent not in seen and re.search(r"[a-z]{3}", sent):
                    seen.add(sent)
                    out.append(sent)
    return out[:n] if n is not None else out


def text_lines(n: int | None = None, *, min_chars: int = 8, max_chars: int = 32,
               modules: Sequence[str] = DOCSTRING_MODULES) -> list[str]:
    """Short printable-ASCII lines (word-wrapped docstring prose) for OCR rendering."""
    out: list[str] = []
    seen = set()
    for sent in docstring_sentences(modules=modules, min_len=min_chars):
        words = [w for w in sent.split() if w.isascii() and w.isprintable()]
        line = ""
        for w in words:
            if len(line) + 1 + len(w) > max_chars:
                if len(line) >= min_chars and line not in seen:
                    seen.add(line)
                    out.append(line)
                line = w if len(w) <= max_chars else ""
            else:
                line = f"{line} {w}" if line else w
        if len(line) >= min_chars and line not in seen:
            seen.add(line)
            out.append(line)
        if n is not None and len(out) >= n:
            break
    return out[:n] if n is not None else out


# --------------------------------------------------------------------------------- rendering

def _font(size: int):
    from PIL import ImageFont  # Pillow is needed only to render

    return ImageFont.load_default(size=size)


def render_text(text: str, *, font_size: int = 32, margin: int = 4,
                fg: int = 0, bg: int = 255) -> np.ndarray:
    """A tight crop of one rendered text line: uint8 HxWx3 (dark text on light ground), like
    a box cut out by the detector."""
    from PIL import Image, ImageDraw

    font = _font(font_size)
    left, top, right, bottom = font.getbbox(text)
    w = max(1, right - left) + 2 * margin
    h = max(1, bottom - top) + 2 * margin
    img = Image.new("L", (w, h), bg)
    ImageDraw.Draw(img).text((margin - left, margin - top), text, fill=fg, font=font)
    a = np.asarray(img, dtype=np.uint8)
    return np.repeat(a[:, :, None], 3, axis=2)


def resize_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(img, (width, height))`` (INTER_LINEAR, half-pixel centres, edge clamp, no
    antialiasing) in numpy; float32 HxWxC out, rounded to integers for uint8 input as cv2 does."""
    src = np.asarray(img, dtype=np.float32)
    if src.ndim == 2:
        src = src[:, :, None]
    h0, w0 = src.shape[:2]

    def axis(n_out: int, n_in: int):
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0, None)
        i0 = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = (x - i0).astype(np.float32)
        return i0, i1, f

    y0, y1, fy = axis(height, h0)
    x0, x1, fx = axis(width, w0)
    top = src[y0][:, x0] * (1 - fx)[None, :, None] + src[y0][:, x1] * fx[None, :, None]
    bot = src[y1][:, x0] * (1 - fx)[None, :, None] + src[y1][:, x1] * fx[None, :, None]
    out = top * (1 - fy)[:, None, None] + bot * fy[:, None, None]
    if np.asarray(img).dtype == np.uint8:  # cv2 returns uint8 for uint8 input
        out = np.clip(np.rint(out), 0, 255)
    return out.astype(np.float32)


def normalize(img: np.ndarray) -> np.ndarray:
    """HxWx3 (0..255) -> float32 3xHxW in [-1, 1]: ``(x/255 - 0.5)/0.5`` as PP-OCR does."""
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((x - 0.5) / 0.5).astype(np.float32)


def _resize_norm_line(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` for rec and cls: 3xhxw float32."""
    ratio = img.shape[1] / float(img.shape[0])
    resized_w = min(math.ceil(h * ratio), w)  # rapidocr: squeeze lines wider than w
    x = normalize(resize_bilinear(img, resized_w, h))
    out = np.zeros((3, h, w), dtype=np.float32)
    out[:, :, :resized_w] = x
    return out


def rec_width(text: str, *, h: int = 48, min_w: int = 320, font_size: int = 32) -> int:
    """The width rapidocr's recognizer would use for this line alone: ``int(h * max(ratio, min_w/h))``."""
    img = render_text(text, font_size=font_size)
    return int(h * max(img.shape[1] / img.shape[0], min_w / h))


def ocr_text_line(text: str, h: int = 48, w: int = 320, *, font_size: int = 32,
                  rotate180: bool = False) -> np.ndarray:
    """One rendered, preprocessed text line as a 1x3xhxw float32 batch (rec: 48x320, cls:
    48x192). A line wider than ``w`` after resizing to height ``h`` is squeezed to ``w``, as
    rapidocr does."""
    img = render_text(text, font_size=font_size)
    if rotate180:
        img = img[::-1, ::-1]
    return _resize_norm_line(img, h, w)[None]


def cls_input(text: str, *, rotate180: bool = False, font_size: int = 32) -> np.ndarray:
    """Input for the PP-OCR direction classifier (1x3x48x192)."""
    return ocr_text_line(text, 48, 192, font_size=font_size, rotate180=rotate180)


def ocr_batch(texts: Sequence[str], h: int = 48, w: int = 320, *, font_size: int = 32,
              rotate180: Sequence[bool] | bool = False) -> np.ndarray:
    """Nx3xhxw batch of rendered text lines."""
    if isinstance(rotate180, bool):
        rotate180 = [rotate180] * len(texts)
    return np.concatenate([ocr_text_line(t, h, w, font_size=font_size, rotate180=r)
                           for t, r in zip(texts, rotate180)])


def ocr_page(lines: Sequence[str], h: int = 320, w: int = 320, *, font_size: int = 20,
             line_gap: float = 1.6, margin: int = 12) -> np.ndarray:
    """A white hxw page with ``lines`` of dark text, preprocessed for the detector as a
    1x3xhxw float32 batch (h and w should be multiples of 32). Lines that do not fit are
    clipped."""
    from PIL import Image, ImageDraw

    font = _font(font_size)
    img = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(img)
    y = margin
    for line in lines:
        if y + font_size > h - margin:
            break
        draw.text((margin, y), line, fill=0, font=font)
        y += int(font_size * line_gap)
    a = np.repeat(np.asarray(img, dtype=np.uint8)[:, :, None], 3, axis=2)
    return normalize(a)[None]


# ------------------------------------------------------------------------------------ photos

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _paths():
    try:
        from . import paths  # type: ignore[no-redef]
    except ImportError:
        import paths  # type: ignore[no-redef]
    return paths


def _photo_files(split: str, image_dir: str | Path | None) -> list[Path]:
    paths = _paths()
    files = paths.image_files(split)  # validates split
    if image_dir is not None:
        files = [Path(image_dir) / f.name for f in files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"photo {missing[0]} is missing (run: python models/fetch.py)")
    return files


@lru_cache(maxsize=16)
def _load_photo(path: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def photo_crops(n: int, seed: int, size: int = 224, *, split: str = "all",
                image_dir: str | Path | None = None,
                area: tuple[float, float] = (0.25, 1.0)) -> np.ndarray:
    """``n`` random crops of real photos, uint8 (n, size, size, 3) RGB.

    Like torchvision's RandomResizedCrop + RandomHorizontalFlip: a box covering ``area`` of the
    photo (fraction, uniform) with aspect ratio in [3/4, 4/3] (log-uniform), flipped with
    probability 1/2, resized to size x size by Pillow's antialiased bilinear filter. The photos
    are taken in turn (each round in a seeded order), so crops spread evenly over the split's
    photos. Crop k depends only on (seed, k, size, split): a smaller ``n`` gives a prefix.
    ``split``: "calib", "eval" (disjoint photos) or "all".
    """
    from PIL import Image

    files = _photo_files(split, image_dir)
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    order: list[int] = []
    for k in range(n):
        if not order:
            order = [int(i) for i in np.argsort(rng.random(len(files)), kind="stable")]
        img = _load_photo(str(files[order.pop(0)]))
        w, h = img.size
        u = rng.random(5)
        frac = area[0] + (area[1] - area[0]) * u[0]
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        cw = min(w, math.sqrt(w * h * frac * ratio))
        ch = min(h, math.sqrt(w * h * frac / ratio))
        x0 = (w - cw) * u[2]
        y0 = (h - ch) * u[3]
        crop = img.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        a = np.asarray(crop, dtype=np.uint8)
        out[k] = a[:, ::-1] if u[4] < 0.5 else a
    return out


def imagenet_batch(n: int, seed: int, size: int = 224, *, split: str = "all",
                   image_dir: str | Path | None = None) -> np.ndarray:
    """``photo_crops`` preprocessed for torchvision-style ImageNet models such as
    ``resnet50``: ``(x/255 - mean)/std`` with the ImageNet mean and std, float32 NCHW."""
    x = photo_crops(n, seed, size, split=split, image_dir=image_dir).astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def mobilenet_v2_batch(n: int, seed: int, size: int = 224, *, split: str = "all",
                       image_dir: str | Path | None = None) -> np.ndarray:
    """``photo_crops`` preprocessed as ``keras.applications.mobilenet_v2.preprocess_input``
    does (``x/127.5 - 1``), float32 NHWC, for ``keras_mobilenetv2``."""
    x = photo_crops(n, seed, size, split=split, image_dir=image_dir).astype(np.float32)
    return (x / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


# ------------------------------------------------------------------------------------ CTC

def load_ctc_keys(path: str | Path) -> list[str]:
    """Class list of the PP-OCRv4 recognizer: blank, the dictionary lines, then ' '."""
    chars = Path(path).read_text(encoding="utf-8").splitlines()
    return ["<blank>", *chars, " "]


def ctc_greedy_decode(probs: np.ndarray, keys: Sequence[str]) -> list[str]:
    """Greedy CTC: argmax per column, merge repeats, drop blanks (class 0). probs: NxTxC."""
    idx = np.asarray(probs).argmax(axis=2)
    out = []
    for row in idx:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        out.append("".join(keys[i] for i in row[keep]))
    return out


# -------------------------------------------------------------------------------- MiniLM

def _tokenizer_dir(tokenizer_dir: str | Path | None) -> Path:
    if tokenizer_dir is not None:
        return Path(tokenizer_dir)
    return _paths().asset_path("all_minilm_l6_v2", "tokenizer_dir")


def minilm_batch(sentences: Sequence[str], *, max_length: int = 128,
                 tokenizer_dir: str | Path | None = None,
                 backend: str = "auto") -> dict[str, np.ndarray]:
    """Tokenize for all-MiniLM-L6-v2: ``{"input_ids", "attention_mask", "token_type_ids"}``,
    int64 arrays of shape (len(sentences), longest) padded with [PAD]=0, truncated to
    ``max_length`` tokens including [CLS]/[SEP].

    backend: "tokenizers" (the HF ``tokenizers`` package, reading tokenizer.json),
    "python" (built-in WordPiece reading vocab.txt) or "auto" (the first if installed).
    """
    tdir = _tokenizer_dir(tokenizer_dir)
    if backend == "auto":
        try:
            import tokenizers  # noqa: F401
            backend = "tokenizers"
        except ImportError:
            backend = "python"
    if backend == "tokenizers":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
        tok.enable_truncation(max_length=max_length)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
        enc = tok.encode_batch(list(sentences))
        ids = [e.ids for e in enc]
        mask = [e.attention_mask for e in enc]
        types = [e.type_ids for e in enc]
    elif backend == "python":
        wp = _WordPiece.load(tdir / "vocab.txt")
        seqs = [wp.encode(s, max_length) for s in sentences]
        n = max(len(s) for s in seqs)
        ids = [s + [0] * (n - len(s)) for s in seqs]
        mask = [[1] * len(s) + [0] * (n - len(s)) for s in seqs]
        types = [[0] * n for _ in seqs]
    else:
        raise ValueError(f"unknown backend {backend!r}: use auto, tokenizers or python")
    return {
        "input_ids": np.asarray(ids, dtype=np.int64),
        "attention_mask": np.asarray(mask, dtype=np.int64),
        "token_type_ids": np.asarray(types, dtype=np.int64),
    }


def mean_pool(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2:
    attention-masked mean over tokens, then L2 normalisation. (N, 384) float32."""
    m = attention_mask.astype(np.float32)[:, :, None]
    s = (last_hidden_state * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    return (s / np.clip(np.linalg.norm(s, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


class _WordPiece:
    """BERT uncased tokenization (BertNormalizer + BertPreTokenizer + WordPiece), enough to
    reproduce tokenizer.json of all-MiniLM-L6-v2 without the ``tokenizers`` package."""

    _cache: ClassVar[dict[Path, _WordPiece]] = {}

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab
        self.unk = vocab["[UNK]"]
        self.cls = vocab["[CLS]"]
        self.sep = vocab["[SEP]"]

    @classmethod
    def load(cls, path: Path) -> _WordPiece:
        path = Path(path)
        if path not in cls._cache:
            lines = path.read_text(encoding="utf-8").split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            cls._cache[path] = cls({tok: i for i, tok in enumerate(lines)})
        return cls._cache[path]

    @staticmethod
    def _is_chinese(cp: int) -> bool:
        return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
                or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
                or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)

    @staticmethod
    def _is_punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    def _normalize(self, text: str) -> str:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD:
                continue
            cat = unicodedata.category(ch)
            if ch in "\t\n\r" or cat == "Zs":
                out.append(" ")
                continue
            if cat in ("Cc", "Cf"):
                continue
            if self._is_chinese(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        text = "".join(out).lower()
        text = unicodedata.normalize("NFD", text)
        return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")

    def _pre_tokenize(self, text: str) -> list[str]:
        words = []
        for chunk in text.split():
            cur = ""
            for ch in chunk:
                if self._is_punct(ch):
                    if cur:
                        words.append(cur)
                        cur = ""
                    words.append(ch)
                else:
                    cur += ch
            if cur:
                words.append(cur)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, max_length: int) -> list[int]:
        ids: list[int] = []
        for word in self._pre_tokenize(self._normalize(text)):
            ids.extend(self._wordpiece(word))
        return [self.cls, *ids[: max(0, max_length - 2)], self.sep]
