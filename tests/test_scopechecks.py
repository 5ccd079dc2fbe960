"""Names out of scope where a step reads them (SPEC 2): validate reports what would
fail the run every time, and nothing that could hold."""

from __future__ import annotations

import textwrap

import pytest

from cmtyflow.loader import load_text


def problems(text: str, path=None) -> list[str]:
    result = load_text(textwrap.dedent(text).lstrip("\n"), path) if path else load_text(textwrap.dedent(text).lstrip("\n"))
    return [f"{p.line}:{p.col}: {p.message}" for p in result.problems]


HEAD = """
cmtyflow: 1
name: pb
timezone: Asia/Shanghai
channels: {out: {adapter: console}}
"""


def playbook(triggers: str, flow: str) -> str:
    return HEAD + "triggers:\n" + textwrap.indent(textwrap.dedent(triggers).strip("\n"), "  ") + "\nflows:\n  f:\n" + textwrap.indent(
        textwrap.dedent(flow).strip("\n"), "    "
    ) + "\n"


def test_wait_before_any_event_wait_is_an_error():
    text = playbook(
        "- {id: joined, event: member.joined, flow: f}",
        """
        - wait: 1d
        - send: {text: "{{ wait.timed_out }}"}
        - wait: {event: message.posted, timeout: 1d}
        - send: {text: "{{ wait.timed_out }}"}
        """,
    )
    found = problems(text)
    assert len(found) == 1
    assert found[0].startswith("10:20: 'wait' is undefined here: no event wait of flow 'f' comes before this step")


def test_checkin_before_any_checkin_step_is_an_error_and_after_one_is_not():
    text = playbook(
        "- {id: posted, event: message.posted, flow: f}",
        """
        - if: "not checkin.duplicate"
          send: {text: "early"}
        - checkin: {}
        - if: "not checkin.duplicate"
          send: {text: "thanks"}
        """,
    )
    assert problems(text) == [
        "9:11: 'checkin' is undefined here: no checkin step of flow 'f' comes before this step"
    ]


def test_a_later_round_of_a_repeat_and_an_earlier_branch_count_as_before():
    """Read generously: a step that could see the name is not reported."""
    text = playbook(
        "- {id: joined, event: member.joined, flow: f}",
        """
        - repeat:
            times: 3
            steps:
              - if: "wait is defined and wait.timed_out"
                send: {text: "still there?"}
              - send: {text: "round {{ wait.timed_out if wait is defined else '' }}"}
              - wait: {event: message.posted, timeout: 1d}
        - choose:
            - if: "member.name"
              steps: [{checkin: {}}]
            - else: [{send: {text: "{{ checkin.duplicate }}"}}]
        """,
    )
    assert problems(text) == []


def test_a_test_of_the_name_guards_it():
    text = playbook(
        "- {id: joined, event: member.joined, flow: f}",
        """
        - send: {text: "{% if wait is defined %}{{ wait.timed_out }}{% endif %}"}
        - if: "checkin is not defined"
          stop: no check-in yet
        """,
    )
    assert problems(text) == []


def test_audience_in_a_flow_run_per_member_is_an_error():
    text = playbook(
        "- {id: nightly, cron: '0 20 * * *', for_each: audience, flow: f}",
        """
        - send: {text: "{{ audience | length }} of you"}
        """,
    )
    found = problems(text)
    assert len(found) == 1
    assert found[0].startswith("9:20: 'audience' is undefined here: it is set in campaign runs only, and flow 'f' runs")
    assert "(trigger 'nightly' has for_each: audience)" in found[0]


def test_member_keys_in_a_campaign_flow_are_an_error_unless_guarded():
    text = playbook(
        "- {id: nightly, cron: '0 20 * * *', flow: f}",
        """
        - send: {text: "{{ member.name }}"}
        - send: {text: "{{ member.name if member else 'all' }}"}
        - set: {who: "member.id"}
        """,
    )
    found = problems(text)
    assert [f.split(" (")[0].split(": ", 1) for f in found] == [
        ["9:20", "'member' is none here: flow 'f' runs as a campaign, for no member"],
        ["11:18", "'member' is none here: flow 'f' runs as a campaign, for no member"],
    ]


@pytest.mark.parametrize(
    "triggers",
    [
        # an event without a member starts a campaign run; with one, a member run
        "- {id: e, event: member.joined, flow: f}",
        # launch with or without --member
        "- {id: m, manual: {}, flow: f}",
        # one trigger of each kind
        "- {id: a, cron: '0 20 * * *', flow: f}\n- {id: b, cron: '0 8 * * *', for_each: audience, flow: f}",
    ],
)
def test_flows_that_may_run_either_way_are_not_judged(triggers):
    text = playbook(
        triggers,
        """
        - send: {text: "{{ member.name }} {{ audience | length }}"}
        """,
    )
    assert problems(text) == []


def test_a_template_file_is_reported_in_the_file_for_the_step_that_uses_it(write, tmp_path):
    write("templates/nudge.en.txt.j2", "Hi {{ member.name }}\n{{ wait.event.data.text }}\n")
    text = playbook(
        "- {id: joined, event: member.joined, flow: f}",
        """
        - id: nudge
          send: {template: nudge}
        - wait: {event: message.posted, timeout: 1d}
        - id: again
          send: {template: nudge}
        """,
    )
    found = problems(text, tmp_path / "pb.yaml")
    assert len(found) == 1
    assert found[0].startswith("2:1: 'wait' is undefined here")
    assert found[0].endswith("(used by step 'nudge' in playbook pb.yaml)")


def test_the_audience_and_goal_filters_see_only_their_own_names():
    """The audience is read for a member before any run of theirs: ``state`` there
    passed validate, then failed every check at run time and reached nobody, without a
    word in the dry run. A goal's ``where`` sees member, event and vars."""
    text = HEAD + textwrap.dedent("""
        audience: {where: "state.points > 0 and 'x' in member.tags and today.day > 0"}
        goals:
          g: {event: a.b, within: 3d, where: "run.id and member.id and event.data and vars"}
        triggers:
          - {id: e, event: go.now, flow: f}
        flows:
          f:
            - {id: s, send: {text: "hi"}}
        """)
    assert problems(text) == [
        "6:19: 'state' is undefined in the audience's where (it is read for a member before any run of theirs): "
        "it sees member, vars, roles, now and today only",
        "8:38: 'run' is undefined in the where of goal 'g': it sees member, event and vars only",
    ]
