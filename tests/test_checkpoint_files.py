"""A checkpoint file that is not one of ours is ignored, as a torn one is: the job starts that part over."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.render import load_if_matching


@pytest.mark.parametrize("content", [[1, 2], "text", 7, None])
def test_a_pickle_that_is_not_a_checkpoint_is_ignored(tmp_path, caplog, content):
    path = tmp_path / "checkpoint.pt"
    torch.save(content, path)
    with caplog.at_level(logging.WARNING, logger="engine.render"):
        assert load_if_matching(path, "fingerprint") is None
    assert "ignoring" in caplog.text


def test_a_torn_file_is_still_ignored(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"PK\x03\x04 torn")
    assert load_if_matching(path, "fingerprint") is None
