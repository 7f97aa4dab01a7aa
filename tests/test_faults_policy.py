"""The fault vocabulary and the policy object, without sockets: parsing both spellings,
their one-line errors, the seeded draw (a chi-square test over 10,000 draws), ``count``
under concurrent draws, targeting, and the states that end by themselves (a fake clock)."""

from __future__ import annotations

import json
import threading

import pytest

from server.faults.policy import FaultPolicy
from server.faults.rules import (
    MAX_RULES,
    FaultRuleError,
    Rule,
    parse_flag,
    rule_from_json,
    rules_from_json_text,
)
from tests.helpers import FakeClock

# chi-square, one degree of freedom: P(X > 10.828) = 0.001
CHI2_1DOF_P001 = 10.828


def test_the_flag_and_json_spellings_make_the_same_rule() -> None:
    flag = parse_flag("delay:delay_ms=200,jitter_ms=50,from=127.0.0.2/32,first_only=true")
    document = {"kind": "delay", "delay_ms": 200, "jitter_ms": 50, "from": "127.0.0.2/32", "first_only": True}
    assert flag == rule_from_json(document)
    assert flag.to_json() == document  # and it reads back as written
    assert flag.to_flag() == "delay:from=127.0.0.2/32,delay_ms=200,jitter_ms=50,first_only=true"
    assert parse_flag(flag.to_flag()) == flag
    assert rule_from_json(flag.to_json()) == flag


def test_every_kind_in_the_issue_parses() -> None:
    for text in (
        "reset:probability=0.05",
        "reset",
        "reset:after_bytes=10",
        "close:after_s=1.5",
        "bandwidth:bytes_per_s=1000",
        "hang:mode=no_echo",
        "refuse:for_s=3,listener=tls",
        "unready:for_s=3",
        "unhealthy:for_s=3",
        "drop:probability=0.5",
        "reorder:probability=0.5",
        "delay:delay_ms=5,listener=udp",
        "reset:count=3,listener=tls,worker=2",
    ):
        rule = parse_flag(text)
        assert rule.kind == text.partition(":")[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("explode", "unknown kind 'explode'; expected one of delay, bandwidth"),
        ("delay", "delay needs 'delay_ms'"),
        ("delay:delay_ms=abc", "delay_ms: expected a number, got 'abc'"),
        ("delay:delay_ms=-1", "delay_ms: must be between 0 and 3.6e+06, got -1"),
        ("reset:probability=1.5", "probability: must be between 0 and 1, got 1.5"),
        ("reset:count=0", "count: must be between 1 and"),
        ("reset:count=2.5", "count: expected a whole number, got '2.5'"),
        ("reset:from=nowhere", "from: expected a CIDR such as 127.0.0.2/32, got 'nowhere'"),
        ("reset:listener=sctp", "listener: must be one of tcp, tls, udp; got 'sctp'"),
        ("reset:listener=udp", "listener: reset is for TCP and TLS connections, not 'udp'"),
        ("drop:listener=tcp", "listener: drop is for UDP datagrams, not 'tcp'"),
        ("hang:mode=sleepy", "mode: must be one of no_read, no_echo; got 'sleepy'"),
        ("hang:delay_ms=3", "hang takes no 'delay_ms'"),
        ("unready:for_s=0", "for_s: must be above 0"),
        ("unready:for_s=3,probability=0.5", "unready takes no 'probability'"),
        ("reset:colour=red", "unknown key 'colour'"),
        ("reset:probability", "expected key=value, got 'probability'"),
        ("reset:count=1,count=2", "'count' given twice"),
        ("delay:delay_ms=1,first_only=maybe", "first_only: expected true or false, got 'maybe'"),
        ("bandwidth:bytes_per_s=0", "bytes_per_s: must be above 0"),
    ],
)
def test_a_malformed_flag_is_one_line_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(FaultRuleError) as raised:
        parse_flag(text)
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[" * 100_000, "not JSON"),
        ('{"kind": "reset"}', "expected a JSON list of rules, got dict"),
        ('[{"kind": "reset"}, 3]', "rule 2: a rule is a JSON object"),
        ('[{"kind": "reset", "probability": true}]', "rule 1: probability: expected a number, got True"),
        ('[{"kind": "reset", "probability": "0.5"}]', "rule 1: probability: expected a number"),
        ('[{"kind": "delay", "delay_ms": NaN}]', "rule 1: delay_ms: expected a number, got nan"),
        ("[" + ",".join(['{"kind": "reset"}'] * (MAX_RULES + 1)) + "]", f"at most {MAX_RULES} rules"),
    ],
)
def test_a_malformed_json_policy_is_one_line(text: str, message: str) -> None:
    with pytest.raises(FaultRuleError) as raised:
        rules_from_json_text(text)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_the_fired_fraction_passes_a_chi_square_test_over_10000_draws() -> None:
    draws = 10_000
    for seed in range(5):
        for probability in (0.05, 0.5):
            policy = FaultPolicy([parse_flag(f"reset:probability={probability}")], seed=seed)
            fired = sum(policy.draw("127.0.0.1", "tcp") is not None for _ in range(draws))
            expected = draws * probability
            chi2 = (fired - expected) ** 2 / expected + (fired - expected) ** 2 / (draws - expected)
            assert chi2 < CHI2_1DOF_P001, (seed, probability, fired, chi2)
            assert policy.snapshot()["fired"] == [fired]


def test_a_seed_makes_a_run_repeat_exactly() -> None:
    def run(seed: int) -> list[int | None]:
        policy = FaultPolicy(
            [parse_flag("reset:probability=0.3"), parse_flag("delay:delay_ms=1,jitter_ms=5")], seed=seed
        )
        return [None if (f := policy.draw("127.0.0.1", "tcp")) is None else f.seed ^ f.index for _ in range(500)]

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_count_fires_for_exactly_the_next_n_even_with_concurrent_draws() -> None:
    policy = FaultPolicy([parse_flag("reset:count=100")], seed=1)
    fired: list[int] = []
    start = threading.Barrier(4)

    def drawer() -> None:
        start.wait()
        fired.append(sum(policy.draw("127.0.0.1", "tcp") is not None for _ in range(1000)))

    threads = [threading.Thread(target=drawer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(fired) == 100
    assert policy.snapshot()["fired"] == [100] and policy.snapshot()["left"] == [0]


def test_the_first_matching_rule_that_fires_applies() -> None:
    policy = FaultPolicy(
        [parse_flag("reset:count=2,from=127.0.0.2/32"), parse_flag("close:count=1"), parse_flag("delay:delay_ms=1")],
        seed=3,
    )
    kinds = [f.kind if (f := policy.draw(ip, "tcp")) else None for ip in ["127.0.0.3", "127.0.0.2", "127.0.0.2"] * 2]
    assert kinds == ["close", "reset", "reset", "delay", "delay", "delay"]


def test_targeting_by_cidr_listener_and_worker() -> None:
    policy = FaultPolicy([parse_flag("reset:from=127.0.0.2/32,listener=tls,worker=2")])
    assert policy.draw("127.0.0.2", "tls", worker=2) is not None
    assert policy.draw("127.0.0.3", "tls", worker=2) is None
    assert policy.draw("127.0.0.2", "tcp", worker=2) is None
    assert policy.draw("127.0.0.2", "tls", worker=1) is None
    assert policy.draw("::ffff:127.0.0.2", "tls", worker=2) is not None  # a mapped IPv4 peer is that peer
    assert policy.draw("not an address", "tls", worker=2) is None


def test_connection_kinds_stay_off_udp_and_datagram_kinds_off_tcp() -> None:
    policy = FaultPolicy([parse_flag("drop"), parse_flag("reset")])
    drawn_udp = policy.draw("127.0.0.1", "udp")
    drawn_tcp = policy.draw("127.0.0.1", "tcp")
    assert drawn_udp is not None and drawn_udp.kind == "drop"
    assert drawn_tcp is not None and drawn_tcp.kind == "reset"
    assert FaultPolicy([parse_flag("delay:delay_ms=1")]).draw("127.0.0.1", "udp") is not None


def test_states_start_when_set_and_end_by_themselves() -> None:
    clock = FakeClock()
    changes: list[float] = []
    policy = FaultPolicy(clock=clock, on_change=lambda: changes.append(clock.now))
    assert not policy.unready() and not policy.refusing("tcp") and policy.next_change() is None
    policy.replace([parse_flag("unready:for_s=3"), parse_flag("refuse:for_s=5,listener=tls")])
    assert policy.unready() and not policy.unhealthy()
    assert policy.refusing("tls") and not policy.refusing("tcp")
    assert policy.next_change() == clock.now + 3
    assert policy.snapshot()["active"] == [
        {"kind": "refuse", "listener": "tls", "remaining_s": 5.0},
        {"kind": "unready", "remaining_s": 3.0},
    ]
    clock.now += 3.0
    assert not policy.unready() and policy.refusing("tls")
    clock.now += 2.0
    assert not policy.refusing("tls") and policy.next_change() is None
    assert policy.snapshot()["fired"] == [1, 1]
    assert changes == [1000.0]


def test_a_new_policy_ends_the_old_states_and_counts_at_once() -> None:
    policy = FaultPolicy([parse_flag("unhealthy:for_s=60"), parse_flag("reset:count=1")])
    assert policy.unhealthy()
    policy.clear()
    assert not policy.unhealthy() and policy.draw("127.0.0.1", "tcp") is None
    assert policy.snapshot() == {"rules": [], "fired": [], "left": [], "active": []}
    assert policy.injected() == {("unhealthy", "all"): 1}


def test_injected_counts_survive_a_replace() -> None:
    policy = FaultPolicy([parse_flag("reset")])
    for _ in range(3):
        policy.draw("127.0.0.1", "tls")
    policy.replace([Rule("close")])
    policy.draw("127.0.0.1", "tcp")
    assert policy.injected() == {("reset", "tls"): 3, ("close", "tcp"): 1}
    assert json.loads(json.dumps(policy.snapshot()))["rules"] == [{"kind": "close"}]
