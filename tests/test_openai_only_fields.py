"""Fields only OpenAI's own Responses API can honour (stored prompt templates, server-side
context management, moderated responses) are passed on by the mappings that speak that API and
refused, naming the field, by every other one: never silently dropped."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.test_request_roundtrip import CREDENTIALS, DIALECTS, REGISTRY, SETTINGS
from turnout.engine.canonical import normalize
from turnout.engine.errors import RequestError

TARGETS = [(p, "m") for p in REGISTRY.providers] + [("vertex_ai", "claude-x")]
FIELDS: dict[str, Any] = {
    "prompt": {"id": "pmpt_123", "version": "2", "variables": {"city": "Paris"}},
    "context_management": [{"type": "compaction", "compact_threshold": 200000}],
    "moderation": {"model": "omni-moderation-latest"},
}


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize(("provider", "model"), TARGETS)
def test_passed_on_or_refused_never_dropped(provider: str, model: str, field: str) -> None:
    mapping = REGISTRY.resolve(provider, model)
    assert mapping is not None
    request = normalize({"model": f"{provider}/{model}", "input": "hi", field: FIELDS[field]})
    try:
        call = mapping.build_request(
            request, model=model, api_base="http://u", credentials=CREDENTIALS, settings=SETTINGS
        )
    except RequestError as exc:
        assert exc.status == 400 and exc.param == field
        assert DIALECTS[provider] != "responses" or model.startswith("claude")
        return
    assert DIALECTS[provider] == "responses"
    assert orjson.loads(call.body)[field] == FIELDS[field]


@pytest.mark.parametrize(
    ("field", "value"), [("prompt", "pmpt_1"), ("context_management", 5), ("moderation", "auto")]
)
def test_their_types_are_checked(field: str, value: Any) -> None:
    with pytest.raises(RequestError) as bad:
        normalize({"model": "openai/m", "input": "hi", field: value})
    assert bad.value.param == field and bad.value.code == "invalid_type"


def test_a_stored_prompt_may_stand_in_for_the_input() -> None:
    request = normalize({"model": "openai/gpt-4o", "prompt": FIELDS["prompt"]})
    assert request.view["entries"] == []
    with pytest.raises(RequestError) as missing:
        normalize({"model": "openai/gpt-4o"})
    assert missing.value.param == "input"
