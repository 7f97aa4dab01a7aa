"""Reflection without a server: hostile PROXY values that must not break the JSON line,
the size bound against random facts, only the parts asked for gathered, and the banner's
reflection fields."""

from __future__ import annotations

import json
import random
import socket
import struct
from typing import Any

import pytest

import server
from server.engine.banner import Banner
from server.engine.connection import Connection
from server.engine.proxy_protocol import parse
from server.engine.reflection import (
    FIELD_PARTS,
    MAX_JSON_CHARS,
    PARTS,
    TEXT_BUDGET,
    bounded_object,
    bounded_text,
    flat_fields,
    proxy_object,
    reflect,
    to_json,
    worst_case,
)
from server.lib.banner_template import (
    MAX_BANNER_CHARS,
    MAX_LINE_CHARS,
    REFLECTION_JSON_CHARS,
    REFLECTION_LONGEST,
    check_template,
)
from tests.test_proxy_protocol import tlv, v2
from tests.test_proxy_tlv import ssl_tlv, with_crc32c

HOSTILE = b'a"b\\c\nd\re\x00f\xff\xfeg\xe2\x80\xa8h</script>{"x":1}'


def _facts(proxy_bytes: bytes, **extra: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "peer": "203.0.113.7:40000",
        "local": "127.0.0.1:7007",
        "listener": "tcp",
        "worker": None,
        "conn": 1,
        "hostname": "replica-1",
        "proxy": proxy_object(parse(proxy_bytes)),
    }
    facts.update(extra)
    return bounded_object(facts)


def _one_json_line(facts: dict[str, Any]) -> Any:
    line = to_json(facts)
    assert line.isascii() and "\n" not in line and "\r" not in line and "\0" not in line
    assert len(line) <= MAX_JSON_CHARS
    return json.loads(line)


def test_hostile_tlv_values_stay_inside_one_valid_json_line() -> None:
    tlvs = tlv(0x02, HOSTILE) + tlv(0x05, HOSTILE) + tlv(0x01, b"\n") + tlv(0x30, b"\x00")
    tlvs += ssl_tlv(subs=tlv(0x22, HOSTILE)) + tlv(0xEA, HOSTILE)
    got = _one_json_line(_facts(with_crc32c(tlvs)))
    proxy = got["proxy"]
    assert (proxy["version"], proxy["command"], proxy["family"]) == (2, "PROXY", "TCP4")
    assert proxy["src"] == "203.0.113.7:40000" and proxy["dst"] == "10.0.0.1:7007"
    expected = HOSTILE.decode("utf-8", "backslashreplace")  # invalid bytes kept, as \xff text
    assert proxy["tlvs"]["authority"] == expected and "\\xff\\xfe" in expected
    assert proxy["tlvs"]["unique_id"] == expected and proxy["tlvs"]["ssl"]["cn"] == expected
    assert proxy["tlvs"]["alpn"] == "\n" and proxy["tlvs"]["netns"] == "\0" and proxy["tlvs"]["crc32c_ok"] is True
    assert proxy["tlvs"]["other"] == [{"type": 0xEA, "hex": HOSTILE.hex(), "size": len(HOSTILE)}]


def test_v1_and_local_headers_reflect_without_tlvs() -> None:
    v1 = _one_json_line(_facts(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"))["proxy"]
    assert v1 == {"version": 1, "command": "PROXY", "family": "TCP6", "src": "[2001:db8::1]:1",
                  "dst": "[2001:db8::2]:2", "tlvs": None}  # fmt: skip
    local = _one_json_line(_facts(v2(command=0, family=0, protocol=0)))["proxy"]
    assert local["command"] == "LOCAL" and local["src"] is None and local["tlvs"] is None


def test_the_worst_case_is_the_stated_bound_and_random_facts_stay_under_it() -> None:
    assert len(to_json(worst_case())) == MAX_JSON_CHARS
    assert 4000 < MAX_JSON_CHARS < 16384  # the figure docs/reflection.md states, roughly
    rng = random.Random(23)
    alphabet = ["a", '"', "\\", "\n", "\0", "\x7f", "é", "\u2028", "\U0001f600", "\udcff"]
    for _ in range(300):
        blob = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 600))).encode("utf-8", "surrogatepass")
        tlvs = b"".join(tlv(kind, blob[: rng.randint(0, 300)]) for kind in (0x01, 0x02, 0x05, 0x30))
        tlvs += ssl_tlv(subs=b"".join(tlv(kind, blob[:255]) for kind in range(0x21, 0x26)))
        tlvs += b"".join(tlv(0xE0 + n, blob[:100]) for n in range(rng.randint(0, 12)))
        text = blob.decode("utf-8", "surrogatepass")
        cert = {"subject": text, "issuer": text, "serial": text, "san": [text] * 16, "not_after": text}
        tls = {"version": text, "cipher": text, "sni": text, "alpn": text, "resumed": True, "client_cert": cert}
        facts = _facts(with_crc32c(tlvs[:3900]), tls=tls, via=text, hostname=text)
        assert len(to_json(facts)) <= MAX_JSON_CHARS
        json.loads(to_json(facts))


def test_bounded_text_is_the_longest_prefix_that_fits_the_budget() -> None:
    rng = random.Random(5)
    alphabet = ["a", '"', "\\", "\n", "\x01", "\x7f", "é", "\U0001f600"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
        cut = bounded_text(text)
        assert text.startswith(cut)
        assert len(json.dumps(cut)) - 2 <= TEXT_BUDGET
        if cut != text:
            assert len(json.dumps(text[: len(cut) + 1])) - 2 > TEXT_BUDGET


def _conn(proxy: bytes | None = None, facts_via: str = "") -> Connection:
    conn = Connection(3, "203.0.113.7:40000", "203.0.113.7", 0.0, "tcp")
    conn.via = facts_via
    conn.proxy = None if proxy is None else parse(proxy)
    return conn


def test_only_the_parts_asked_for_are_gathered() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()):
        accepted, _ = listener.accept()
        with accepted:
            conn = _conn(b"PROXY TCP4 192.0.2.1 10.0.0.1 4000 7007\r\n", "127.0.0.1:1")
            nothing = reflect(accepted, conn, worker=1, hostname="h", parts=frozenset())
            everything = reflect(accepted, conn, worker=1, hostname="h", parts=PARTS)
    assert set(nothing) == {"peer", "local", "listener", "worker", "conn", "hostname", "via"}
    assert nothing["local"] == ""  # not looked up
    assert everything["local"].startswith("127.0.0.1:") and everything["via"] == "127.0.0.1:1"
    assert everything["proxy"]["src"] == "192.0.2.1:4000" and "tls" not in everything
    assert everything["tcp_info"]["rtt_us"] > 0 and everything["worker"] == 1


def test_banner_fields_are_filled_from_the_facts_and_cannot_split_the_line() -> None:
    conn = _conn(v2(tlvs=tlv(0x02, b"evil\r\nINJECTED") + tlv(0x05, b"UID-1")))
    template = "{proxy_authority} {proxy_unique_id} {proxy_src} {sni}|{tls_version}|{listener}|{worker}"
    banner = Banner(template, server.__version__, "h", worker=2)
    assert banner.parts == {"proxy", "tls"}
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()):
        accepted, _ = listener.accept()
        with accepted:
            line = banner.render(conn, accepted)
            json_line = Banner("{conn} {json}", "1", "h").render(conn, accepted)
            mss = Banner("{mss} {rtt_us}", "1", "h").render(conn, accepted)
    assert line == b"evil\\r\\nINJECTED UID-1 203.0.113.7:40000 ||tcp|2\n"
    assert json_line.count(b"\n") == 1
    facts = json.loads(json_line.split(b" ", 1)[1])
    assert facts["proxy"]["tlvs"]["authority"] == "evil\r\nINJECTED" and facts["tcp_info"]["snd_mss"] > 0
    assert mss.split()[0].isdigit() and int(mss.split()[1]) > 0
    assert Banner("{json}", "1").parts == PARTS and Banner("{peer} {local}", "1").parts == frozenset()
    assert Banner("{worker}", "1").parts == frozenset()


def test_flat_fields_are_empty_where_not_applicable() -> None:
    assert set(flat_fields({"listener": "tcp", "worker": None}).values()) == {""}


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{json}{json}", f"at most {MAX_LINE_CHARS + MAX_JSON_CHARS}"),
        ("{sni}" * 5 + "x" * 480, f"at most {MAX_LINE_CHARS + 256}"),
        ("{sni:>2000}", f"the width of {{sni}} may be at most {MAX_LINE_CHARS}"),
        ("{mss:d}", "not a valid template"),
        ("{json.peer}", "unknown field"),
        ("{tls_version[0]}", "unknown field"),
    ],
)
def test_reflection_fields_are_checked_as_strictly_as_the_others(template: str, problem: str) -> None:
    assert problem in (check_template(template) or "")
    assert check_template("{hostname} {json}") is None and check_template("x" * 400 + "{json}") is None
    every_field = " ".join("{" + name + "}" for name in REFLECTION_LONGEST)
    assert check_template(every_field) is None  # each field once fits, whatever the values
    assert MAX_BANNER_CHARS < 16384


def test_the_template_checks_bounds_are_the_reflections_own() -> None:
    assert REFLECTION_JSON_CHARS == MAX_JSON_CHARS  # the figure lib states is the one computed here
    assert set(REFLECTION_LONGEST) == set(FIELD_PARTS)
    worst = flat_fields(worst_case())
    for name, longest in REFLECTION_LONGEST.items():
        if name != "json":
            assert len(worst[name]) <= len(longest), name


def test_the_crafted_headers_checksum_really_is_crc32c() -> None:
    header = with_crc32c(tlv(0x02, b"a"))
    assert struct.unpack("!I", header[-4:])[0] != 0
