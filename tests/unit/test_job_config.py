"""Job configs: typed, from env or flags, bad values rejected with a message saying what to do."""

from __future__ import annotations

import pytest

from jobs.common import config_from_args
from jobs.passthrough import PassthroughConfig


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDV_SINK_TOPIC", "from-env")
    monkeypatch.setenv("RDV_PARALLELISM", "3")
    cfg = config_from_args(PassthroughConfig, ["--source-topic", "x"], "passthrough")
    assert (cfg.source_topic, cfg.sink_topic, cfg.parallelism) == ("x", "from-env", 3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--start-from", "yesterday"], "start_from must be one of committed, earliest, latest"),
        (["--parallelism", "0"], "parallelism must be >= 1"),
        (["--parallelism", "two"], "invalid int value"),
    ],
)
def test_bad_arguments_are_rejected_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        config_from_args(PassthroughConfig, argv, "passthrough")
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
