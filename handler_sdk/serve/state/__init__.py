"""The endpoint's job state, apart from HTTP: no module here imports aiohttp.

Today it holds the Redis engine (groundwork for many serve replicas on one Redis); the in-memory broker moves
here when the state gets its interface.
"""
