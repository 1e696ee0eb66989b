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


@given(st.binary(max_size=64) | st.text(alphabet="0123456789a\u0660 ", max_size=64).map(str.encode))
def test_the_long_digit_check_on_bytes_finds_exactly_the_runs_the_regex_finds(data: bytes) -> None:
    # The fast check decides whether a document is read again for exact integers: it must never miss a run of
    # 19 ASCII digits, nor see one where there is none.
    expected = codec._LONG_DIGITS_B.search(data) is not None
    assert codec._has_long_digits(data) is expected
    assert codec._has_long_digits(bytearray(data)) is expected
    assert codec._has_long_digits(memoryview(data)) is expected


def test_integers_beyond_64_bits_in_bytes_are_still_read_exactly() -> None:
    assert codec.loads(b'{"n":' + str(2**70).encode() + b"}") == {"n": 2**70}
    assert codec.loads(bytearray(b"[" + str(-(2**65)).encode() + b"]")) == [-(2**65)]
