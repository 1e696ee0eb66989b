"""Writes to standard output everywhere it can: at import, in setup, in the job, from C (os.write), at exit."""

import atexit
import os

from handler_sdk import handler

print("import-time print")
atexit.register(lambda: print("exit-time print", flush=True))


def _setup():
    print("setup print")
    return {}


@handler(setup=_setup)
def noisy(job):
    print("job print")
    os.write(1, b"raw fd 1 write\n")
    return {"quiet": True}
