"""The Celery app follows the settings it was last configured with."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_support import build_stack

from spinexr.node.tasking.app import INFERENCE_QUEUE, configure
from spinexr.node.tasking.depth import queue_depths
from spinexr.node.tasking.dispatch import publish_analysis


def test_configuring_another_broker_publishes_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = build_stack(tmp_path / "a").settings
    second = build_stack(tmp_path / "b").settings
    configure(first)
    publish_analysis(1, 3)
    configure(second)
    publish_analysis(2, 3)
    publish_analysis(3, 3)
    assert queue_depths(first)[INFERENCE_QUEUE] == 1
    assert queue_depths(second)[INFERENCE_QUEUE] == 2
