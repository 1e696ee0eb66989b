"""The chunker: stream items under 1 MiB, split strings that round-trip, bodies that never exceed the limit."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler_sdk import codec
from handler_sdk.chunker import (
    MAX_ITEM_OUTPUT,
    METRICS_RESERVE,
    Encoded,
    EncodedItem,
    batch_body,
    encode,
    encode_item,
    encode_parts,
    pack,
    single_body,
    split,
)
from handler_sdk.errors import OutputNotSerializable, OutputTooLarge
from handler_sdk.models import MAX_STREAM_BYTES

MiB = 1 << 20
# The widest single character in JSON is a control character escaped as \u00XX: 6 bytes, 8 with the quotes.
MIN_LIMIT = 8

# Characters whose JSON encoding is wider than one byte, mixed in often so that splits land between them.
_WIDE = st.sampled_from(['"', "\\", "\x00", "\x1f", "\n", "\t", "é", "€", "😀", "\u2028", "a", " "])
texts = st.text(alphabet=st.one_of(st.characters(codec="utf-8"), _WIDE), max_size=300)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(texts, inner, max_size=6)),
    max_leaves=30,
)
metrics_dicts = st.one_of(
    st.none(),
    st.dictionaries(
        st.text(st.characters(codec="utf-8"), max_size=10),
        st.one_of(st.integers(-1000, 1000), st.floats(0, 1), st.text(st.characters(codec="utf-8"), max_size=20)),
    ),
)


def _decoded(pieces: list[bytes]) -> list[Any]:
    return [orjson.loads(p) for p in pieces]


# --- split -----------------------------------------------------------------------------------------------------


@given(s=texts, limit=st.integers(MIN_LIMIT, 200))
def test_split_string_pieces_rejoin_in_order_to_the_original(s: str, limit: int) -> None:
    pieces = split(s, limit)
    decoded = _decoded(pieces)
    assert all(isinstance(p, str) for p in decoded)
    assert "".join(decoded) == s


@given(s=texts, limit=st.integers(MIN_LIMIT, 200))
def test_split_string_pieces_are_each_at_most_the_limit(s: str, limit: int) -> None:
    for piece in split(s, limit):
        assert len(piece) <= limit


@given(s=texts, limit=st.integers(MIN_LIMIT, 200))
def test_split_string_pieces_are_never_empty_unless_the_string_is(s: str, limit: int) -> None:
    pieces = _decoded(split(s, limit))
    if s:
        assert all(pieces), "an empty piece would be a stream item carrying nothing"
    else:
        assert pieces == [""]


@given(value=json_values, limit=st.integers(MIN_LIMIT, 400))
def test_split_value_that_fits_is_one_piece_with_its_exact_encoding(value: Any, limit: int) -> None:
    data = codec.dumps(value)
    if len(data) <= limit:
        assert split(value, limit) == [data]


@given(value=json_values, limit=st.integers(MIN_LIMIT, 400))
def test_split_non_string_over_the_limit_raises_output_too_large(value: Any, limit: int) -> None:
    if isinstance(value, str) or len(codec.dumps(value)) <= limit:
        return
    with pytest.raises(OutputTooLarge, match=r"over the \d+-byte limit"):
        split(value, limit)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    unit=st.text(alphabet=st.one_of(st.characters(codec="utf-8"), _WIDE), min_size=1, max_size=8),
    total=st.integers(1 * MiB, 4 * MiB),
    limit=st.sampled_from([MAX_ITEM_OUTPUT, 64 * 1024, 300 * 1024 + 7]),
)
def test_split_multi_mebibyte_strings_round_trip_under_the_limit(unit: str, total: int, limit: int) -> None:
    s = (unit * (total // len(unit) + 1))[:total]
    pieces = split(s, limit)
    assert all(len(p) <= limit for p in pieces)
    assert "".join(_decoded(pieces)) == s


@pytest.mark.parametrize(
    "s",
    [
        pytest.param("x" * (3 * MiB), id="ascii-3MiB"),
        pytest.param('"' * (2 * MiB), id="quotes-double-when-escaped"),
        pytest.param("\\" * (2 * MiB), id="backslashes-double-when-escaped"),
        pytest.param("\x00" * MiB, id="control-chars-grow-sixfold"),
        pytest.param("😀" * MiB, id="four-byte-utf8"),
        pytest.param("a" * MiB + "\x01" * MiB, id="narrow-then-wide"),
    ],
)
def test_split_at_the_real_limit_round_trips_and_fits(s: str) -> None:
    pieces = split(s)
    assert len(pieces) >= 2
    assert all(len(p) <= MAX_ITEM_OUTPUT for p in pieces)
    assert "".join(_decoded(pieces)) == s


def test_split_string_exactly_at_the_limit_stays_whole() -> None:
    s = "y" * (MAX_ITEM_OUTPUT - 2)  # + 2 quotes = exactly the limit
    assert split(s) == [codec.dumps(s)]
    assert len(split(s + "y")) == 2


def test_split_dict_over_the_real_limit_fails_and_says_only_strings_split() -> None:
    with pytest.raises(OutputTooLarge, match="only strings are split"):
        split({"text": "x" * MAX_ITEM_OUTPUT})


def test_split_unserializable_value_raises_output_not_serializable() -> None:
    with pytest.raises(OutputNotSerializable, match="not JSON-serializable"):
        split({"obj": object()})


def test_split_keeps_an_integer_beyond_64_bits_exact() -> None:
    assert split(2**70) == [b"1180591620717411303424"]


def test_max_item_output_leaves_room_for_metrics_and_the_envelope() -> None:
    assert MAX_ITEM_OUTPUT + METRICS_RESERVE < MAX_STREAM_BYTES


# --- encode_item -----------------------------------------------------------------------------------------------


def test_encode_item_without_metrics_has_no_metrics() -> None:
    assert encode_item(b"1", None) == EncodedItem(b"1")
    assert encode_item(b"1", {}) == EncodedItem(b"1")


def test_encode_item_drops_the_endpoints_reserved_metrics_keys() -> None:
    item = encode_item(b'"a"', {"stream_index": 99, "scenario": "mine", "attempt": 5, "tokens": 3})
    assert item.metrics is not None
    assert orjson.loads(item.metrics) == {"tokens": 3}


@pytest.mark.parametrize("key", ["stream_index", "scenario", "attempt"])
def test_encode_drops_each_reserved_metrics_key_on_its_own(key: str) -> None:
    # encode checks the reserved keys one by one (cheaper than a set test per token): each must be caught alone.
    item = encode("tok", {key: 7, "tokens": 3})
    assert not isinstance(item, list) and item.metrics is not None
    assert orjson.loads(item.metrics) == {"tokens": 3}


def test_encode_item_with_only_reserved_keys_keeps_an_empty_metrics_object() -> None:
    item = encode_item(b"1", {"stream_index": 1})
    assert item.metrics is not None and orjson.loads(item.metrics) == {}


def test_encode_item_rejects_metrics_over_the_reserve() -> None:
    with pytest.raises(OutputTooLarge, match="metrics"):
        encode_item(b"1", {"blob": "m" * METRICS_RESERVE})


def test_encode_item_accepts_metrics_right_at_the_reserve() -> None:
    overhead = len(codec.dumps({"blob": ""}))
    item = encode_item(b"1", {"blob": "m" * (METRICS_RESERVE - overhead)})
    assert item.metrics is not None and len(item.metrics) == METRICS_RESERVE


_with_reserved = st.one_of(
    metrics_dicts,
    st.dictionaries(st.sampled_from(["stream_index", "scenario", "attempt", "tok"]), st.integers(0, 9), min_size=1),
)


@given(value=st.one_of(json_values, texts), metrics=_with_reserved, limit=st.integers(MIN_LIMIT, 400))
def test_encode_parts_gives_the_bytes_encode_gives(value: Any, metrics: dict[str, Any] | None, limit: int) -> None:
    try:
        want = encode(value, metrics, limit)
    except OutputTooLarge:
        with pytest.raises(OutputTooLarge):
            encode_parts(value, metrics, limit)
        return
    got = encode_parts(value, metrics, limit)
    if isinstance(want, list):
        assert got == want  # a long string's pieces, as encode gives them
    else:
        assert got == (want.output, want.metrics)


# --- bodies ----------------------------------------------------------------------------------------------------


@given(value=json_values, metrics=metrics_dicts)
def test_single_body_is_json_with_output_and_metrics_when_given(value: Any, metrics: dict[str, Any] | None) -> None:
    item = encode_item(codec.dumps(value), metrics)
    body = orjson.loads(single_body(item))
    expected: dict[str, Any] = {"output": orjson.loads(codec.dumps(value))}
    if item.metrics is not None:
        expected["metrics"] = orjson.loads(item.metrics)
    assert body == expected


@given(values=st.lists(st.tuples(json_values, metrics_dicts), min_size=1, max_size=8))
def test_batch_body_is_json_with_one_output_per_item_and_aligned_metrics(
    values: list[tuple[Any, dict[str, Any] | None]],
) -> None:
    items = [encode_item(codec.dumps(v), m) for v, m in values]
    body = orjson.loads(batch_body(items))
    assert body["outputs"] == [orjson.loads(i.output) for i in items]
    if all(i.metrics is None for i in items):
        assert set(body) == {"outputs"}
    else:
        assert set(body) == {"outputs", "metrics"}
        assert body["metrics"] == [None if i.metrics is None else orjson.loads(i.metrics) for i in items]


def _items(draw: st.DrawFn, item_limit: int) -> list[EncodedItem]:
    """Stream items as the runner makes them: each yielded value split under ``item_limit``."""
    out: list[EncodedItem] = []
    for value, metrics in draw(st.lists(st.tuples(st.one_of(texts, json_values), metrics_dicts), max_size=25)):
        try:
            pieces = split(value, item_limit)
        except OutputTooLarge:
            continue
        out.extend(encode_item(p, metrics) for p in pieces)
    return out


@st.composite
def packing_cases(draw: st.DrawFn) -> tuple[list[EncodedItem], int]:
    item_limit = draw(st.integers(MIN_LIMIT, 300))
    items = _items(draw, item_limit)
    # The body limit must fit any one item in the batch envelope (as MAX_STREAM_BYTES fits MAX_ITEM_OUTPUT).
    biggest = max((i.size for i in items), default=0)
    limit = draw(st.integers(biggest + 66, biggest + 2000))
    return items, limit


@given(case=packing_cases())
def test_pack_bodies_never_exceed_the_limit(case: tuple[list[EncodedItem], int]) -> None:
    items, limit = case
    for group in pack(items, limit):
        assert len(batch_body(group)) <= limit


@given(case=packing_cases())
def test_pack_preserves_order_and_never_merges_or_drops_items(case: tuple[list[EncodedItem], int]) -> None:
    items, limit = case
    groups = list(pack(items, limit))
    assert all(groups), "no empty bodies"
    flat = [i for g in groups for i in g]
    assert len(flat) == len(items)
    assert all(a is b for a, b in zip(flat, items, strict=True))
    # Each item is still one entry in its body.
    decoded = [o for g in groups for o in orjson.loads(batch_body(g))["outputs"]]
    assert decoded == [orjson.loads(i.output) for i in items]


@given(case=packing_cases())
def test_pack_only_starts_a_new_body_when_the_next_item_would_not_fit(case: tuple[list[EncodedItem], int]) -> None:
    items, limit = case
    groups = list(pack(items, limit))
    for g, nxt in itertools.pairwise(groups):
        # pack counts conservatively, so this is a bound on its own accounting: the next item must not have fit.
        assert 64 + sum(i.size for i in [*g, nxt[0]]) > limit


def test_pack_sends_a_lone_oversized_item_by_itself_rather_than_merging_it() -> None:
    small, big = EncodedItem(b"1"), EncodedItem(b'"' + b"z" * 500 + b'"')
    assert list(pack([small, big, small], limit=200)) == [[small], [big], [small]]


def test_pack_of_nothing_is_no_bodies() -> None:
    assert list(pack([])) == []


def test_pack_at_the_real_limit_fits_full_size_items_with_full_metrics() -> None:
    s = "q" * (5 * MiB)
    overhead = len(codec.dumps({"blob": ""}))
    metrics = {"blob": "m" * (METRICS_RESERVE - overhead)}
    items = [encode_item(p, metrics) for p in split(s)]
    assert all(len(i.output) <= MAX_ITEM_OUTPUT for i in items)
    groups = list(pack(items))
    assert [i for g in groups for i in g] == items
    for g in groups:
        assert len(batch_body(g)) <= MAX_STREAM_BYTES
    for item in items:
        assert len(single_body(item)) <= MAX_STREAM_BYTES
    assert "".join(o for g in groups for o in orjson.loads(batch_body(g))["outputs"]) == s


def test_pack_groups_many_small_items_into_few_bodies() -> None:
    items = [encode_item(codec.dumps(i), {"n": i}) for i in range(1000)]
    groups = list(pack(items))
    assert len(groups) == 1
    assert orjson.loads(batch_body(groups[0]))["outputs"] == list(range(1000))


# --- encode: the runner's per-yield call -------------------------------------------------------------------------


def _as_list(encoded: Encoded) -> list[EncodedItem]:
    return encoded if isinstance(encoded, list) else [encoded]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, metrics=metrics_dicts, limit=st.integers(MIN_LIMIT, 200))
def test_encode_is_split_then_encode_item_in_one_call(value: Any, metrics: dict[str, Any] | None, limit: int) -> None:
    try:
        expected = [encode_item(p, metrics) for p in split(value, limit)]
    except OutputTooLarge:
        with pytest.raises(OutputTooLarge):
            encode(value, metrics, limit)
        return
    encoded = encode(value, metrics, limit)
    assert _as_list(encoded) == expected
    # One item comes bare (no container per yield); only a split string comes as a list, of two or more pieces.
    assert isinstance(encoded, EncodedItem) == (len(expected) == 1)
    assert all(i.size == e.size for i, e in zip(_as_list(encoded), expected, strict=True))


@settings(max_examples=300)
@given(s=texts, limit=st.integers(MIN_LIMIT, 64))
def test_split_string_pieces_are_slices_of_its_one_encoding(s: str, limit: int) -> None:
    # Cut, never re-encoded: the pieces' insides concatenate to the inside of the whole string's encoding.
    pieces = split(s, limit)
    assert b"".join(p[1:-1] for p in pieces) == codec.dumps(s)[1:-1]
    assert all(p[:1] == b'"' and p[-1:] == b'"' for p in pieces)


def test_split_never_cuts_an_escape_or_a_utf8_sequence_apart() -> None:
    # Each 6-byte \u001f escape and 4-byte emoji must survive whole whichever byte the limit falls on.
    s = ("\x1f😀\\" * 50) + "a"
    for limit in range(MIN_LIMIT, 40):
        assert "".join(orjson.loads(p) for p in split(s, limit)) == s


# --- the whole path: yields -> encode -> pack -> batch_body ------------------------------------------------------


# Values as they come out of a JSON round trip (orjson canonical), to compare what a body carries with what was yielded.
def _canonical(value: Any) -> Any:
    return orjson.loads(codec.dumps(value))


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[Any, dict[str, Any] | None]], int, int]:
    """Yields (values with optional metrics) and small limits, so long strings split and bodies fill often."""
    item_limit = draw(st.integers(MIN_LIMIT, 120))
    values = draw(st.lists(st.tuples(st.one_of(texts, json_values), metrics_dicts), max_size=30))
    body_limit = draw(st.integers(item_limit + METRICS_RESERVE // 64 + 64, item_limit + 600))
    return values, item_limit, body_limit


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(case=streams())
def test_a_stream_round_trips_through_encode_pack_and_batch_bodies(
    case: tuple[list[tuple[Any, dict[str, Any] | None]], int, int],
) -> None:
    values, item_limit, _ = case
    kept: list[tuple[Any, dict[str, Any] | None, int]] = []
    items: list[EncodedItem] = []
    for value, metrics in values:
        try:
            encoded = _as_list(encode(value, metrics, item_limit))
        except OutputTooLarge:
            assert not isinstance(value, str), "strings are split, never refused"
            continue
        assert all(len(i.output) <= item_limit for i in encoded)
        kept.append((value, metrics, len(encoded)))
        items.extend(encoded)
    # The body limit must hold the biggest item in the envelope, as MAX_STREAM_BYTES holds MAX_ITEM_OUTPUT.
    body_limit = max([case[2], *(i.size + 64 for i in items)])
    bodies = [batch_body(g) for g in pack(items, body_limit)]
    assert all(len(b) <= body_limit for b in bodies)
    outputs: list[Any] = []
    metrics_out: list[Any] = []
    for b in bodies:
        parsed = orjson.loads(b)
        outputs += parsed["outputs"]
        metrics_out += parsed.get("metrics", [None] * len(parsed["outputs"]))
    assert len(outputs) == len(items)
    pos = 0
    for value, metrics, n in kept:
        got = outputs[pos : pos + n]
        if n > 1:
            assert isinstance(value, str) and "".join(got) == value
        else:
            assert got == [_canonical(value)]
        expected = None
        if metrics:
            reserved = ("stream_index", "scenario", "attempt")
            expected = _canonical({k: v for k, v in metrics.items() if k not in reserved})
        assert metrics_out[pos : pos + n] == [expected] * n
        pos += n


@given(values=st.lists(st.tuples(json_values, metrics_dicts), min_size=1, max_size=12))
def test_an_items_size_is_its_exact_share_of_a_batch_body(values: list[tuple[Any, dict[str, Any] | None]]) -> None:
    items = [encode_item(codec.dumps(v), m) for v, m in values]
    body = batch_body(items)
    # {"outputs":[ + ],"metrics":[ + ]} is 27 bytes; the last item's two commas are not written.
    if any(i.metrics is not None for i in items):
        assert len(body) == 25 + sum(i.size for i in items)
    else:
        assert len(body) < 25 + sum(i.size for i in items)
    for v, m in values:
        fast = encode(v, m)
        assert isinstance(fast, EncodedItem) and fast.size == encode_item(codec.dumps(v), m).size


def _greedy(sizes: list[int], limit: int) -> list[int]:
    """The reference packing: a body takes the next item while it fits, and never starts empty."""
    counts: list[int] = []
    used = 64
    for size in sizes:
        if counts and used + size <= limit:
            counts[-1] += 1
            used += size
        else:
            counts.append(1)
            used = 64 + size
    return counts


@given(outputs=st.lists(st.binary(min_size=1, max_size=90), max_size=60), limit=st.integers(70, 400))
def test_pack_groups_exactly_as_the_greedy_reference(outputs: list[bytes], limit: int) -> None:
    items = [EncodedItem(o) for o in outputs]
    assert [len(g) for g in pack(items, limit)] == _greedy([i.size for i in items], limit)
    assert [len(g) for g in pack(iter(items), limit)] == _greedy([i.size for i in items], limit)


def test_encode_serializes_at_the_yield_so_later_mutation_is_not_sent() -> None:
    token = {"text": "a", "ids": [1]}
    item = encode(token)
    token["text"] = "changed"
    token["ids"].append(2)  # type: ignore[attr-defined]
    assert isinstance(item, EncodedItem)
    assert orjson.loads(item.output) == {"text": "a", "ids": [1]}


def test_encode_fails_at_the_yield_for_a_value_orjson_cannot_encode() -> None:
    with pytest.raises(OutputNotSerializable):
        encode({"obj": object()})
    with pytest.raises(OutputNotSerializable):
        encode({"obj": object()}, {"tokens": 1})


def test_encode_small_output_is_an_exact_size_copy_equal_to_the_encoding() -> None:
    # orjson's own buffer has kilobytes of slack; a queued item must not pin it.
    value = {"token": "x", "i": 1}
    item = encode(value)
    assert isinstance(item, EncodedItem)
    assert item.output == codec.dumps(value) and type(item.output) is bytes
    assert item.size == len(item.output) + 6


@settings(max_examples=300)
@given(
    s=st.text(alphabet=st.sampled_from(["\\", "\\", "\\", "a", "\x01", "é", '"', "😀"]), max_size=400),
    limit=st.integers(MIN_LIMIT, 90),
)
def test_split_backslash_heavy_strings_round_trip_whatever_the_run_lengths(s: str, limit: int) -> None:
    pieces = split(s, limit)
    assert all(len(p) <= limit for p in pieces)
    assert "".join(_decoded(pieces)) == s


@pytest.mark.parametrize("run", [1, 2, 63, 64, 65, 200, 201])
def test_split_runs_of_backslashes_longer_than_the_short_look_are_counted_whole(run: int) -> None:
    # Each backslash is escaped as two, so the escape pairs' alignment is only known from the run's start.
    s = "x" + "\\" * run + "\x01" + "\\" * run + "y"
    for limit in range(MIN_LIMIT, 48):
        pieces = split(s, limit)
        assert all(len(p) <= limit for p in pieces)
        assert "".join(_decoded(pieces)) == s
