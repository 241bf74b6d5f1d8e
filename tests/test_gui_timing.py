"""The GUI-thread handler timer: each call recorded under its handler's name, a nested handler's
time apart from its caller's, and the summary the benchmark reports."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("napari")

from napari_niiv._napari.gui_timing import HandlerTimes, gui_handler


def test_calls_are_recorded_with_nested_handlers_apart(monkeypatch):
    from napari_niiv._napari import gui_timing

    times = HandlerTimes()
    monkeypatch.setattr(gui_timing, "HANDLER_TIMES", times)

    @gui_handler
    def inner() -> None:
        time.sleep(0.05)

    @gui_handler
    def outer() -> str:
        time.sleep(0.01)
        inner()
        return "done"

    assert outer() == "done"
    calls = dict(times.calls())
    assert set(calls) == {
        "test_calls_are_recorded_with_nested_handlers_apart.<locals>.inner",
        "test_calls_are_recorded_with_nested_handlers_apart.<locals>.outer",
    }
    by_name = {k.rsplit(".", 1)[-1]: v for k, v in calls.items()}
    assert by_name["inner"] >= 0.05 and 0.01 <= by_name["outer"] < 0.045  # the caller's own time only
    summary = times.summary()
    assert summary["calls"] == 2 and summary["slowest"].endswith("inner")
    assert summary["max"] == pytest.approx(by_name["inner"] * 1e3, abs=1e-3)


def test_a_failing_handler_is_recorded_and_raises(monkeypatch):
    from napari_niiv._napari import gui_timing

    times = HandlerTimes()
    monkeypatch.setattr(gui_timing, "HANDLER_TIMES", times)

    @gui_handler
    def broken() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        broken()
    assert len(times.calls()) == 1 and HandlerTimes().summary()["median"] is None


def test_napari_work_is_in_the_max_and_reported_apart(monkeypatch):
    from napari_niiv._napari import gui_timing

    times = HandlerTimes()
    monkeypatch.setattr(gui_timing, "HANDLER_TIMES", times)

    @gui_timing.napari_work
    def hand_to_napari() -> None:
        time.sleep(0.04)

    @gui_handler
    def ours() -> None:
        time.sleep(0.01)
        hand_to_napari()

    ours()
    summary = times.summary()
    assert summary["slowest"].endswith("hand_to_napari") and summary["max"] >= 40
    assert summary["slowest_plugin"].endswith("ours") and 10 <= summary["max_plugin"] < 35
    from napari_niiv._napari.activity import activity_bar
    from napari_niiv._napari.layer_view import insert_layer

    # the plugin's hand-overs to napari: a layer, and a bar in the activity dock (a save, a fine-tuning run)
    assert {insert_layer.__qualname__, activity_bar.__qualname__} <= gui_timing.NAPARI_WORK
