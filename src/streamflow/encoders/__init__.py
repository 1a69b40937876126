"""Encoders: one stream of :mod:`streamflow.events` written in a client's wire format."""

from streamflow.encoders.base import Encoder
from streamflow.encoders.json_events import ERROR_EVENT_NAME, JSONEncoder, NamedEventEncoder

__all__ = ["ERROR_EVENT_NAME", "Encoder", "JSONEncoder", "NamedEventEncoder"]
