"""The local endpoint: ``python -m handler_sdk.serve``."""

from .broker import Broker, BrokerConfig
from .server import ServeConfig, Server

__all__ = ["Broker", "BrokerConfig", "ServeConfig", "Server"]
