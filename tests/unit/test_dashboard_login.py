"""A client on the LAN cannot try the dashboard's password at line rate: after a few wrong ones
each address waits, doubling, and a flood of addresses costs bounded memory."""
from gateway.dashboard.access import Attempts


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_five_wrong_passwords_are_free_then_the_address_waits_doubling_up_to_the_cap():
    clock = Clock()
    attempts = Attempts(free=5, first_wait_s=1.0, max_wait_s=8.0, clock=clock)
    for _ in range(5):
        assert attempts.wait_s("10.0.0.7") == 0
        attempts.failed("10.0.0.7")
    assert attempts.wait_s("10.0.0.7") == 1.0
    assert attempts.wait_s("10.0.0.8") == 0  # others are not held up
    clock.now += 1.0
    assert attempts.wait_s("10.0.0.7") == 0
    waits = []
    for _ in range(5):
        attempts.failed("10.0.0.7")
        waits.append(attempts.wait_s("10.0.0.7"))
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]


def test_the_right_password_forgets_the_address():
    attempts = Attempts(free=1, clock=Clock())
    attempts.failed("10.0.0.7")
    assert attempts.wait_s("10.0.0.7") > 0
    attempts.succeeded("10.0.0.7")
    assert attempts.wait_s("10.0.0.7") == 0


def test_a_flood_of_addresses_is_remembered_only_up_to_a_bound():
    attempts = Attempts(free=1, max_tracked=100, clock=Clock())
    for i in range(10_000):
        attempts.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(attempts._failures) == 100
    assert attempts.wait_s("10.0.39.15") > 0  # the most recent are the ones kept
