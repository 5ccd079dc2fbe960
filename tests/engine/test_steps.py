"""Step kinds in scenarios: event waits, variants, emit, goals, failures, repeat,
choose, set and tag/untag (SPEC 4)."""

from __future__ import annotations

import sqlite3

import pytest


def trio(deliveries):
    return [(d["at"], d["member"], d["step"]) for d in deliveries]


def ev(eid: str, etype: str, at: str, member: str | None = "m", data: dict | None = None) -> dict:
    out = {"id": eid, "type": etype, "at": at, "member": member}
    if data is not None:
        out["data"] = data
    return out


EVENT_WAIT = """
cmtyflow: 1
name: nudge
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - id: joined
    event: member.joined
    flow: f
flows:
  f:
    - wait: {event: message.posted, timeout: 2d}
    - choose:
        - if: wait.timed_out
          steps:
            - id: nudge
              send: {channel: dm, text: "timed_out={{ wait.timed_out }} event={{ wait.event }}"}
        - else:
            - id: thanks
              send: {channel: dm, text: "timed_out={{ wait.timed_out }} said {{ wait.event.data.text }}"}
"""


def test_event_wait_times_out_and_one_that_does_not(simulate, tmp_path):
    roster = [{"id": "a", "name": "Ana"}, {"id": "b", "name": "Bo"}, {"id": "c", "name": "Cy"}]
    events = [
        ev("j1", "member.joined", "2026-12-01T10:00:00+08:00", "a"),
        ev("j2", "member.joined", "2026-12-01T10:00:00+08:00", "b"),
        ev("j3", "member.joined", "2026-12-01T10:00:00+08:00", "c"),
        # c posts: that never satisfies a's wait (a member run matches its own events).
        ev("p1", "message.posted", "2026-12-01T11:00:00+08:00", "c", {"text": "hi from c"}),
        ev("p2", "message.posted", "2026-12-02T15:30:00+08:00", "a", {"text": "hello all"}),
        # a's second post has no wait to resume
        ev("p3", "message.posted", "2026-12-02T16:00:00+08:00", "a", {"text": "again"}),
        # b posts after the timeout: too late
        ev("p4", "message.posted", "2026-12-03T10:00:01+08:00", "b", {"text": "late"}),
    ]
    out, summary = simulate(EVENT_WAIT, roster, events, "2026-12-01", 4, tmp_path)
    assert [(d["at"], d["member"], d["step"], d["text"]) for d in out] == [
        ("2026-12-01T11:00:00+08:00", "c", "thanks", "timed_out=False said hi from c"),
        ("2026-12-02T15:30:00+08:00", "a", "thanks", "timed_out=False said hello all"),
        ("2026-12-03T10:00:00+08:00", "b", "nudge", "timed_out=True event="),
    ]
    assert summary["runs"]["done"] == 3
    assert summary["runs"]["active_at_end"] == 0


def test_wait_reads_the_last_event_wait_after_a_later_timed_wait(simulate, tmp_path):
    """SPEC 2: ``wait`` is the result of the last event wait; a ``wait: 1h`` or
    ``wait: {until}`` after it does not take it away."""
    pb = EVENT_WAIT.replace(
        "    - choose:\n",
        "    - wait: 1h\n    - wait: {until: \"20:00\"}\n    - choose:\n",
    )
    roster = [{"id": "a", "name": "Ana"}, {"id": "b", "name": "Bo"}]
    events = [
        ev("j1", "member.joined", "2026-12-01T10:00:00+08:00", "a"),
        ev("j2", "member.joined", "2026-12-01T10:00:00+08:00", "b"),
        ev("p1", "message.posted", "2026-12-01T11:00:00+08:00", "a", {"text": "hi"}),
    ]
    out, summary = simulate(pb, roster, events, "2026-12-01", 4, tmp_path)
    assert [(d["at"], d["member"], d["text"]) for d in out] == [
        ("2026-12-01T20:00:00+08:00", "a", "timed_out=False said hi"),
        ("2026-12-03T20:00:00+08:00", "b", "timed_out=True event="),
    ]
    assert summary["runs"]["done"] == 2


def test_event_wait_at_the_timeout_instant_times_out(simulate, tmp_path):
    """SPEC 5.6: due waits go before events at the same instant."""
    roster = [{"id": "a", "name": "Ana"}]
    events = [
        ev("j1", "member.joined", "2026-12-01T10:00:00+08:00", "a"),
        ev("p1", "message.posted", "2026-12-03T10:00:00+08:00", "a", {"text": "just now"}),
    ]
    out, _ = simulate(EVENT_WAIT, roster, events, "2026-12-01", 4, tmp_path)
    assert trio(out) == [("2026-12-03T10:00:00+08:00", "a", "nudge")]


def test_event_wait_with_where_matches_any_members_event(simulate, tmp_path):
    pb = EVENT_WAIT.replace(
        "wait: {event: message.posted, timeout: 2d}",
        "wait: {event: message.posted, where: \"event.data.text == 'welcome ' ~ member.name\", timeout: 2d}",
    )
    roster = [{"id": "a", "name": "Ana"}, {"id": "mod", "name": "Mod"}]
    events = [
        ev("j1", "member.joined", "2026-12-01T10:00:00+08:00", "a"),
        ev("p1", "message.posted", "2026-12-01T10:30:00+08:00", "a", {"text": "hi"}),
        ev("p2", "message.posted", "2026-12-01T11:00:00+08:00", "mod", {"text": "welcome Ana"}),
    ]
    out, _ = simulate(pb, roster, events, "2026-12-01", 4, tmp_path)
    assert [(d["at"], d["member"], d["text"]) for d in out] == [
        ("2026-12-01T11:00:00+08:00", "a", "timed_out=False said welcome Ana"),
    ]


VARIANTS = """
cmtyflow: 1
name: ab
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - id: daily
    cron: "0 10 * * *"
    for_each: audience
    flow: f
flows:
  f:
    - id: hello
      send:
        channel: dm
        variants:
          a: {text: "A", weight: 3}
          b: {text: "B", weight: 1}
"""


def test_variant_assignment_is_stable_and_weighted(simulate, tmp_path):
    roster = [{"id": f"u{i:04d}"} for i in range(1000)]
    out, summary = simulate(VARIANTS, roster, [], "2026-12-01", 2, tmp_path)
    assert len(out) == 2000
    first = {d["member"]: d["variant"] for d in out[:1000]}
    second = {d["member"]: d["variant"] for d in out[1000:]}
    assert len(first) == 1000
    assert first == second  # the same member gets the same variant on every run
    assert all(d["text"] == d["variant"].upper() for d in out)
    share_a = sum(1 for v in first.values() if v == "a") / 1000
    assert 0.70 <= share_a <= 0.80  # weights 3:1
    assert summary["per_variant"] == {
        "ab/hello:a": 2 * round(share_a * 1000),
        "ab/hello:b": 2 * (1000 - round(share_a * 1000)),
    }


def test_variant_is_stable_across_dry_runs(simulate, tmp_path):
    roster = [{"id": f"u{i}"} for i in range(20)]
    out1, _ = simulate(VARIANTS, roster, [], "2026-12-01", 1, tmp_path / "one")
    out2, _ = simulate(VARIANTS, list(reversed(roster)), [], "2026-12-05", 1, tmp_path / "two")
    assert {d["member"]: d["variant"] for d in out1} == {d["member"]: d["variant"] for d in out2}
    assert {d["variant"] for d in out1} == {"a", "b"}


EMITTER = """
cmtyflow: 1
name: alpha
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - id: t
    event: ping
    flow: f
flows:
  f:
    - id: a-before
      send: {channel: dm, text: "a"}
    - emit: {event: custom.levelled, data: {level: "state.get('level', 0) + 1", label: "'gold'"}}
    - id: a-after
      send: {channel: dm, text: "a2"}
"""

LISTENER = """
cmtyflow: 1
name: beta
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - id: on-level
    event: custom.levelled
    flow: f
flows:
  f:
    - id: b-react
      send: {channel: dm, text: "level {{ event.data.level }} {{ event.data.label }} from {{ event.member }}"}
"""


def test_emit_reaches_another_playbooks_trigger_at_the_same_instant(simulate, tmp_path):
    roster = [{"id": "m", "name": "Mo"}]
    events = [ev("e1", "ping", "2026-12-01T10:00:00+08:00")]
    out, summary = simulate([EMITTER, LISTENER], roster, events, "2026-12-01", 1, tmp_path)
    assert [(d["at"], d["playbook"], d["member"], d["step"], d["text"]) for d in out] == [
        ("2026-12-01T10:00:00+08:00", "alpha", "m", "a-before", "a"),
        ("2026-12-01T10:00:00+08:00", "alpha", "m", "a-after", "a2"),
        ("2026-12-01T10:00:00+08:00", "beta", "m", "b-react", "level 1 gold from m"),
    ]
    assert summary["runs"]["started"] == 2


GOALS = """
cmtyflow: 1
name: onboard
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
goals:
  first_post: {event: message.posted, within: 7d}
triggers:
  - id: joined
    event: member.joined
    flow: f
flows:
  f:
    - id: welcome
      send:
        channel: dm
        variants:
          a: {text: "A"}
          b: {text: "B"}
"""


def test_goals_are_tracked_per_step_and_variant(simulate, tmp_path):
    roster = [{"id": m} for m in ("u1", "u2", "u3", "u4")]
    events = [ev(f"j-{m}", "member.joined", "2026-12-01T10:00:00+08:00", m) for m in ("u1", "u2", "u3", "u4")]
    events += [
        ev("p1", "message.posted", "2026-12-03T10:00:00+08:00", "u1"),  # within 7 days
        ev("p1b", "message.posted", "2026-12-04T10:00:00+08:00", "u1"),  # counted once
        ev("p2", "message.posted", "2026-12-08T10:00:00+08:00", "u2"),  # exactly 7 days: in
        ev("p3", "message.posted", "2026-12-08T10:00:01+08:00", "u3"),  # too late
    ]
    out, summary = simulate(GOALS, roster, events, "2026-12-01", 10, tmp_path)
    variants = {d["member"]: d["variant"] for d in out}
    assert len(variants) == 4
    expected: dict[str, dict[str, int]] = {"onboard/first_post per run": {"reached": 2, "of": 4}}
    for member, variant in variants.items():
        key = f"onboard/first_post after welcome [{variant}]"
        slot = expected.setdefault(key, {"reached": 0, "of": 0})
        slot["of"] += 1
        slot["reached"] += member in ("u1", "u2")
    assert summary["goals"] == expected


def test_a_send_to_a_role_exposes_no_one_to_the_goal(simulate, tmp_path):
    """The step that pages moderators about a silent newcomer is not a message the
    goal measures: the moderator who then posts counted as a conversion after it."""
    text = GOALS.replace("  dm: {adapter: console}\n", "  dm: {adapter: console}\nroles: {mods: [m1]}\n")
    text = text.replace("    - id: welcome\n", "    - {id: page, send: {channel: dm, to: roles.mods, text: \"{{ member.id }} joined\"}}\n    - id: welcome\n")
    roster = [{"id": "u1"}, {"id": "m1"}]
    events = [ev("j-u1", "member.joined", "2026-12-01T10:00:00+08:00", "u1"),
              ev("p-m1", "message.posted", "2026-12-02T10:00:00+08:00", "m1")]
    out, summary = simulate(text, roster, events, "2026-12-01", 3, tmp_path)
    assert sorted(d["member"] for d in out) == ["m1", "u1"]
    assert not any("after page" in key for key in summary["goals"])
    assert summary["goals"]["onboard/first_post per run"] == {"reached": 0, "of": 1}


ROBOT_PAGE = """
cmtyflow: 1
name: page
timezone: Asia/Shanghai
channels:
  mods: {adapter: wecom, webhook_url: "${env:WECOM_HOOK}"}
  hook: {adapter: slack, webhook_url: "${env:SLACK_HOOK}"}
  bot: {adapter: slack, bot_token: "${env:SLACK_TOKEN}"}
  dm: {adapter: console}
roles: {moderators: [m1, m2, m3]}
triggers:
  - {id: joined, event: member.joined, flow: f}
flows:
  f:
    - {id: robot, send: {channel: mods, to: roles.moderators, text: "{{ member.id }} joined", urgent: true}}
    - {id: listed, send: {channel: hook, to: [m1, m2], text: "{{ member.id }} joined"}}
    - {id: one, send: {channel: mods, to: [m1], text: "{{ member.id }} joined"}}
    - {id: each-bot, send: {channel: bot, to: roles.moderators, text: "{{ member.id }} joined"}}
    - {id: each-dm, send: {channel: dm, to: roles.moderators, text: "{{ member.id }} joined"}}
"""


def test_a_role_or_list_through_a_single_destination_channel_is_one_post(simulate, tmp_path, monkeypatch):
    """A group robot, or slack/discord without a bot token, posts every message in its
    one group: a page to three moderators was the same post three times there."""
    for name in ("WECOM_HOOK", "SLACK_HOOK", "SLACK_TOKEN"):
        monkeypatch.setenv(name, "https://example.org/x" if name.endswith("HOOK") else "xoxb-1")
    roster = [{"id": "u1"}, {"id": "m1", "slack": "U1"}, {"id": "m2", "slack": "U2"}, {"id": "m3", "slack": "U3"}]
    out, _ = simulate(ROBOT_PAGE, roster, [ev("j", "member.joined", "2026-12-01T10:00:00+08:00", "u1")], "2026-12-01", 1, tmp_path)
    got = sorted((d["step"], d["member"], d["to"]) for d in out)
    assert got == [
        ("each-bot", "m1", "roles.moderators"), ("each-bot", "m2", "roles.moderators"), ("each-bot", "m3", "roles.moderators"),
        ("each-dm", "m1", "roles.moderators"), ("each-dm", "m2", "roles.moderators"), ("each-dm", "m3", "roles.moderators"),
        ("listed", None, "channel"),
        ("one", "m1", "m1"),
        ("robot", None, "roles.moderators"),
    ]


def test_a_goals_days_are_the_members_calendar_days(simulate, tmp_path):
    """SPEC 2: days are calendar days in the run's timezone, a member's own. Seven days
    from 12:00 on 5 March in New York end at 12:00 EDT on 12 March (DST began on the 8th);
    they were read in the playbook's Shanghai time, which gave the New Yorker an hour more."""
    roster = [{"id": "ny", "timezone": "America/New_York"}]
    events = [ev("j", "member.joined", "2026-03-05T12:00:00-05:00", "ny"),
              ev("p", "message.posted", "2026-03-12T12:30:00-04:00", "ny")]
    _, summary = simulate(GOALS, roster, events, "2026-03-05", 10, tmp_path)
    assert summary["goals"]["onboard/first_post per run"] == {"reached": 0, "of": 1}
    events[1] = ev("p", "message.posted", "2026-03-12T11:30:00-04:00", "ny")
    _, summary = simulate(GOALS, roster, events, "2026-03-05", 10, tmp_path / "again")
    assert summary["goals"]["onboard/first_post per run"] == {"reached": 1, "of": 1}


TEMPLATE_ERROR = """
cmtyflow: 1
name: greet
timezone: Asia/Shanghai
locale: en
channels:
  dm: {adapter: console}
triggers:
  - id: daily
    at: 2026-12-01T10:00
    for_each: audience
    flow: f
flows:
  f:
    - id: hello
      send: {channel: dm, template: hello}
    - id: after
      send: {channel: dm, text: "after"}
"""


def test_award_on_points_a_set_step_made_text_fails_the_run_with_a_reason(simulate, tmp_path):
    """`set: {points: "'abc'"}` then `award`: the run failed with "internal error:
    TypeError: can only concatenate str"; the reason is said in the playbook's terms."""
    text = TEMPLATE_ERROR.replace(
        "    - id: hello\n      send: {channel: dm, template: hello}\n",
        "    - set: {points: \"'abc'\"}\n    - award: {points: 10}\n",
    )
    out, summary = simulate(text, [{"id": "a", "name": "Ana"}], [], "2026-12-01", 1, tmp_path)
    assert out == []
    (warning,) = [w for w in summary["warnings"] if "failed" in w]
    # At the set step itself, which wrote it (it failed at the award before).
    assert warning.endswith("failed at f[0]: state.points must be a number, not 'abc'")


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ("set: {last_checkin: \"'notadate'\"}", "state.last_checkin must be a date (YYYY-MM-DD) or none, not 'notadate'"),
        ("set: {streak: \"'abc'\"}", "state.streak must be a whole number of 0 or more, not 'abc'"),
        ("set: {checkins: \"none\"}", "state.checkins must be a whole number of 0 or more, not None"),
        ("set: {badges: 5}", "state.badges must be a list of texts, not 5"),
        ("repeat: {times: \"now\", steps: [{send: {channel: dm, text: x}}]}", "repeat times is datetime.datetime("),
        ("repeat: {times: \"vars.get('n', 1.5)\", steps: [{send: {channel: dm, text: x}}]}", "repeat times is 1.5, not a whole number of 0 or more"),
    ],
)
def test_a_built_in_state_key_or_a_repeat_count_of_the_wrong_kind_fails_with_a_reason(simulate, tmp_path, step, reason):
    """They failed later as "internal error: TypeError" (or ValueError), and `set: {badges: 5}`
    failed every later run of the member at its first step."""
    text = TEMPLATE_ERROR.replace(
        "    - id: hello\n      send: {channel: dm, template: hello}\n", f"    - {step}\n    - checkin: {{}}\n",
    )
    out, summary = simulate(text, [{"id": "a", "name": "Ana"}], [], "2026-12-01", 1, tmp_path)
    (warning,) = [w for w in summary["warnings"] if "failed" in w]
    assert "internal error" not in warning and reason in warning, warning


def test_template_error_fails_only_that_members_run(simulate, tmp_path):
    roster = [
        {"id": "a", "name": "Ana", "city": "Hangzhou"},
        {"id": "b", "name": "Bo"},  # no city: strict undefined in the template
        {"id": "c", "name": "Cy", "city": "Berlin"},
    ]
    out, summary = simulate(
        TEMPLATE_ERROR, roster, [], "2026-12-01", 1, tmp_path,
        templates={"hello.txt.j2": "Hi {{ member.name }} from {{ member.city }}"},
    )
    assert [(d["at"], d["member"], d["step"], d["text"]) for d in out] == [
        ("2026-12-01T10:00:00+08:00", "a", "hello", "Hi Ana from Hangzhou"),
        ("2026-12-01T10:00:00+08:00", "a", "after", "after"),
        ("2026-12-01T10:00:00+08:00", "c", "hello", "Hi Cy from Berlin"),
        ("2026-12-01T10:00:00+08:00", "c", "after", "after"),
    ]
    assert summary["runs"]["failed"] == 1
    assert summary["runs"]["done"] == 2
    assert len(summary["warnings"]) == 1
    warning = summary["warnings"][0]
    assert warning.startswith("run greet/daily@2026-12-01T10:00:00+08:00:b failed at hello: ")
    assert "city" in warning


def test_member_data_is_never_evaluated_as_template(simulate, tmp_path):
    roster = [{"id": "a", "name": "{{ 7*7 }}", "city": "{% for x in range(9) %}x{% endfor %}"}]
    out, _ = simulate(
        TEMPLATE_ERROR, roster, [], "2026-12-01", 1, tmp_path,
        templates={"hello.txt.j2": "Hi {{ member.name }} from {{ member.city }}"},
    )
    assert out[0]["text"] == "Hi {{ 7*7 }} from {% for x in range(9) %}x{% endfor %}"


REPEAT = """
cmtyflow: 1
name: loops
timezone: Asia/Shanghai
channels:
  dm: {{adapter: console}}
policies:
  max_loop: 5
triggers:
  - id: t
    event: ping
    flow: f
flows:
  f:
    - set: {{n: "0"}}
    - repeat:
        {repeat}
        steps:
          - set: {{n: "state.n + 1"}}
          - id: tick
            send: {{channel: dm, text: "tick {{{{ state.n }}}}"}}
    - id: done
      send: {{channel: dm, text: "done at {{{{ state.n }}}}"}}
"""


def test_repeat_times(simulate, tmp_path):
    out, summary = simulate(
        REPEAT.format(repeat="times: 3"), [{"id": "m"}], [ev("e", "ping", "2026-12-01T10:00:00+08:00")],
        "2026-12-01", 1, tmp_path,
    )
    assert [(d["at"], d["step"], d["text"]) for d in out] == [
        ("2026-12-01T10:00:00+08:00", "tick", "tick 1"),
        ("2026-12-01T10:00:00+08:00", "tick", "tick 2"),
        ("2026-12-01T10:00:00+08:00", "tick", "tick 3"),
        ("2026-12-01T10:00:00+08:00", "done", "done at 3"),
    ]
    assert summary["runs"]["done"] == 1


def test_repeat_while_ends_when_false(simulate, tmp_path):
    out, _ = simulate(
        REPEAT.format(repeat='while: "state.n < 2"'), [{"id": "m"}], [ev("e", "ping", "2026-12-01T10:00:00+08:00")],
        "2026-12-01", 1, tmp_path,
    )
    assert [d["text"] for d in out] == ["tick 1", "tick 2", "done at 2"]


def test_repeat_while_is_bounded_by_max_loop(simulate, tmp_path):
    out, summary = simulate(
        REPEAT.format(repeat='while: "true"'), [{"id": "m"}], [ev("e", "ping", "2026-12-01T10:00:00+08:00")],
        "2026-12-01", 1, tmp_path,
    )
    # Five iterations run; the sixth would pass max_loop: the run fails there.
    assert [d["text"] for d in out] == ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5"]
    assert summary["runs"]["failed"] == 1
    assert summary["warnings"] == [
        "run loops/t:e failed at f[1]: repeat ran past policies.max_loop (5) iterations"
    ]


def test_repeat_times_over_max_loop_fails(simulate, tmp_path):
    out, summary = simulate(
        REPEAT.format(repeat="times: \"3 + 3\""), [{"id": "m"}], [ev("e", "ping", "2026-12-01T10:00:00+08:00")],
        "2026-12-01", 1, tmp_path,
    )
    assert len(out) == 5
    assert summary["runs"]["failed"] == 1


def test_repeat_with_a_wait_inside_resumes_the_loop(simulate, tmp_path):
    pb = REPEAT.format(repeat="times: 3").replace(
        "          - id: tick", "          - wait: 1d\n          - id: tick"
    )
    out, summary = simulate(pb, [{"id": "m"}], [ev("e", "ping", "2026-12-01T10:00:00+08:00")], "2026-12-01", 5, tmp_path)
    assert [(d["at"], d["text"]) for d in out] == [
        ("2026-12-02T10:00:00+08:00", "tick 1"),
        ("2026-12-03T10:00:00+08:00", "tick 2"),
        ("2026-12-04T10:00:00+08:00", "tick 3"),
        ("2026-12-04T10:00:00+08:00", "done at 3"),
    ]
    assert summary["runs"]["done"] == 1


CHOOSE = """
cmtyflow: 1
name: pick
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - id: t
    event: ping
    flow: f
flows:
  f:
    - choose:
        - if: "'vip' in member.tags"
          steps:
            - id: vip
              send: {channel: dm, text: "vip"}
        - if: "event.data.get('score', 0) > 10"
          steps:
            - id: high
              send: {channel: dm, text: "high"}
        - else:
            - id: other
              send: {channel: dm, text: "other"}
    - id: always
      send: {channel: dm, text: "always"}
    - id: skipped
      if: "false"
      send: {channel: dm, text: "never"}
"""


def test_choose_runs_the_first_matching_branch_else_the_else(simulate, tmp_path):
    roster = [{"id": "v", "tags": ["vip"]}, {"id": "h"}, {"id": "o"}]
    events = [
        ev("e1", "ping", "2026-12-01T10:00:00+08:00", "v", {"score": 20}),
        ev("e2", "ping", "2026-12-01T11:00:00+08:00", "h", {"score": 20}),
        ev("e3", "ping", "2026-12-01T12:00:00+08:00", "o", {"score": 5}),
    ]
    out, _ = simulate(CHOOSE, roster, events, "2026-12-01", 1, tmp_path)
    assert trio(out) == [
        ("2026-12-01T10:00:00+08:00", "v", "vip"),
        ("2026-12-01T10:00:00+08:00", "v", "always"),
        ("2026-12-01T11:00:00+08:00", "h", "high"),
        ("2026-12-01T11:00:00+08:00", "h", "always"),
        ("2026-12-01T12:00:00+08:00", "o", "other"),
        ("2026-12-01T12:00:00+08:00", "o", "always"),
    ]


SET = """
cmtyflow: 1
name: counter
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - id: t
    event: ping
    flow: f
flows:
  f:
    - set:
        visits: "state.get('visits', 0) + 1"
        first_seen: "state.get('first_seen', today)"
    - award: {points: 5, badge: regular}
    - id: report
      send:
        channel: dm
        text: >-
          visits={{ state.visits }} first={{ state.first_seen }} missing={{ state.get('nope', 'dflt') }}
          points={{ state.points }} badges={{ state.badges | join(',') }}
"""


def test_set_and_state_get_persist_per_member(simulate, tmp_path):
    events = [
        ev("e1", "ping", "2026-12-01T10:00:00+08:00", "a"),
        ev("e2", "ping", "2026-12-02T10:00:00+08:00", "a"),
        ev("e3", "ping", "2026-12-02T11:00:00+08:00", "b"),
        ev("e4", "ping", "2026-12-03T10:00:00+08:00", "a"),
    ]
    out, _ = simulate(SET, [{"id": "a"}, {"id": "b"}], events, "2026-12-01", 3, tmp_path)
    assert [(d["member"], d["text"]) for d in out] == [
        ("a", "visits=1 first=2026-12-01 missing=dflt points=5 badges=regular"),
        ("a", "visits=2 first=2026-12-01 missing=dflt points=10 badges=regular"),
        ("b", "visits=1 first=2026-12-02 missing=dflt points=5 badges=regular"),
        ("a", "visits=3 first=2026-12-01 missing=dflt points=15 badges=regular"),
    ]


ENROLL = """
cmtyflow: 1
name: enroll
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - id: join
    event: challenge.join
    flow: join
  - id: quit
    event: challenge.quit
    flow: quit
flows:
  join:
    - tag: [challenge]
    - id: joined
      send: {channel: dm, text: "tags={{ member.tags | join(',') }}"}
  quit:
    - untag: [challenge]
"""

DAILY = """
cmtyflow: 1
name: daily
timezone: Asia/Shanghai
audience: {where: "'challenge' in member.tags"}
channels:
  dm: {adapter: console}
triggers:
  - id: reminder
    cron: "0 20 * * *"
    for_each: audience
    flow: remind
  - id: poke
    event: poke
    flow: remind
flows:
  remind:
    - id: remind
      send: {channel: dm, text: "go"}
"""


def test_tag_and_untag_change_audience_membership(simulate, tmp_path):
    roster = [{"id": "a", "tags": ["reader"]}, {"id": "b"}]
    events = [
        ev("p0", "poke", "2026-12-01T09:00:00+08:00", "a"),  # not in the audience yet
        ev("j1", "challenge.join", "2026-12-01T10:00:00+08:00", "a"),
        ev("p1", "poke", "2026-12-01T11:00:00+08:00", "a"),
        ev("q1", "challenge.quit", "2026-12-02T12:00:00+08:00", "a"),
        ev("p2", "poke", "2026-12-02T13:00:00+08:00", "a"),  # out again
        ev("j2", "challenge.join", "2026-12-02T14:00:00+08:00", "b"),
    ]
    out, summary = simulate([ENROLL, DAILY], roster, events, "2026-12-01", 3, tmp_path)
    assert [(d["at"], d["playbook"], d["member"], d["step"]) for d in out] == [
        ("2026-12-01T10:00:00+08:00", "enroll", "a", "joined"),
        ("2026-12-01T11:00:00+08:00", "daily", "a", "remind"),
        ("2026-12-01T20:00:00+08:00", "daily", "a", "remind"),
        ("2026-12-02T14:00:00+08:00", "enroll", "b", "joined"),
        ("2026-12-02T20:00:00+08:00", "daily", "b", "remind"),
        ("2026-12-03T20:00:00+08:00", "daily", "b", "remind"),
    ]
    assert out[0]["text"] == "tags=reader,challenge"
    # p0 and p2, plus one member outside the audience at each of the three firings
    assert summary["skipped"]["outside_audience"] == 5


def _breaking_send(monkeypatch: pytest.MonkeyPatch, member: str, exc: Exception) -> None:
    """The send step raises ``exc`` for ``member``'s run: a fault the playbook cannot make."""
    from cmtyflow.engine import interp

    send, advances = interp._HANDLERS["send"]  # noqa: SLF001

    def breaking(self, prog, run, ins, ctx, occ):  # type: ignore[no-untyped-def]
        if run.member == member and ins.label == "hello":
            raise exc
        return send(self, prog, run, ins, ctx, occ)

    monkeypatch.setitem(interp._HANDLERS, "send", (breaking, advances))  # noqa: SLF001


def test_a_fault_in_a_step_fails_only_that_members_run(simulate, tmp_path, monkeypatch):
    _breaking_send(monkeypatch, "b", TypeError("unsupported operand type(s) for +: 'int' and 'str'"))
    roster = [{"id": "a", "name": "Ana"}, {"id": "b", "name": "Bo"}, {"id": "c", "name": "Cy"}]
    out, summary = simulate(
        TEMPLATE_ERROR, roster, [], "2026-12-01", 1, tmp_path, templates={"hello.txt.j2": "Hi {{ member.name }}"},
    )
    assert [(d["member"], d["step"]) for d in out] == [("a", "hello"), ("a", "after"), ("c", "hello"), ("c", "after")]
    assert (summary["runs"]["failed"], summary["runs"]["done"]) == (1, 2)
    assert summary["warnings"] == [
        "run greet/daily@2026-12-01T10:00:00+08:00:b failed at hello: "
        "internal error: TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    ]


def test_a_firing_that_breaks_outside_any_run_is_set_aside_and_the_next_one_goes(simulate, tmp_path, monkeypatch):
    # The nightly reminder's first firing breaks on a fault of cmtyflow's own while its
    # audience is read; the dry run says so and the next night's firing sends.
    from cmtyflow.engine.core import Engine

    check = Engine.in_audience

    def in_audience(self, prog, member, now):  # type: ignore[no-untyped-def]
        if now.day == 1:
            raise KeyError("tags")
        return check(self, prog, member, now)

    monkeypatch.setattr(Engine, "in_audience", in_audience)
    out, summary = simulate(DAILY, [{"id": "a", "tags": ["challenge"]}], [], "2026-12-01", 2, tmp_path)
    assert [(d["at"], d["member"]) for d in out] == [("2026-12-02T20:00:00+08:00", "a")]
    assert summary["warnings"] == [
        "set aside: firing daily/reminder due 2026-12-01T20:00:00+08:00: internal error: KeyError: 'tags'"
    ]


def test_a_store_error_in_a_step_is_not_taken_for_a_fault(simulate, tmp_path, monkeypatch):
    _breaking_send(monkeypatch, "b", sqlite3.OperationalError("database is locked"))
    roster = [{"id": "a", "name": "Ana"}, {"id": "b", "name": "Bo"}]
    with pytest.raises(sqlite3.OperationalError):
        simulate(TEMPLATE_ERROR, roster, [], "2026-12-01", 1, tmp_path, templates={"hello.txt.j2": "Hi"})


def test_values_a_set_step_keeps_are_what_a_store_gives_back(simulate, tmp_path):
    """SPEC 5.5: the dry run kept Jinja's Markup (from `| e`), whose `+` escapes the other
    side, where the runner's SQLite gives back plain text; and `| reverse` kept the text
    of an iterator's address, different on every run."""
    text = """
cmtyflow: 1
name: keep
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - {id: p, event: message.posted, flow: f}
flows:
  f:
    - set: {x: "event.data.text | e", order: "[1, 2, 3] | reverse"}
    - wait: 1m
    - id: said
      send: {channel: dm, text: "{{ state.x + '!' + event.data.text }} {{ state.order }}"}
"""
    events = [ev("p1", "message.posted", "2026-12-01T10:00:00+08:00", "a", {"text": "Tom & <Jerry>"})]
    out, _ = simulate(text, [{"id": "a", "name": "Ana"}], events, "2026-12-01", 1, tmp_path)
    assert [d["text"] for d in out] == ["Tom &amp; &lt;Jerry&gt;!Tom & <Jerry> [3, 2, 1]"]


@pytest.mark.parametrize(
    ("emit", "expected"),
    [
        # `member: member` emitted for the member's id; it became the id "MemberView('a')"
        ('{event: relay.sent, member: "member", data: {who: "member.name"}}', "relayed a Ana"),
        # member and state as data: their data, not the text of the object
        ('{event: relay.sent, data: {who: "member"}}', "relayed a {'id': 'a', 'name': 'Ana'}"),
        ('{event: relay.sent, member: "member.tags"}', "failed at f[0]: emit member must be a member's id, not []"),
        ('{event: relay.sent, data: {f: "lipsum"}}', "failed at f[0]: a function or object (function) is not a value to keep"),
    ],
)
def test_what_an_emit_carries_is_a_value_or_the_run_fails_with_a_reason(simulate, tmp_path, emit, expected):
    text = f"""
cmtyflow: 1
name: relay
timezone: Asia/Shanghai
channels:
  dm: {{adapter: console}}
triggers:
  - {{id: p, event: ping, flow: f}}
  - {{id: r, event: relay.sent, flow: g}}
flows:
  f:
    - emit: {emit}
  g:
    - send: {{channel: dm, to: [a], text: "relayed {{{{ event.member }}}} {{{{ event.data.who | default('') }}}}"}}
"""
    out, summary = simulate(text, [{"id": "a", "name": "Ana"}], [ev("e1", "ping", "2026-12-01T10:00:00+08:00", "a")],
                            "2026-12-01", 1, tmp_path)
    said = [d["text"] for d in out] + summary["warnings"]
    assert any(expected in line for line in said), said


def test_nested_repeats_past_the_flows_step_budget_say_so(simulate, tmp_path):
    """Each repeat stays within max_loop (4 rounds of 4), but the flow ran 16 rounds of
    its inner steps without waiting; it failed "more than 5 loop iterations", which no
    repeat did."""
    text = REPEAT.format(repeat="times: 4").replace(
        "          - set: {n: \"state.n + 1\"}\n",
        "          - repeat:\n              times: 4\n              steps:\n                - set: {n: \"state.n + 1\"}\n",
    )
    out, summary = simulate(text, [{"id": "m"}], [ev("e", "ping", "2026-12-01T10:00:00+08:00")], "2026-12-01", 1, tmp_path)
    assert summary["runs"]["failed"] == 1 and len(out) < 4
    (warning,) = summary["warnings"]
    assert "more than 5 loop iterations" not in warning
    assert "steps without waiting (about policies.max_loop, 5, times the flow's length" in warning
    assert "the steps of nested repeats count each round" in warning
