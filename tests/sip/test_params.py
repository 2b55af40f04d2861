import pytest

from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.params import (
    find_param,
    format_params,
    is_token,
    parse_delta_seconds,
    parse_params,
    quote,
    quoted_end,
    remove_params,
    replace_params,
    split_outside,
    unquote,
)


def test_is_token() -> None:
    assert is_token("z9hG4bK-a.b!%*_+`'~")
    assert not is_token("")
    assert not is_token("a b")
    assert not is_token("a;b")
    assert not is_token("é")


def test_split_outside_quotes_and_angles() -> None:
    assert split_outside("a,b,,c", ",") == ["a", "b", "", "c"]
    assert split_outside('"x,\\"y,z" <sip:a;b=c,d>, e', ",") == ['"x,\\"y,z" <sip:a;b=c,d>', " e"]
    with pytest.raises(RemoteProtocolError):
        split_outside('"open, x', ",")
    with pytest.raises(RemoteProtocolError):
        split_outside("<sip:a, b", ",")


def test_quote_and_unquote() -> None:
    for text in ["", "plain", 'say "hi"', "back\\slash", 'both \\"']:
        quoted = quote(text)
        assert quoted_end(quoted, 0) == len(quoted)
        assert unquote(quoted) == text
    with pytest.raises(LocalProtocolError):
        quote("two\r\nlines")


def test_parse_and_format_params() -> None:
    params = parse_params(' ; a=1 ;B ; c = "x;y" ;host=[::1]')
    assert params == (("a", "1"), ("B", None), ("c", '"x;y"'), ("host", "[::1]"))
    assert format_params(params) == ';a=1;B;c="x;y";host=[::1]'
    assert parse_params("") == () and parse_params("   ") == ()


@pytest.mark.parametrize("text", ["a=1", ";", ";=1", ";a=", ";a=b c", ';a="x', ";a=<b>", ";a;;b"])
def test_parse_params_garbage(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_params(text)


def test_find_replace_remove() -> None:
    params = (("Tag", "x"), ("lr", None))
    assert find_param(params, "tag") == (True, "x")
    assert find_param(params, "LR") == (True, None)
    assert find_param(params, "q") == (False, None)
    assert replace_params(params, {"TAG": "y", "q": "1"}) == (
        ("Tag", "y"),
        ("lr", None),
        ("q", "1"),
    )
    assert remove_params(params, ["tag", "absent"]) == (("lr", None),)


def test_delta_seconds() -> None:
    assert parse_delta_seconds(" 3600 ", "x") == 3600
    assert parse_delta_seconds("4294967296", "x") == 2**32 - 1
    for bad in ["", "-1", "1.5", "١٢", "9" * 21, "1e3"]:
        with pytest.raises(RemoteProtocolError):
            parse_delta_seconds(bad, "x")
