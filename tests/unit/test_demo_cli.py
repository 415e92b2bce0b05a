"""`stream-reco demo` without a broker: option checks, clear errors, run-folder pruning, and the clean-up
that must stop what the demo started (and nothing else) however it is interrupted."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stream_reco import broker
from stream_reco.cli import cli
from stream_reco.settings import Settings
from stream_reco.shop import demo

FAKE_BROKER_PID = 2**22 + 12345  # above any real pid_max default: never a process of this machine


def test_broker_error_is_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(*_: object, **__: object) -> int:
        raise broker.BrokerError("the broker of /data/kafka (pid 42) runs with other settings")

    monkeypatch.setattr(demo, "run_demo", busy)
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 1
    assert "Error: the broker of /data/kafka (pid 42) runs with other settings" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--rate", "0"], "--rate"),
    (["--rate", "-5"], "--rate"),
    (["--train-fraction", "0"], "--train-fraction"),
    (["--train-fraction", "1"], "--train-fraction"),
    (["--train-fraction", "1.5"], "--train-fraction"),
    (["--max-events", "-1"], "--max-events"),
])
def test_out_of_range_options_are_usage_errors(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                               message: str) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: calls.append(a) or 0)
    result = CliRunner().invoke(cli, ["demo", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert calls == []


def test_valid_options_reach_run_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: calls.append(a) or 0)
    result = CliRunner().invoke(cli, ["demo", "--size", "tiny", "--rate", "50", "--train-fraction", "0.25",
                                      "--max-events", "0", "--keep"])
    assert result.exit_code == 0, result.output
    (_, size, _, rate, max_events, _, fraction, keep), = calls
    assert (size, rate, max_events, fraction, keep) == ("tiny", 50.0, None, 0.25, True)


def test_help_documents_what_a_run_leaves_behind() -> None:
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "newest 3 run folders are kept" in text
    assert "--keep" in text


def test_prune_keeps_the_newest_runs_and_nothing_else(tmp_path: Path) -> None:
    names = ["20250101-120000", "20250102-120000-ab12", "20250103-120000-0f0f", "20250104-120000-1234",
             "20250105-120000-ffff"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "demo-summary.json").write_text("{}")
    (tmp_path / "my-notes").mkdir()  # not a run: never touched
    removed = demo.prune_runs(tmp_path, keep=3)
    assert sorted(p.name for p in removed) == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names[2:], "my-notes"])
    assert demo.prune_runs(tmp_path / "missing") == []


def test_run_names_are_unique_and_prunable() -> None:
    names = {demo._new_run_name() for _ in range(50)}
    assert len(names) > 1
    assert all(demo.RUN_NAME.fullmatch(n) for n in names)


def test_no_escape_codes_when_stdout_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert demo._line_start() == ""
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert demo._line_start() == demo.CLEAR_LINE


def test_sigterm_interrupts_like_ctrl_c() -> None:
    received: list[int] = []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), demo._sigterm_as_interrupt(received):
        os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler as soon as the call returns
    assert received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == before


def test_cleanup_steps_all_run_after_an_interrupt() -> None:
    ran: list[str] = []

    def interrupted() -> None:
        ran.append("a")
        raise KeyboardInterrupt

    def failing() -> None:
        ran.append("b")
        raise RuntimeError("boom")

    assert demo._run_steps([("a", interrupted), ("b", failing), ("c", lambda: ran.append("c"))]) == 1
    assert ran == ["a", "b", "c"]


class FakeWorker:
    """Stands in for WorkerProcess: ready fails with a first Ctrl-C, stop with a second one."""

    instances: list[FakeWorker] = []

    def __init__(self, settings: Settings, **_: Any) -> None:
        self.settings = settings
        self.killed = False
        self.proc = self
        self.pid = os.getpid()
        FakeWorker.instances.append(self)

    def poll(self) -> int | None:
        return 0 if self.killed else None

    def wait_ready(self) -> None:
        raise KeyboardInterrupt  # the user's first Ctrl-C

    def stop(self) -> int:
        raise KeyboardInterrupt  # a second Ctrl-C while waiting for the worker to exit

    def kill(self) -> None:
        self.killed = True

    def crashed(self) -> bool:
        return False


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[Any]]:
    """run_demo with every broker, training and worker call replaced by recorders."""
    calls: dict[str, list[Any]] = {"broker_stop": [], "delete_topics": []}

    def fake_write_shop(work: Path, size: str, seed: int) -> None:
        work.mkdir(parents=True)
        (work / "events.jsonl").write_bytes(b'{"event_id": "e-1"}\n{"event_id": "e-2"}\n')
        (work / "catalog.jsonl").write_bytes(b"")

    class Loaded:
        records: list[Any] = []
        catalog: list[Any] = []

    class Artifact:
        version = "v-test"
        item_ids: list[str] = []

    def fake_stop(settings: Settings) -> bool:
        calls["broker_stop"].append(settings)
        broker._CHILDREN.pop(FAKE_BROKER_PID, None)
        return True

    monkeypatch.setattr("stream_reco.shop.simulate.write_shop", fake_write_shop)
    monkeypatch.setattr("stream_reco.evaluate.loaders.load_log", lambda *a, **k: Loaded())
    monkeypatch.setattr("stream_reco.model.train.train_and_save", lambda *a, **k: (Artifact(), tmp_path / "m"))
    monkeypatch.setattr("stream_reco.stream.topics.ensure_topics", lambda settings: [])
    monkeypatch.setattr("stream_reco.stream.process.WorkerProcess", FakeWorker)
    monkeypatch.setattr(broker, "stop", fake_stop)
    monkeypatch.setattr(demo, "delete_run_topics", lambda *a: calls["delete_topics"].append(a) or ([], []))
    FakeWorker.instances.clear()
    yield calls
    broker._CHILDREN.pop(FAKE_BROKER_PID, None)


def launching_broker(then: type[BaseException] | None) -> Any:
    """An ensure_running that launches a (pretend) broker process, then optionally raises."""
    def ensure_running(settings: Settings) -> None:
        broker._CHILDREN[FAKE_BROKER_PID] = None  # type: ignore[assignment]
        if then is not None:
            raise then
    return ensure_running


def run(tmp_path: Path) -> int:
    return demo.run_demo(Settings().replace(data_dir=str(tmp_path)), "tiny", 1, 100.0, None, 0.5, 0.5)


def test_ctrl_c_while_starting_the_broker_stops_the_broker_it_launched(
        offline: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(broker, "ensure_running", launching_broker(KeyboardInterrupt))
    assert run(tmp_path) == 130
    assert len(offline["broker_stop"]) == 1
    assert FakeWorker.instances == []


def test_ctrl_c_never_stops_a_broker_the_demo_did_not_start(
        offline: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def already_running(settings: Settings) -> None:
        raise KeyboardInterrupt  # interrupted, but nothing was launched (someone else's broker answers)

    monkeypatch.setattr(broker, "ensure_running", already_running)
    assert run(tmp_path) == 130
    assert offline["broker_stop"] == []


def test_second_ctrl_c_while_stopping_the_worker_still_kills_it_and_stops_the_broker(
        offline: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(broker, "ensure_running", launching_broker(None))
    assert run(tmp_path) == 130
    (worker,) = FakeWorker.instances
    assert worker.killed
    assert len(offline["broker_stop"]) == 1
    assert offline["delete_topics"] == []  # a hurried stop keeps the topics, and says so
    out = capsys.readouterr()
    assert "topics kept: demo-" in out.out
    assert "interrupted while stopping the worker" in out.err
    assert f"this run's files so far: {tmp_path / 'demo'}" in out.out
