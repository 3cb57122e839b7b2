"""SIGHUP (a reload habit, or a closed terminal) must not kill the CA or the agent."""

from __future__ import annotations

import signal

from tests.support.proc import wait_until


def test_sighup_is_logged_and_both_keep_serving(ca, agent) -> None:
    ca_proc, _ = ca
    ca_proc.signal(signal.SIGHUP)
    agent.proc.signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP ignored" in ca_proc.output(), timeout=10, what="the CA's SIGHUP log line",
               proc=ca_proc.popen)
    wait_until(lambda: "SIGHUP ignored" in agent.proc.output(), timeout=10, what="the agent's SIGHUP log line",
               proc=agent.proc.popen)
    assert ca_proc.popen.poll() is None and agent.proc.popen.poll() is None
    assert agent.ready()
    assert agent.http("/identities")[1].count("spiffe://") == 1
