"""A device's answers over SSH are untrusted input (issue 37): not JSON, cut off, missing or
null fields, NaN and negative latencies, terminal escapes, a gigantic answer, no answer at all.
Each is one line, bounded in memory and time. The "device" is a stand-in ssh that answers what
the test tells it to."""

from __future__ import annotations

import json
import time

import pytest

from tledge.device import remote
from tledge.device.ssh import Device, Target, answer_fields, printable
from tledge.core.errors import TledgeError


@pytest.fixture
def device(tmp_path, monkeypatch):
    """A Device whose ssh runs the shell text in $TLEDGE_FAKE_ANSWER instead of the command."""
    script = tmp_path / "ssh"
    script.write_text('#!/bin/sh\nexec sh -c "$TLEDGE_FAKE_ANSWER"\n')
    script.chmod(0o755)
    monkeypatch.setenv("TLEDGE_SSH_COMMAND", str(script))
    return Device(Target.parse("pi@pi4"))


@pytest.mark.parametrize("answer, fragment", [
    ("echo not json", "gave no answer to facts"),
    ("echo '{\"python\": \"3.11\", '", "is not JSON"),
    ("echo '{\"free_mb\": NaN}'", "is not JSON"),
    ("echo '[1, 2]'", "gave no answer"),
])
def test_an_answer_that_is_not_a_json_object_is_one_line(device, monkeypatch, answer, fragment):
    monkeypatch.setenv("TLEDGE_FAKE_ANSWER", answer)
    with pytest.raises(TledgeError, match=fragment):
        device.agent("facts", "~/tledge")


@pytest.mark.parametrize("facts, fragment", [
    ({}, "no valid 'python'"),
    ({"python": "3.11.2", "python_ok": None}, "no valid 'python_ok'"),
    ({"python": "3.11.2", "python_ok": True, "arch": "aarch64", "arch_ok": True,
      "dir": "/home/pi/tledge", "free_mb": float("inf")}, "no valid 'free_mb'"),
])
def test_missing_or_null_fields_are_one_line(facts, fragment):
    with pytest.raises(TledgeError, match=fragment):
        answer_fields(facts, "pi4", "facts", python=str, python_ok=bool, arch=str,
                      arch_ok=bool, dir=str, free_mb=(int, float))


def test_a_gigantic_answer_is_refused_without_holding_it(device, monkeypatch):
    """1.5 GB of answer was held in memory (MemoryError): past 16 MB the command is ended."""
    import resource

    monkeypatch.setenv("TLEDGE_FAKE_ANSWER", "yes '{}' | head -c 3000000000")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(TledgeError, match="over 16 MB"):
        device.agent("facts", "~/tledge")
    assert time.monotonic() - start < 20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB


def test_a_device_that_never_answers_is_given_up_saying_what_was_awaited(device, monkeypatch,
                                                                         capfd):
    monkeypatch.setenv("TLEDGE_FAKE_ANSWER", "sleep 60")
    monkeypatch.setattr("tledge.device.ssh.WAIT_NOTICE_S", 0.5)
    start = time.monotonic()
    with pytest.raises(TledgeError, match=r"pi@pi4 gave no answer within 2 s to its facts"):
        device.agent("facts", "~/tledge", timeout=2)
    assert time.monotonic() - start < 8
    assert "still waiting for pi@pi4: its facts" in capfd.readouterr().err


def test_terminal_escapes_from_the_device_never_reach_the_terminal(device, monkeypatch):
    monkeypatch.setenv("TLEDGE_FAKE_ANSWER", "printf 'working \\033[2J\\033]0;owned\\007\\r"
                                             "done\\n' >&2; echo '{\"doctor\": \"ok\\u001b[31m\"}'")
    seen = []
    answer = device.agent("doctor", "~/tledge", echo=seen.append)
    assert seen and all("\x1b" not in line and "\r" not in line and "\x07" not in line
                        for line in seen)
    assert "\x1b" not in answer_fields(answer, "pi4", "doctor", doctor=str)["doctor"]
    assert printable("a\x1b[2Jb\nc", newlines=False) == "a?[2Jb c"


def _report(**row_changes) -> dict:
    stats = {"p50": 2.0, "p90": 2.5, "p99": 3.0, "mean": 2.2, "std": 0.3}
    row = {"model": "/home/pi/tledge/models/m.tflite", "name": "models/m.tflite",
           "format": "int8", "device": "cpu", "backend": "litert 2.3.0", "threads": 1,
           "size_bytes": 1000, "load_ms": 3.0, "first_ms": 4.0, "invoke": dict(stats),
           "classify": dict(stats), "memory_mb": 1.0, "peak_rss_mb": 60.0, "accuracy": None,
           "delegation": {"partitions": 1, "undelegated": {"SOFTMAX": 1}},
           "throughput_ips": 1e9, "classify_overhead_pct": 0.0}
    row.update(row_changes)
    return {"machine": {"machine_id": "raspberry-pi-4", "cpu": "Cortex-A72", "cores": 4,
                        "arch": "aarch64", "os": "Linux", "python": "3.11.2"},
            "warnings": [], "options": {"runs": 50, "warmup": 5}, "threads": [1],
            "results": [row], "time": "2026-12-06 10:00:00"}


@pytest.mark.parametrize("text, fragment", [
    ('{"results": [', "not strict JSON"),
    (json.dumps(_report(load_ms=float("nan"))), "not strict JSON"),
    (json.dumps(_report(invoke={"p50": float("inf")})), "not strict JSON"),
    (json.dumps(_report(classify={"p50": -1.0, "p90": 1.0, "p99": 1.0, "mean": 1.0,
                                  "std": 0.0})), "classify latency"),
    (json.dumps(_report(invoke={"p50": 3.0, "p90": 2.0, "p99": 4.0, "mean": 3.0, "std": 0.1})),
     "percentiles out of order"),
    (json.dumps(_report(threads="all")), "thread count"),
    (json.dumps(_report(accuracy=7.0)), "accuracy outside 0..1"),
    (json.dumps({"results": None}), "has no results"),
])
def test_a_bench_report_that_lies_is_one_line(text, fragment):
    """NaN, infinite and negative latencies, p90 below p50 were tabled as nan, written as
    non-strict JSON and broke --chart with a ValueError."""
    with pytest.raises(TledgeError, match=fragment):
        remote.check_report(text, "pi4")


def test_a_bench_report_is_rebuilt_from_what_tledge_reads():
    report = _report()
    report["machine"]["machine_id"] = "pi\x1b[2J\nrow | injected"
    report["warnings"] = ["hot\x1b[31m\nline"]
    checked = remote.check_report(json.dumps(report), "pi4")
    assert checked["machine"]["machine_id"] == "pi-2j-row-injected"
    assert checked["warnings"] == ["hot?[31m line"]
    row = checked["results"][0]
    assert row["throughput_ips"] == pytest.approx(1000 / 2.2)  # computed here, not the device's
    json.dumps(checked, allow_nan=False)  # strict JSON out
    from tledge.measure import benchreport
    assert "\x1b" not in benchreport.to_markdown({**checked, "results": [
        {**row, "name": "m.tflite"}]})
