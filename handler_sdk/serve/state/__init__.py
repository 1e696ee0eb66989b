"""The endpoint's job state, apart from HTTP: no module here imports aiohttp.

``api.py`` is the interface (JobState) and its two engines are ``local.py`` (the broker in this process with a
SQLite journal: ``broker.py`` coordinating ``jobs.py``, ``queue.py``, ``leases.py``, ``deadlines.py``,
``journal.py`` and ``views.py``) and ``redis_state.py`` (all state in Redis, for many serve replicas).
"""

__all__: list[str] = []  # its modules are imported by name; importing the package pulls in no Redis client
