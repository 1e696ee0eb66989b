"""codec.dumps tries plain orjson first (cheaper) and the options only when plain refuses: the bytes must be what
the options alone would give, for every value."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from handler_sdk import codec
from handler_sdk.errors import NestedTooDeep, OutputNotSerializable

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


def _deep(depth: int, dicts: bool) -> bytes:
    """JSON text nesting ``depth`` containers (every second one an object when ``dicts``): orjson cannot write it."""
    opens = [b'{"k":' if dicts and i % 2 else b"[" for i in range(depth)]
    return b"".join(opens) + b"1" + b"".join(b"}" if o != b"[" else b"]" for o in reversed(opens))


@given(st.integers(1, 300), st.booleans(), st.integers(0, 300))
@example(249, False, 300)
@example(250, False, 300)
@example(249, True, 0)
@example(250, True, 300)
def test_a_body_is_refused_exactly_when_the_walk_finds_it_too_deep(depth: int, dicts: bool, pad: int) -> None:
    # Padding brackets make bodies that pass the bracket count without nesting deep: the orjson write check
    # (the fast path) must then agree with the walk.
    body = b'{"pad":[' + b",".join([b"[]"] * pad) + b'],"v":' + _deep(depth, dicts) + b"}"
    deep = codec.depth_over(orjson.loads(body), codec.MAX_DEPTH) is not None
    try:
        codec.loads_request(body)
        refused = False
    except NestedTooDeep:
        refused = True
    assert refused == deep
    assert deep == (depth + 1 > codec.MAX_DEPTH)  # the body's object is one level more


def test_the_fast_depth_check_is_on_with_this_orjson() -> None:
    assert codec._EXACT_LIMIT


@given(st.binary(max_size=64) | st.text("0123456789x\u0660", max_size=64).map(str.encode))
def test_long_digit_runs_in_bytes_are_found_as_the_regex_finds_them(data: bytes) -> None:
    expected = codec._LONG_DIGITS_B.search(data) is not None
    assert codec._has_long_digits(data) == expected
    assert codec._has_long_digits(bytearray(data)) == expected
    assert codec._has_long_digits(memoryview(data)) == expected


def test_an_integer_beyond_64_bits_in_a_big_body_stays_exact() -> None:
    body = b'{"results":[' + b",".join(b'{"n":%d}' % i for i in range(300)) + b',{"n":%d}]}' % 2**70
    assert codec.loads_request(body)["results"][-1]["n"] == 2**70
