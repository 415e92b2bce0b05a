"""The faust seam refuses to start a worker on a faust whose internals moved (issue 11, defect 9)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from faust.transport.drivers import aiokafka as faust_aiokafka

from stream_reco.cli import cli
from stream_reco.exit_codes import EXIT_FAUST_INCOMPATIBLE
from stream_reco.stream import faust_internals


def test_the_pinned_faust_passes_every_check() -> None:
    assert faust_internals.check() == []


def test_another_faust_version_is_refused() -> None:
    problems = faust_internals.check(version="0.16.0")
    assert len(problems) == 1 and "0.16.0" in problems[0] and faust_internals.FAUST_VERSION in problems[0]


def test_a_renamed_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(faust_aiokafka.Consumer, "_new_consumer_thread")
    problems = faust_internals.check()
    assert problems == ["missing faust internal: faust.transport.drivers.aiokafka.Consumer._new_consumer_thread "
                        "(fetch wait)"]
    with pytest.raises(faust_internals.FaustIncompatible, match="_new_consumer_thread"):
        faust_internals.require()


def test_the_worker_command_refuses_to_start_with_its_own_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked before anything else (no broker is needed to see the refusal)."""
    import faust

    monkeypatch.setattr(faust, "__version__", "9.9.9")
    result = CliRunner().invoke(cli, ["worker"], env={"STREAM_RECO_CONFIG": "", "STREAM_RECO_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == EXIT_FAUST_INCOMPATIBLE, result.output
    assert "refusing to start" in result.output and "9.9.9" in result.output


def test_only_the_workers_own_routes_are_registered(tmp_path) -> None:
    from stream_reco.settings import Settings
    from stream_reco.stream.app import RecoWorker

    worker = RecoWorker(Settings.load(env={}).replace(data_dir=str(tmp_path), web_port=6066))
    worker.app.web.init_server()
    paths = sorted({r.resource.canonical for r in worker.app.web.web_app.router.routes()})
    assert paths == ["/healthz", "/items/{item_id}/similar", "/metrics", "/recommendations/{visitor}"]
