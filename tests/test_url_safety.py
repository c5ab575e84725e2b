"""A model name is the client's text: whatever it holds, it stays one path segment of the
upstream URL that every mapping builds. It can neither climb out of the provider's path nor
add a query string or a fragment (the request carries the gateway's credentials)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.test_request_roundtrip import CREDENTIALS, REGISTRY, SETTINGS
from turnout.engine.canonical import normalize

BASE = "http://upstream/base"
# One model name per variant a provider picks by name (Claude on Vertex).
TARGETS = [(p, "m") for p in REGISTRY.providers] + [("vertex_ai", "claude-x")]


def _url(provider: str, model: str) -> str:
    mapping = REGISTRY.resolve(provider, model)
    assert mapping is not None
    # normalize refuses unprintable names; the mapping must be safe even without that check.
    request = normalize({"model": f"{provider}/m", "input": "hi"})
    return mapping.build_request(
        request, model=model, api_base=BASE, credentials=CREDENTIALS, settings=SETTINGS
    ).url


@pytest.mark.parametrize(("provider", "prefix"), TARGETS)
@given(evil=st.text(min_size=1, max_size=30))
@example(evil="../../../v1beta/files/x:delete?")
@example(evil="g?key=abc&x=#frag")
@example(evil="a/../../b")
@settings(max_examples=40, deadline=None)
def test_a_model_name_cannot_leave_its_path_segment(provider: str, prefix: str, evil: str) -> None:
    model = prefix + evil
    safe = urlsplit(_url(provider, prefix + "plain"))
    got = urlsplit(_url(provider, model))
    assert (got.scheme, got.netloc) == (safe.scheme, safe.netloc)
    assert got.query == safe.query
    assert got.fragment == ""
    segments = got.path.split("/")
    assert ".." not in segments and "." not in segments
    assert got.path.startswith("/base/")
    # The path has as many segments as with a plain name: the model is (at most) one of them.
    assert len(segments) == len(safe.path.split("/"))
