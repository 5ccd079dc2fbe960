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
