"""The endpoint over HTTP: every module here is aiohttp routes and replies; the job state is in serve/state/."""
