import anyio
import pytest

from adapter.health import SipHealth, check_sip

SERVER = "sip:127.0.0.1:5070"


class SilentProbe:
    async def ping(self) -> float:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


class TimingOutProbe:
    async def ping(self) -> float:
        raise TimeoutError


def check(probe, timeout: float | None = None) -> SipHealth:
    async def run() -> SipHealth:
        with anyio.fail_after(5):  # guards the test only: check_sip must return sooner
            return await check_sip(probe, SERVER, timeout=timeout)

    return anyio.run(run)


def test_a_probe_that_never_answers_is_cut_short() -> None:
    health = check(SilentProbe(), timeout=0.01)
    assert health == SipHealth(SERVER, reachable=False, reason="no answer within 0.01 s")
    assert health.to_json() == {
        "server": SERVER,
        "reachable": False,
        "reason": "no answer within 0.01 s",
    }


def test_a_probe_error_without_text_is_named() -> None:
    health = check(TimingOutProbe())
    assert health == SipHealth(SERVER, reachable=False, reason="TimeoutError")


@pytest.mark.parametrize(("rtt", "ms"), [(0.0, 0.0), (0.0004567, 0.457), (1.5, 1500.0)])
def test_rtt_is_reported_in_milliseconds(rtt: float, ms: float) -> None:
    class Probe:
        async def ping(self) -> float:
            return rtt

    health = check(Probe())
    assert health.reachable and health.rtt == rtt
    assert health.to_json() == {"server": SERVER, "reachable": True, "rtt_ms": ms}
