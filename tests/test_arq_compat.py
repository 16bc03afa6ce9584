"""arq's internals storyflow relies on (worker/arq_compat.py): fails loudly when an arq release moves one."""

from __future__ import annotations

import inspect

import arq
from arq import constants
from arq.worker import Worker

from infra import keys


def test_arq_is_a_tested_release() -> None:
    assert arq.VERSION.startswith("0.28."), f"arq {arq.VERSION}: check worker/arq_compat.py, then widen the pin"


def test_the_methods_storyflow_overrides_or_calls_are_still_there() -> None:
    expected = {
        "_poll_iteration": ["self"],
        "start_jobs": ["self", "job_ids"],
        "finish_job": [
            "self", "job_id", "finish", "result_data", "result_timeout_s", "keep_result_forever", "incr_score",
            "keep_in_progress",
        ],
        "_release_sem_dec_counter_on_complete": ["self"],
        "close": ["self"],
    }  # fmt: skip
    for name, parameters in expected.items():
        method = getattr(Worker, name, None)
        assert method is not None, f"arq's Worker has no {name} any more"
        assert list(inspect.signature(method).parameters) == parameters, name


def test_the_in_progress_marker_still_takes_its_timeout_from_the_attribute() -> None:
    assert "self.in_progress_timeout_s" in inspect.getsource(Worker.start_jobs)
    assert "in_progress_key_prefix" in inspect.getsource(Worker.finish_job)


def test_the_key_names_the_lua_scripts_use_are_arqs() -> None:
    assert keys.ARQ_QUEUE == constants.default_queue_name == "arq:queue"
    assert keys.arq_job("x") == constants.job_key_prefix + "x"
    assert keys.arq_in_progress("x") == constants.in_progress_key_prefix + "x"
    assert constants.abort_jobs_ss == keys.ARQ_ABORT_SET
