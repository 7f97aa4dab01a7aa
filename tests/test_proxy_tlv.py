"""PROXY v2 TLVs decoded without a kernel: each known type, CRC32C good and bad, the
SSL TLV's sub-TLVs, unknown types as bounded hex, and lengths as strict as before."""

from __future__ import annotations

import random
import struct

import pytest

from server.engine.proxy_protocol import ProxyProtocolError, parse
from server.engine.proxy_tlv import OTHER_MAX_BYTES, OTHER_MAX_ITEMS, VALUE_MAX_BYTES, OtherTlv, ProxyTlvs, crc32c
from tests.test_proxy_protocol import tlv, v2, whole


def ssl_tlv(client: int = 0x07, verify: int = 0, subs: bytes = b"") -> bytes:
    return tlv(0x20, struct.pack("!BI", client, verify) + subs)


def with_crc32c(tlvs: bytes, corrupt: bool = False) -> bytes:
    """A v2 header whose last TLV is a CRC32C computed as the spec says (the whole header
    with the checksum's own four bytes zeroed); ``corrupt`` flips one bit of it."""
    header = v2(tlvs=tlvs + tlv(0x03, b"\0\0\0\0"))
    checksum = crc32c(header) ^ (1 if corrupt else 0)
    return header[:-4] + struct.pack("!I", checksum)


def decoded(header: bytes) -> ProxyTlvs:
    tlvs = whole(header).tlvs
    assert tlvs is not None
    return tlvs


def test_crc32c_matches_the_castagnoli_check_values() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the catalogue's check value for CRC-32C
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert crc32c(b"\xff" * 32) == 0x62A8AB43  # and of ones
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283  # it continues


def test_every_known_tlv_is_decoded() -> None:
    subs = tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example") + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
    subs += tlv(0x24, b"RSA-SHA256") + tlv(0x25, b"RSA2048")
    tlvs = tlv(0x01, b"h2") + tlv(0x02, b"a.example") + tlv(0x05, b"AB12:CD34") + ssl_tlv(0x07, 0, subs)
    tlvs += tlv(0x30, b"blue") + tlv(0x04, b"\0" * 10) + tlv(0xEA, b"vpce-0123")
    got = decoded(with_crc32c(tlvs))
    assert got.alpn == b"h2" and got.authority == b"a.example" and got.unique_id == b"AB12:CD34"
    assert got.netns == b"blue" and got.crc32c_ok is True
    assert got.ssl is not None and got.ssl.client == ("ssl", "cert_conn", "cert_sess") and got.ssl.verify == 0
    assert (got.ssl.version, got.ssl.cn, got.ssl.cipher) == (b"TLSv1.3", b"client.example", b"TLS_AES_128_GCM_SHA256")
    assert (got.ssl.sig_alg, got.ssl.key_alg) == (b"RSA-SHA256", b"RSA2048")
    assert got.other == (OtherTlv(0xEA, b"vpce-0123", 9),)  # NOOP is skipped, not shown


def test_a_bad_checksum_is_reported_not_rejected() -> None:
    assert decoded(with_crc32c(tlv(0x02, b"a.example"), corrupt=True)).crc32c_ok is False
    good = with_crc32c(tlv(0x02, b"a.example"))
    tampered = good.replace(b"a.example", b"b.example")
    assert decoded(good).crc32c_ok is True and decoded(tampered).crc32c_ok is False
    assert decoded(v2(tlvs=tlv(0x02, b"x"))).crc32c_ok is None  # no checksum sent: None, not False


def test_no_tlvs_means_none_and_an_empty_ssl_tlv_has_only_its_flags() -> None:
    assert whole(v2()).tlvs is None
    got = decoded(v2(tlvs=ssl_tlv(0x01, 1)))
    assert got.ssl is not None and got.ssl.client == ("ssl",) and got.ssl.verify == 1 and got.ssl.cn is None


def test_unknown_types_are_bounded_and_repeats_are_shown_not_believed() -> None:
    many = b"".join(tlv(0xE0 + n, bytes([n]) * 200) for n in range(OTHER_MAX_ITEMS + 5))
    got = decoded(v2(tlvs=tlv(0x02, b"first") + tlv(0x02, b"second") + many))
    assert got.authority == b"first"
    assert len(got.other) == OTHER_MAX_ITEMS
    assert got.other[0] == OtherTlv(0x02, b"second", 6)
    assert all(len(item.value) == OTHER_MAX_BYTES and item.size == 200 for item in got.other[1:])
    long_value = decoded(v2(tlvs=tlv(0x02, b"a" * 1000))).authority
    assert long_value == b"a" * VALUE_MAX_BYTES


@pytest.mark.parametrize(
    ("tlvs", "problem"),
    [
        (tlv(0x03, b"\0\0\0"), "CRC32C"),
        (tlv(0x03, b"\0" * 5), "CRC32C"),
        (tlv(0x02, b"ok") + b"\x05", "truncated TLV"),
    ],
)
def test_bad_lengths_inside_and_around_tlvs_are_malformed(tlvs: bytes, problem: str) -> None:
    with pytest.raises(ProxyProtocolError, match=problem) as error:
        parse(v2(tlvs=tlvs))
    assert error.value.kind == "malformed"


@pytest.mark.parametrize("value", [b"\x01\0\0\0", struct.pack("!BI", 1, 0) + tlv(0x22, b"cn")[:-1]])
def test_an_ssl_tlv_that_does_not_add_up_is_shown_as_hex_not_refused(value: bytes) -> None:
    got = decoded(v2(tlvs=tlv(0x20, value) + tlv(0x02, b"a.example")))
    assert got.ssl is None and got.authority == b"a.example"
    assert got.other == (OtherTlv(0x20, value, len(value)),)


def test_random_tlv_bytes_decode_or_give_a_proxy_protocol_error() -> None:
    rng = random.Random(23)
    kinds = [0x01, 0x02, 0x03, 0x05, 0x20, 0x21, 0x22, 0x30, 0xEA]
    for _ in range(3000):
        body = b"".join(tlv(rng.choice(kinds), rng.randbytes(rng.randint(0, 12))) for _ in range(rng.randint(1, 5)))
        data = bytearray(body)
        for _ in range(rng.randint(0, 3)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            tlvs = parse(v2(tlvs=bytes(data))).tlvs
        except ProxyProtocolError as error:
            assert error.kind == "malformed"
            continue
        assert tlvs is not None and len(tlvs.other) <= OTHER_MAX_ITEMS
