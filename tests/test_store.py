import json

import numpy as np
import pytest

from orandnet_lib.core import store


def test_atomic_write_keeps_previous_file_on_error(tmp_path):
    path = tmp_path / "a.json"
    store.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with store.atomic_path(path) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_json_refuses_nan_instead_of_writing_invalid_json(tmp_path):
    store.write_json(tmp_path / "m.json", {"x": float("nan"), "y": np.float32(0.5), "z": (1, 2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "y": 0.5, "z": [1, 2]}


def test_hash_is_independent_of_key_order_and_sensitive_to_values():
    a = store.hash_obj({"a": 1, "b": [1, 2]})
    assert a == store.hash_obj({"b": [1, 2], "a": 1})
    assert a != store.hash_obj({"a": 1, "b": [2, 1]})
    assert a != store.hash_obj({"a": 1.5, "b": [1, 2]})


def test_deep_merge():
    merged = store.deep_merge({"cams": {"cnn": 1}, "x": 1}, {"cams": {"vit": 2}, "x": 3})
    assert merged == {"cams": {"cnn": 1, "vit": 2}, "x": 3}


def test_read_manifest_absent_and_corrupt(tmp_path):
    assert store.read_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        store.read_manifest(tmp_path)
