"""The hub app the SIGTERM test runs under ``python -m uvicorn`` (in the main thread)."""

from __future__ import annotations

from streamflow.hub import StreamHub
from tests.hub.conftest import Control, hub_app

hub = StreamHub(on_last_reader_gone="finish")
app = hub_app(hub, Control())
