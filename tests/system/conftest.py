"""Fixtures of the cross-service system suite, and the report printed at the end of the run:
faults tried, documents and pages checked, losses, duplicate documents (tests/system/harness.py)."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from harness import FAST, REPORT, Pipeline  # noqa: E402


def _parent_helpers() -> None:
    """This file is imported under the module name ``conftest`` too, shadowing tests/conftest.py for
    ``from conftest import wait_until`` in tests/system/: re-export its plain helpers (not its
    fixtures, which pytest already provides from there)."""
    spec = importlib.util.spec_from_file_location("_tests_conftest", Path(__file__).parent.parent / "conftest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in ("ROOT", "SHARED", "CORPUS", "SYSTEM_REPORT_DIR", "wait_until", "unique", "corpus_dir", "stack_mod"):
        globals()[name] = getattr(mod, name)


_parent_helpers()


@pytest.fixture
def make_pipeline(make_settings: Callable[..., Any], tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    """Factory: ``make_pipeline(log_level="WARNING", **settings_overrides)`` -> a Pipeline with topics,
    bucket and consumer groups of the test's own and quick retry settings (``harness.FAST``); start
    its processes with ``.start()`` or ``.start_simulator/start_worker/start_aggregator``. Every
    process is killed after the test."""
    made: list[Pipeline] = []

    def factory(*, log_level: str = "WARNING", **overrides: Any) -> Pipeline:
        tag = uuid.uuid4().hex[:8]
        base: dict[str, Any] = dict(FAST, consumer_group_worker=f"workers-{tag}", consumer_group_aggregator=f"aggregator-{tag}",
                                    consumer_group_splitter=f"splitter-{tag}")
        base.update(overrides)
        p = Pipeline(make_settings(**base), tmp_path / f"pipeline-{len(made)}", log_level=log_level)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Leave this process's part of the report for tests/conftest.py to merge and print (with
    pytest-xdist every worker process holds its own REPORT)."""
    if not REPORT.faults and not REPORT.documents:
        return
    import json
    import os

    from conftest import SYSTEM_REPORT_DIR  # type: ignore[attr-defined]

    SYSTEM_REPORT_DIR.mkdir(parents=True, exist_ok=True)
    part = {k: getattr(REPORT, k) for k in ("faults", "documents", "pages", "pages_failed_by_design", "losses", "duplicates", "notes")}
    (SYSTEM_REPORT_DIR / f"part-{os.getpid()}.json").write_text(json.dumps(part))
