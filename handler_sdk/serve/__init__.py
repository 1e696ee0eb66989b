"""The local endpoint: ``python -m handler_sdk.serve``."""

from .server import ServeConfig, Server
from .state.broker import Broker, BrokerConfig

__all__ = ["Broker", "BrokerConfig", "ServeConfig", "Server"]
