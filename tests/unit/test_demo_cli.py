"""`stream-reco demo` turns a broker problem into a one-line error and exit status 1, not a traceback."""

import pytest
from click.testing import CliRunner

from stream_reco import broker
from stream_reco.cli import cli
from stream_reco.shop import demo


def test_broker_error_is_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(*_: object, **__: object) -> int:
        raise broker.BrokerError("the broker of /data/kafka (pid 42) runs with other settings")

    monkeypatch.setattr(demo, "run_demo", busy)
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 1
    assert "Error: the broker of /data/kafka (pid 42) runs with other settings" in result.output
    assert "Traceback" not in result.output
