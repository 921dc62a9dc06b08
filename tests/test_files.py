"""Files are written whole or not at all."""

import json

import pytest

from flaxlstm.files import atomic_write, save_json


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "metrics.json"
    save_json(path, {"test_accuracy": 0.9})

    def crash(f):
        f.write(b'{"test_accura')
        raise KeyboardInterrupt  # killed half-way through

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"test_accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
