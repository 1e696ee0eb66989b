"""Typed input: the handler receives a validated model; invalid input fails the job before it runs.

python -m handler_sdk.serve examples/typed.py --test-input '{"input": {"prompt": "hi", "n": 2}}'
python -m handler_sdk.serve examples/typed.py --test-input '{"input": {"n": "many"}}'   # FAILED, names fields
"""

from pydantic import BaseModel, Field

from handler_sdk import handler


class Params(BaseModel):
    prompt: str
    n: int = Field(default=1, ge=1, le=8)


def load():
    # Runs once before the first job (e.g. load model weights); its result is job.state.
    return {"greeting": "hello"}


@handler(setup=load)
def greet(params: Params):
    return {"texts": [f"{params.prompt} #{i}" for i in range(params.n)]}
