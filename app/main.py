"""The worker's composition root: importing it registers every agent, table and view."""

from __future__ import annotations

import agents  # noqa: F401  (registers the flow agents)
from app import (  # noqa: F401  (views, tables, agents)
    artifact_views,
    deadletter_views,
    framework_views,
    inbox,
    intake,
    ops,
    policy_views,
    status,
)
from app.faust_app import faust_app

__all__ = ["faust_app"]
