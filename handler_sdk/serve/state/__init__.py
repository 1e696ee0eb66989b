"""The endpoint's job state, apart from HTTP: no module here imports aiohttp.

Today it holds the Redis engine (groundwork for many serve replicas on one Redis); the in-memory broker moves
here when the state gets its interface.
"""

__all__: list[str] = []  # its modules are imported by name; importing the package pulls in no Redis client
