"""The batched per-connection access log: same line shape as `secmesh.log.JsonFormatter`, one write per batch."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from secmesh.log import JsonFormatter
from secmesh.sidecar.connlog import LOGGER, ConnectionLog


def test_line_matches_the_json_formatter():
    fields = {"listener": "in", "peer_id": None, "bytes_up": 3, "result": "forwarded"}
    log = ConnectionLog(None, clock=lambda: 1767225600.25)
    ours = json.loads(log.line(fields))
    rec = logging.LogRecord(LOGGER, logging.INFO, "", 0, "connection", (), None)
    rec.created = 1767225600.25
    rec.fields = fields
    theirs = json.loads(JsonFormatter().format(rec))
    assert ours == theirs and list(ours) == list(theirs)
    assert ours["ts"] == "2026-01-01T00:00:00.250+00:00"


def test_lines_are_written_together_after_the_interval():
    out = io.StringIO()

    async def scenario() -> None:
        log = ConnectionLog(asyncio.get_running_loop(), out, interval=0.01)
        log.enabled = True   # as with `secmesh.log.setup("info")`
        log.emit({"n": 1})
        log.emit({"n": 2})
        assert out.getvalue() == ""
        await asyncio.sleep(0.05)
        assert [json.loads(ln)["n"] for ln in out.getvalue().splitlines()] == [1, 2]
        log.emit({"n": 3})
        log.flush()
        assert out.getvalue().count("\n") == 3

    asyncio.run(scenario())
