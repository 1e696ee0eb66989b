"""codec.dumps tries plain orjson first (cheaper) and the options only when plain refuses: the bytes must be what
the options alone would give, for every value."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from handler_sdk import codec
from handler_sdk.errors import OutputNotSerializable

OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY

keys = st.one_of(st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.none(), st.floats(0, 1))
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


@given(values)
def test_dumps_gives_the_same_bytes_as_orjson_with_our_options(value: Any) -> None:
    assert codec.dumps(value) == orjson.dumps(value, option=OPTS)


def test_numpy_values_and_non_string_keys_still_encode() -> None:
    assert codec.dumps({1: np.arange(3), "x": np.float32(0.5)}) == b'{"1":[0,1,2],"x":0.5}'


def test_large_outputs_come_back_whole() -> None:
    s = "x" * (1 << 20)
    assert codec.dumps(s) == b'"' + s.encode() + b'"'


@pytest.mark.parametrize("bad", [object(), {"a": {1, 2}}, [b"bytes"]])
def test_unencodable_values_raise_output_not_serializable(bad: Any) -> None:
    with pytest.raises(OutputNotSerializable):
        codec.dumps(bad)


@given(st.lists(st.integers(-(10**25), 10**25) | st.text(alphabet="0123456789x", max_size=30), max_size=8))
def test_integers_beyond_64_bits_come_back_exact_from_bytes_bytearray_memoryview_and_str(values: list[Any]) -> None:
    import json

    text = json.dumps(values)
    for data in (text.encode(), bytearray(text.encode()), memoryview(text.encode()), text):
        assert codec.loads(data) == values


@given(st.integers(0, 40), st.integers(0, 40))
def test_a_nesting_depth_is_refused_exactly_above_the_limit(depth: int, limit: int) -> None:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    assert (codec.depth_over(value, limit) is None) == (depth <= limit)
