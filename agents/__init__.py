"""One module per flow. Importing this package registers every flow's agent with the app.

Flows whose handlers arrive in later versions still get an agent, so their topics are
consumed and a job sent there ends FAILED with a clear reason instead of waiting unseen.
"""

from __future__ import annotations

from agents import export, framework_import, notification, policy, reporting
from app.runner import FlowSpec, register_flow
from models import Flow

# (concurrency, timeout seconds) from the design's per-queue table.
_NOT_YET_HANDLED = {
    Flow.ASSESSMENT: (3, 300),
    Flow.EVIDENCE: (4, 120),
    Flow.AUDIT: (1, 600),
}
for _flow, (_concurrency, _timeout) in _NOT_YET_HANDLED.items():
    register_flow(FlowSpec(flow=_flow, concurrency=_concurrency, timeout_seconds=_timeout, handlers={}))

__all__ = ["export", "framework_import", "notification", "policy", "reporting"]
