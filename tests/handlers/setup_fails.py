from handler_sdk import handler


def load():
    raise RuntimeError("model weights not found")


@handler(setup=load)
def never(job):
    return "unreachable"
