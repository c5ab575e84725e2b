"""engine/citations.py: offsets in the units OpenAI counts, and the search action."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from turnout.engine.citations import Span, resolve_spans, search_action, utf8_to_char


def test_utf8_offsets_become_character_offsets() -> None:
    text = "aé✓🦜b"  # 1, 2, 3 and 4 bytes
    assert [utf8_to_char(text, n) for n in (0, 1, 3, 6, 10, 11)] == [0, 1, 2, 3, 4, 5]


def test_an_offset_inside_a_character_is_that_characters_start_and_out_of_range_clamps() -> None:
    text = "é✓"
    assert utf8_to_char(text, 1) == 0  # inside é
    assert utf8_to_char(text, 4) == 1  # inside ✓
    assert utf8_to_char(text, -3) == 0
    assert utf8_to_char(text, 99) == 2


def test_a_lone_surrogate_counts_as_one_character() -> None:
    text = "a\ud800b"  # JSON may carry one; it must not crash the conversion
    assert utf8_to_char(text, 4) == 2


@given(st.text(max_size=40), st.data())
def test_every_character_boundary_maps_back(text: str, data: st.DataObject) -> None:
    data_bytes = text.encode("utf-8", "surrogatepass")
    n = data.draw(st.integers(0, len(text)))
    offset = len(text[:n].encode("utf-8", "surrogatepass"))
    assert utf8_to_char(text, offset, data_bytes) == n


def test_spans_resolve_in_order_without_empties_or_repeats() -> None:
    text = "Ünï ✓ two"
    spans = [
        Span("u", "t", 0, len("Ünï".encode()), True),
        Span("u", "t", 0, len("Ünï".encode()), True),  # resent
        Span("v", "t", 4, 5, False),
        Span("w", "t", 7, 7, False),  # empty
        Span("x", "t", 6, 99, False),  # clamped
    ]
    got = [(n["url"], text[n["start_index"] : n["end_index"]]) for n in resolve_spans(text, spans)]
    assert got == [("u", "Ünï"), ("v", "✓"), ("x", "two")]


def test_the_search_action_reads_the_query_from_the_arguments_when_not_given() -> None:
    assert search_action(None, None, '{"query": "q"}', None) == {
        "type": "search", "query": "q", "queries": ["q"],
    }  # fmt: skip
    assert search_action("a", ["a", "b"], "", ["https://x/", "https://x/"]) == {
        "type": "search", "query": "a", "queries": ["a", "b"],
        "sources": [{"type": "url", "url": "https://x/"}],
    }  # fmt: skip
    assert search_action(None, None, "{not json", []) == {"type": "search", "sources": []}
