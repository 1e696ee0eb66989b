"""The endpoint over HTTP: every module here is aiohttp routes and replies; the job state is in serve/state/."""

__all__: list[str] = []  # its modules are imported by name
