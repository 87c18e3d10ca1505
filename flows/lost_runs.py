"""A training run whose worker died (a preempted spot GPU, a killed box) must end, or the flow waits for ever.

Prefect cannot tell a dead worker from a slow one: the run stays Running on the server. Its own answer (the docs'
"detect zombie flows") is used as is: every dispatched training run emits a heartbeat event every HEARTBEAT_S
seconds (flows/train_worker.py sets PREFECT_FLOWS_HEARTBEAT_FREQUENCY in its environment; 30 s is the least
Prefect allows), and an automation on the server marks a run Crashed once its heartbeats stop for `lost_after()`
seconds without it ending. The flow waiting on it then retries the phase on whichever worker polls next, from the
store's last checkpoint.

The automation only watches runs tagged TAG, which `dispatch` puts on every training run: other flow runs (the
pipeline's own, at Prefect's default heartbeat of 180 s) would look lost after 90 s. `ensure` creates it on the
server the first time a flow dispatches; CHATPIPE_LOST_AFTER_S changes the wait (90 s, three heartbeats, by
default) for the automation it creates.
"""
from __future__ import annotations

import os
from datetime import timedelta

NAME = "chat-pipeline: crash lost training runs"
TAG = "chatpipe-train"
HEARTBEAT_S = 30


def lost_after() -> int:
    return int(os.environ.get("CHATPIPE_LOST_AFTER_S", 3 * HEARTBEAT_S))


def ensure() -> None:
    """Create the automation on the server of PREFECT_API_URL unless it is there."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=NAME)
        return
    except ValueError:  # not found
        pass
    Automation(
        name=NAME,
        description="Marks a chat-pipeline training run Crashed when its worker stops sending heartbeats, so the "
                    "flow retries the phase elsewhere from the store's last checkpoint (flows/lost_runs.py).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.id": f"prefect.tag.{TAG}"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=lost_after()),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"its worker sent no heartbeat for {lost_after()} s: lost")],
    ).create()
