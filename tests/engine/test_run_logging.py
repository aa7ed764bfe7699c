"""Two runs in one process never write into each other's log file."""

from __future__ import annotations

import logging

import pytest

from minimaxad.cli import main
from minimaxad.engine.runner import close_run_logging, setup_logging, with_run_logging

log = logging.getLogger("minimaxad")

pytestmark = pytest.mark.usefixtures("single_thread")


def run_handlers() -> list[logging.Handler]:
    return [h for h in log.handlers if getattr(h, "minimaxad_run_log", False)]


def test_each_run_logs_into_its_own_file_only(tmp_path):
    setup_logging(tmp_path / "a")
    log.info("message of run a")
    setup_logging(tmp_path / "b")
    log.info("message of run b")
    close_run_logging()
    log.info("after both runs")
    assert "message of run a" in (tmp_path / "a" / "train.log").read_text()
    assert "run b" not in (tmp_path / "a" / "train.log").read_text()
    assert "run a" not in (tmp_path / "b" / "train.log").read_text()
    assert "after both" not in (tmp_path / "b" / "train.log").read_text()
    assert run_handlers() == []


def test_a_failing_command_closes_its_log(tmp_path):
    @with_run_logging
    def failing_command():
        setup_logging(tmp_path, "test.log")
        raise ValueError("boom")

    user_handler = logging.NullHandler()  # a handler of the user's is left alone
    log.addHandler(user_handler)
    try:
        with pytest.raises(ValueError):
            failing_command()
        assert run_handlers() == [] and user_handler in log.handlers
    finally:
        log.removeHandler(user_handler)


def test_test_after_fit_in_one_process(trained_checkpoint, synthetic_root, tmp_path):
    train_log = trained_checkpoint.parent / "train.log"
    before = train_log.read_text()
    out = tmp_path / "evaluation"
    assert (
        main(
            [
                "test",
                "--checkpoint",
                str(trained_checkpoint),
                "--data",
                str(synthetic_root),
                "--output",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert train_log.read_text() == before
    assert (out / "test.log").is_file() and run_handlers() == []
