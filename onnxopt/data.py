"""Calibration / evaluation data: ``.npz`` files (or a directory of them) keyed by input name.

The first axis indexes samples. An array with the same rank as the model input yields batch-of-1
slices ``a[k:k+1]``; an array with one more axis yields ``a[k]``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import BadInputError


@dataclass
class Dataset:
    """Arrays per input name, split into samples lazily (memory stays bounded by one file)."""

    files: list[Path]

    @classmethod
    def open(cls, path: str | Path) -> "Dataset":
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("*.npz"))
            if not files:
                raise BadInputError(f"{path}: directory holds no .npz files")
        elif path.is_file():
            files = [path]
        else:
            raise BadInputError(f"{path}: no such file or directory")
        for f in files:
            if not zipfile.is_zipfile(f):
                raise BadInputError(f"{f}: not an .npz file")
        return cls(files)

    def samples(self, input_ranks: dict[str, int]) -> Iterator[dict[str, np.ndarray]]:
        """Feed dicts for the named inputs, one sample at a time."""
        for file in self.files:
            try:
                arrays = np.load(file, allow_pickle=False)
            except Exception as exc:  # noqa: BLE001 - any read failure is a bad input
                raise BadInputError(f"{file}: cannot read ({exc})") from None
            with arrays:
                missing = [name for name in input_ranks if name not in arrays.files]
                if missing:
                    raise BadInputError(f"{file}: no array for model input(s) {', '.join(missing)} "
                                        f"(has {', '.join(arrays.files) or 'none'})")
                loaded = {name: arrays[name] for name in input_ranks}
            counts = set()
            for name, array in list(loaded.items()):
                rank = input_ranks[name]
                if rank == 0 and array.ndim == 0:  # a scalar input given as a scalar: one sample
                    array = loaded[name] = array[None]
                if array.ndim not in (rank, rank + 1):
                    raise BadInputError(f"{file}: '{name}' has rank {array.ndim}, model input has rank {rank}")
                counts.add(array.shape[0])
            if len(counts) != 1:
                raise BadInputError(f"{file}: arrays disagree on the number of samples ({sorted(counts)})")
            for k in range(counts.pop()):
                # np.asarray: a[k] of a rank-0 input is a numpy scalar, which ORT refuses
                yield {name: (a[k:k + 1] if a.ndim == input_ranks[name] else np.asarray(a[k]))
                       for name, a in loaded.items()}

    def take(self, input_ranks: dict[str, int], limit: int | None = None) -> list[dict[str, np.ndarray]]:
        out = []
        for sample in self.samples(input_ranks):
            out.append(sample)
            if limit is not None and len(out) >= limit:
                break
        return out
