"""The Python client against a real daemon: what it was told it will never get, counted in events and handed to the
app (`on_resume_gap`, `on_gap`, `Client.missed`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from backends.base import Message
from sidecar.client import Client, Gap, ResumeGap
from sidecar.codec import SyncarCodec
from tests.unit.fakes import outgoing
from tests.utils import run_daemon


async def test_a_resume_gap_tells_the_app_how_many_events_it_missed(
    sock: Path, caplog: pytest.LogCaptureFixture
) -> None:
    resume_gaps: list[ResumeGap] = []
    bus_gaps: list[Gap] = []
    there = SyncarCodec("there")

    async def relay(first: int, last: int) -> None:
        """Events `first` to `last` of the origin `there`, as one broker message (numbered here in that order)."""
        events = [outgoing(n, event_id=str(n)) for n in range(first, last + 1)]
        for body in there.pack(events, first):
            await daemon.relay.on_message(Message(body))

    client = Client(sock, backoff=(0.01, 0.05), on_gap=bus_gaps.append, on_resume_gap=resume_gaps.append)
    async with run_daemon(sock, replay_events=5) as daemon, client:
        await relay(1, 1)
        assert (await client.next_event(timeout=5)).data == 1
        victim = next(c for c in daemon.connections if c.client_id == client.client_id)
        victim.close()
        # Nothing between the close and these waits on the loop: the client cannot be back before the 20 events
        # are numbered. It resumes after seq 1; the buffer holds the last 5 (17 to 21): 2 to 16 are gone.
        await relay(2, 21)
        assert [(await client.next_event(timeout=5)).data for _ in range(5)] == [17, 18, 19, 20, 21]
        [gap] = resume_gaps
        assert (gap.seq, gap.missed, gap.first, gap.last) == (21, 15, 2, 16), gap
        assert "further behind than the replay buffer holds" in gap.message
        assert "resume_gap: 15 events (the daemon's seqs 2 to 16) will not come" in caplog.text
        await relay(30, 30)  # 22 to 29 of `there` never came: a gap on the bus, 8 more
        assert (await client.next_event(timeout=5)).data == 30
        assert [(g.missed, g.first, g.last) for g in bus_gaps] == [(8, 22, 29)]
        assert (client.gaps, client.missed) == (1, 15 + 8)


async def test_a_resume_gap_the_daemon_cannot_count_is_told_as_such(
    sock: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon that restarted in broadcast mode cannot know what went by while none ran: `missed` is None."""
    caplog.set_level(logging.WARNING)
    resume_gaps: list[ResumeGap] = []
    async with run_daemon(sock):
        client = Client(sock, backoff=(0.01, 0.05), on_resume_gap=resume_gaps.append)
        await client.connect()
    try:
        async with run_daemon(sock):
            await client.publish("p", "e", 1, ack=True)  # sent once it is back, after its welcome and the error
            [gap] = resume_gaps
            assert (gap.seq, gap.missed, gap.first, gap.last) == (0, None, None, None), gap
            assert "the daemon restarted in broadcast mode" in gap.message
            assert "events may have been missed, how many is not known" in caplog.text
            assert (client.gaps, client.missed) == (1, 0)
    finally:
        await client.close()
