import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.bayeux.channels import Channel, SubscriptionIndex, application_root
from adapter.bayeux.errors import RemoteProtocolError

segment = st.from_regex(r"[A-Za-z0-9\-_!~()$@.]{1,8}", fullmatch=True)


@given(st.lists(segment, min_size=1, max_size=6), st.sampled_from(["", "*", "**"]))
def test_parse_and_str_round_trip(segments, wildcard):
    text = "/" + "/".join(segments + ([wildcard] if wildcard else []))
    assert str(Channel.parse(text)) == text


@given(st.lists(segment, min_size=1, max_size=6), st.lists(segment, min_size=1, max_size=6))
def test_a_channel_is_equal_and_hashes_as_its_segments(one, other):
    # The name and hash are worked out once, when the channel is made; a
    # channel made from segments and one parsed from its name are the same key.
    parsed = Channel.parse("/" + "/".join(one))
    built = Channel(tuple(one))
    assert parsed == built and hash(parsed) == hash(built) and {parsed: 1}[built] == 1
    assert built.name == str(built) == "/" + "/".join(one)
    assert (parsed == Channel(tuple(other))) == (one == other)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bayeux/a",
        "/",
        "/a//b",
        "/a/*/b",
        "/a/**/b",
        "/a/b*",
        "/a b",
        "/a/" + "x/" * 40 + "y",
        7,
    ],
)
def test_invalid_names_are_remote_protocol_errors(text):
    with pytest.raises(RemoteProtocolError):
        Channel.parse(text)


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("/a/b", "/a/b", True),
        ("/a/b", "/a/b/c", False),
        ("/a/*", "/a/b", True),
        ("/a/*", "/a/b/c", False),
        ("/a/*", "/a", False),
        ("/a/**", "/a/b", True),
        ("/a/**", "/a/b/c", True),
        ("/a/**", "/a", False),
        ("/a/**", "/ab/c", False),
        ("/**", "/x/y/z", True),
    ],
)
def test_wildcards_match_per_bayeux_section_2_2_1(pattern, channel, expected):
    assert Channel.parse(pattern).matches(Channel.parse(channel)) is expected


@given(st.lists(segment, min_size=1, max_size=5))
def test_patterns_are_exactly_the_matching_ones(segments):
    channel = Channel(tuple(segments))
    patterns = set(channel.patterns())
    assert all(p.matches(channel) for p in patterns)
    # Every ancestor's /** and the parent's /* are in; nothing else matches
    # among same-shaped candidates.
    assert Channel(tuple(segments[:-1]) + ("*",)) in patterns
    assert Channel(("**",)) in patterns
    assert len(patterns) == len(segments) + 2


@pytest.mark.parametrize(
    ("text", "within"),
    [
        ("/bayeux/alice", True),
        ("/bayeux/alice/**", True),
        ("/bayeux/alice/x/*", True),
        ("/bayeux/*", False),
        ("/bayeux/**", False),
        ("/bayeux/bob/**", False),
        ("/bayeux", False),
        ("/meta/**", False),
        ("/service/alice", False),
    ],
)
def test_is_within_an_application_root(text, within):
    assert Channel.parse(text).is_within(application_root("alice")) is within


def test_index_finds_subscribers_through_wildcards_and_forgets_them():
    index = SubscriptionIndex()
    deep, single, exact = (Channel.parse(t) for t in ("/a/**", "/a/*", "/a/b/c"))
    index.add(deep, "s1")
    index.add(single, "s2")
    index.add(exact, "s3")

    assert index.subscribers(Channel.parse("/a/b/c")) == {"s1", "s3"}
    assert index.subscribers(Channel.parse("/a/b")) == {"s1", "s2"}
    assert index.subscribers(Channel.parse("/z")) == set()

    index.discard_all([deep, exact], "s1")
    index.discard(exact, "s3")
    assert index.subscribers(Channel.parse("/a/b/c")) == set()
    assert len(index) == 1


def test_index_answers_from_memory_until_a_subscription_changes():
    index = SubscriptionIndex()
    channel = Channel.parse("/a/b")
    index.add(Channel.parse("/a/b"), "s1")
    assert index.subscribers(channel) == {"s1"}
    assert index.subscribers(channel) == {"s1"}  # remembered
    index.add(Channel.parse("/a/*"), "s2")
    assert index.subscribers(channel) == {"s1", "s2"}
    index.discard(Channel.parse("/a/b"), "s1")
    assert index.subscribers(channel) == {"s2"}
    index.discard_all([Channel.parse("/a/*")], "s2")
    assert index.subscribers(channel) == set()


def test_index_stays_right_past_the_channels_it_remembers():
    index = SubscriptionIndex()
    index.add(Channel.parse("/a/**"), "s1")
    channels = [Channel.parse(f"/a/c{n}") for n in range(10_050)]
    assert all(index.subscribers(c) == {"s1"} for c in channels)
    index.add(Channel.parse("/a/c3"), "s2")
    assert index.subscribers(channels[3]) == {"s1", "s2"}
    assert index.subscribers(channels[10_049]) == {"s1"}
