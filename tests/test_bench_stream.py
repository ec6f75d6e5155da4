"""`manage.py bench stream` runs end to end on tiny counts: a real streamer and listener against
the emulator's streams, a bare client, and a streamed and a polled market of dislocations. Only
the figures' shape is checked, never a timing."""

from __future__ import annotations

import math

import pytest

from devtools.bench import stream

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_stream_bench_reports_well_formed_figures_and_streaming_catches_what_polling_does() -> None:
    lines: list[str] = []

    figures = stream.run(lines.append, rates=[200], rate=200, seconds=1, dislocations=3)

    assert all(isinstance(value, int | float) and math.isfinite(value) for value in figures.values())
    assert all(value >= 0 for value in figures.values())
    assert figures["latency_books"] > 0
    assert figures["p50_ms"] <= figures["p99_ms"]
    for figure in (
        "streamer_200_books",
        "bare_200_frames",
        "streamer_200_per_s",
        "bare_200_per_s",
        "ratio_200",
    ):
        assert figures[figure] > 0, figure
    assert figures["dislocations"] == 3
    assert 0 <= figures["share_polled"] <= figures["share_streamed"] <= 1
    assert figures["caught_streamed"] >= figures["caught_polled"]
