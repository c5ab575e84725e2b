"""engine/rules.py: what a rule sees inside nested `each`."""

from __future__ import annotations

from turnout.engine.rules import compile_rules, run_rules


def test_a_nested_each_reads_its_enclosing_element_as_up() -> None:
    """Gemini's groundingSupports: each support cites several chunks over one segment."""
    rules = compile_rules(
        [
            {
                "each": "$.supports[*]",
                "do": [
                    {
                        "each": "$.chunks[*]",
                        "do": [
                            {
                                "op": "cite",
                                "url": "{{ root.sources[d] }}",
                                "start": "{{ up.segment.start }}",
                                "end": "{{ up.segment.end }}",
                            }
                        ],
                    }
                ],
            },
            {"op": "finish", "reason": "{{ 'up is restored' if up is none else up }}"},
        ],
        (),
    )
    payload = {
        "sources": ["https://a/", "https://b/"],
        "supports": [
            {"segment": {"start": 0, "end": 4}, "chunks": [1]},
            {"segment": {"start": 5, "end": 9}, "chunks": [0, 1]},
        ],
    }
    ops = run_rules(rules, payload, {"root": payload})
    assert [(o.get("url"), o.get("start"), o.get("end")) for o in ops[:-1]] == [
        ("https://b/", 0, 4), ("https://a/", 5, 9), ("https://b/", 5, 9),
    ]  # fmt: skip
    assert ops[-1] == {"op": "finish", "reason": "up is restored"}
