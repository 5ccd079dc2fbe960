from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cmtyflow.runtime.simulate import Simulation, SimulationSpecError, parse_spec
from cmtyflow.store.memory import MemoryStore

SH = ZoneInfo("Asia/Shanghai")


def test_parse_spec_shorthands_and_errors():
    assert parse_spec("checkin=0.7, post=0.2,custom.thing=1") == [
        ("checkin.posted", 0.7), ("message.posted", 0.2), ("custom.thing", 1.0)
    ]
    for bad, message in [
        ("checkin", "should be NAME=PROBABILITY"),
        ("checkin=x", "is not a probability"),
        ("checkin=1.5", "is not between 0 and 1"),
        ("dance=0.5", "unknown behaviour 'dance'"),
        ("", "no behaviour given"),
        # Twice, the generated events' ids collided and some were dropped as duplicates.
        ("checkin=0.5,checkin=0.7", "'checkin.posted' is given twice"),
        ("checkin=0.5,checkin.posted=0.5", "'checkin.posted' is given twice"),
    ]:
        with pytest.raises(SimulationSpecError, match=message):
            parse_spec(bad)


def _draw(seed):
    store = MemoryStore()
    store.put_members({"id": f"m{i}", "timezone": "America/New_York" if i % 2 else "Asia/Shanghai"} for i in range(200))
    sim = Simulation(parse_spec("checkin=0.5,post=0.1"), seed=seed, default_tz="Asia/Shanghai")
    start = datetime(2026, 12, 1, tzinfo=SH)
    return list(sim.events_for(start, start + timedelta(days=1), store))


def test_same_seed_same_events_and_rates_are_plausible():
    a, b, c = _draw(1), _draw(1), _draw(2)
    assert [(e.id, e.at) for e in a] == [(e.id, e.at) for e in b]
    assert [(e.id, e.at) for e in a] != [(e.id, e.at) for e in c]
    checkins = [e for e in a if e.type == "checkin.posted"]
    assert 70 <= len(checkins) <= 130
    for e in a:
        tz = ZoneInfo("America/New_York" if int(e.member[1:]) % 2 else "Asia/Shanghai")
        assert 7 <= e.at.astimezone(tz).hour < 23
        assert datetime(2026, 12, 1, tzinfo=SH) <= e.at < datetime(2026, 12, 2, tzinfo=SH)


def test_each_member_local_day_gets_one_event_of_a_kind_whatever_the_timezone():
    """A day of the playbook's (Shanghai) covers parts of two of a London member's
    days: drawn anywhere in it, two check-ins fell on one London day (and the playbook
    answered "already checked in"), another London day had none."""
    store = MemoryStore()
    zones = ["Europe/London", "America/Los_Angeles", "Asia/Kolkata", "Asia/Tokyo", "Pacific/Honolulu", "Asia/Shanghai"]
    store.put_members({"id": f"m{i}", "timezone": z} for i, z in enumerate(zones))
    sim = Simulation(parse_spec("checkin=1"), seed=4, default_tz="Asia/Shanghai")
    start = datetime(2026, 12, 1, tzinfo=SH)
    days = 14
    events = [e for d in range(days) for e in sim.events_for(start + timedelta(days=d), start + timedelta(days=d + 1), store)]
    for i, zone in enumerate(zones):
        tz = ZoneInfo(zone)
        local = [e.at.astimezone(tz) for e in events if e.member == f"m{i}"]
        dates = [at.date() for at in local]
        assert len(dates) == days and len(set(dates)) == days, zone  # one a day, consecutive days
        assert all(7 <= at.hour < 23 for at in local), zone
    assert all(start <= e.at < start + timedelta(days=days) for e in events)
