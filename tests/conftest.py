"""Test set-up: unit tests need nothing; integration tests get the real local platform
(Kafka + Flink), started here if it is not running and stopped at the end if we started
it (set RDV_KEEP_PLATFORM=1 to leave it up between runs)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from rdv import jobctl
from rdv.platform import Platform


@pytest.fixture(scope="session")
def platform() -> Iterator[Platform]:
    p = Platform()
    already = all(s.running for s in p.status())
    if not already:
        p.up()
    yield p
    if not already and not os.environ.get("RDV_KEEP_PLATFORM"):
        p.down()


@pytest.fixture(scope="session")
def demo_models() -> None:
    """The demo model packages with their artifacts (trained here on a fresh clone: the
    artifacts are produced, never committed)."""
    from rdv.demo import missing_artifacts
    from rdv.settings import ROOT
    from udfs.demo.train import train_all

    missing = missing_artifacts()
    if missing:
        train_all(ROOT / "models", models=tuple(missing), log=lambda m: None)
    assert not missing_artifacts()


@pytest.fixture
def run_job(platform: Platform) -> Iterator[Callable[..., str]]:
    """Submit a job of jobs/ for this test; it is cancelled when the test ends."""
    started: list[str] = []

    def submit(name: str, *args: str) -> str:
        job_id = jobctl.submit(name, list(args))
        started.append(job_id)
        return job_id

    yield submit
    for job_id in started:
        try:
            jobctl.cancel(job_id)
        except Exception as e:  # noqa: BLE001 - report, but cancel the others too
            print(f"cancelling {job_id}: {e}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
