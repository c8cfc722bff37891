"""The --calib / --inputs data format (onnxopt.data.Dataset): .npz files keyed by input name,
the first axis indexes samples."""

import numpy as np
import pytest

from onnxopt.data import Dataset
from onnxopt.errors import BadInputError


def npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_same_rank_arrays_give_batch_of_one_slices(tmp_path):
    x = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    samples = Dataset.open(npz(tmp_path / "a.npz", x=x)).take({"x": 3})
    assert len(samples) == 3 and all(s["x"].shape == (1, 2, 4) for s in samples)
    np.testing.assert_array_equal(samples[2]["x"][0], x[2])


def test_one_more_axis_indexes_samples_of_any_shape(tmp_path):
    x = np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4)
    samples = Dataset.open(npz(tmp_path / "a.npz", x=x)).take({"x": 2})
    assert [s["x"].shape for s in samples] == [(5, 4), (5, 4)]


def test_scalar_inputs_come_out_as_zero_d_arrays(tmp_path):
    # ORT refuses numpy scalars (np.float32(1.0)); a sample of a rank-0 input must be a 0-d array
    many = Dataset.open(npz(tmp_path / "a.npz", s=np.array([1.5, 2.5], np.float32))).take({"s": 0})
    assert [type(m["s"]) for m in many] == [np.ndarray, np.ndarray] and many[1]["s"].shape == ()
    one = Dataset.open(npz(tmp_path / "b.npz", s=np.float32(4.0))).take({"s": 0})
    assert len(one) == 1 and one[0]["s"].shape == () and float(one[0]["s"]) == 4.0


def test_a_directory_is_read_file_by_file_in_name_order(tmp_path):
    npz(tmp_path / "b.npz", x=np.full((1, 2), 2, np.float32))
    npz(tmp_path / "a.npz", x=np.full((2, 2), 1, np.float32))
    samples = Dataset.open(tmp_path).take({"x": 2})
    assert [float(s["x"][0, 0]) for s in samples] == [1.0, 1.0, 2.0]
    assert len(Dataset.open(tmp_path).take({"x": 2}, limit=2)) == 2


@pytest.mark.parametrize("arrays, ranks, message", [
    ({"x": np.zeros((2, 3))}, {"x": 2, "y": 2}, "no array for model input"),
    ({"x": np.zeros((2, 3, 4, 5))}, {"x": 2}, "has rank 4, model input has rank 2"),
    ({"x": np.zeros((2, 3)), "y": np.zeros((3, 3))}, {"x": 2, "y": 2}, "disagree on the number of samples"),
])
def test_bad_data_is_one_clear_error(tmp_path, arrays, ranks, message):
    with pytest.raises(BadInputError, match=message):
        Dataset.open(npz(tmp_path / "a.npz", **arrays)).take(ranks)


def test_missing_empty_or_foreign_paths_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        Dataset.open(tmp_path / "nope.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no .npz files"):
        Dataset.open(tmp_path / "empty")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(BadInputError, match="not an .npz file"):
        Dataset.open(tmp_path / "text.npz")
