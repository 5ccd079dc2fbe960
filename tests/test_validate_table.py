"""``cmtyflow validate`` on invalid playbooks: each case asserts every problem with its
exact ``line:col`` and message (STYLE: tests assert exact error text)."""

from __future__ import annotations

import time

import pytest

from cmtyflow.loader import load


def problems_of(path: str) -> list[str]:
    result = load([path])
    return [f"{p.path}:{p.line}:{p.col}: {p.severity}: {p.message}" for p in result.problems]


CASES = [
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        polices: {}
        flows: {}
        """,
        {},
        [
            "pb.yaml:3:1: error: unknown key 'polices' in playbook (did you mean 'policies'?)",
        ],
        id="unknown_key",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send: {text: hi, chanel: group}
        """,
        {},
        [
            "pb.yaml:9:24: error: unknown key 'chanel' in send (did you mean 'channel'?)",
        ],
        id="unknown_key_in_send",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        flows:
          - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:3:1: error: 'flows' should be a mapping of flow name to steps, not a list",
        ],
        id="flows_not_a_mapping",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        policies:
          max_per_member_per_day: abc
        """,
        {},
        [
            "pb.yaml:4:27: error: 'max_per_member_per_day' should be a whole number, not 'abc'",
        ],
        id="not_a_number",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - id: nightly
            cron: "0 24 * * *"
            flow: remind
        flows:
          remind:
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:7:11: error: cron '0 24 * * *': '24' is not a valid hour (0-23)",
        ],
        id="bad_cron_value",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: nightly, cron: "0 20 * *", flow: remind}
        flows:
          remind:
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:6:25: error: cron '0 20 * *' has 4 fields; write 5 (minute hour day-of-month month day-of-week), or 6 with seconds last",
        ],
        id="bad_cron_fields",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        timezone: Asia/Shangai
        flows: {}
        """,
        {},
        [
            "pb.yaml:3:11: error: unknown timezone 'Asia/Shangai' (did you mean 'Asia/Shanghai'?); use an IANA name such as Asia/Shanghai",
        ],
        id="bad_timezone",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        timezone: asia/shanghai
        flows: {}
        """,
        {},
        [
            "pb.yaml:3:11: error: unknown timezone 'asia/shanghai' (did you mean 'Asia/Shanghai'?); use an IANA name such as Asia/Shanghai",
        ],
        id="timezone_in_lower_case",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - id: nightly
            cron: "0 20 * * *"
            timezone: Europe/Pariss
            flow: remind
        flows:
          remind:
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:8:15: error: unknown timezone 'Europe/Pariss' (did you mean 'Europe/Paris'?); use an IANA name such as Asia/Shanghai",
        ],
        id="bad_trigger_timezone",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - wait: 3x
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:9:13: error: '3x' is not a duration; write a number and a unit (s, m, h, d, w), e.g. 45s, 15m, 2h, 3d, 1w or 1d12h",
        ],
        id="bad_duration",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        window: {start: 9999-12-31, days: 2}
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - wait: 3650000d
            - wait: {event: message.posted, timeout: 99999999999w}
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:3:1: error: a window lies between the years 1971 and 9000",
            "pb.yaml:10:13: error: '3650000d' is longer than 3660 days (about ten years), the longest a duration may be",
            "pb.yaml:11:46: error: '99999999999w' is longer than 3660 days (about ten years), the longest a duration may be",
        ],
        id="durations_and_window_past_the_calendar",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        policies: {max_loop: 100000000}
        flows: {}
        """,
        {},
        ["pb.yaml:3:22: error: 'max_loop' should be at most 10000, not the number 100000000"],
        id="max_loop_bounded",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        goals:
          posted: {event: "message.posted ", within: 7d}
        triggers:
          - {id: a, event: member.joind, flow: onboard}
          - {id: b, event: "member.*", flow: onboard}
          - {id: c, event: custom.thing, flow: onboard}
          - {id: d, event: cmtyflow.launch, flow: onboard}
        flows:
          onboard:
            - wait: {event: "a..b", timeout: 1d}
            - emit: {event: "打卡.完成"}
            - emit: {event: cmtyflow.launch, data: {playbook: "'demo'", trigger: "'m'"}}
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:6:19: error: event type 'message.posted ' has a space; write a dotted name such as message.posted",
            "pb.yaml:8:20: warning: event type 'member.joind' is not a standard one (did you mean 'member.joined'?)",
            "pb.yaml:9:20: error: event type 'member.*': types are matched exactly, '*' is not a wildcard; name one type per trigger",
            "pb.yaml:11:20: error: event type 'cmtyflow.launch': types starting with 'cmtyflow.' are cmtyflow's own "
            "(a launch travels as one); name a type of your own, such as club.restart",
            "pb.yaml:14:21: error: event type 'a..b' has an empty part between dots; write a dotted name such as message.posted",
            "pb.yaml:16:21: error: event type 'cmtyflow.launch': types starting with 'cmtyflow.' are cmtyflow's own "
            "(a launch travels as one); name a type of your own, such as club.restart",
        ],
        id="event_types",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - id: joined
            event: member.joined
            flow: onbaord
        flows:
          onboard:
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:8:11: error: trigger starts flow 'onbaord', which does not exist (did you mean 'onboard'?)",
            "pb.yaml:10:3: warning: flow 'onboard' is never started: no trigger names it",
        ],
        id="missing_flow",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - id: joined
            event: member.joined
        flows: {}
        """,
        {},
        [
            "pb.yaml:6:5: error: missing required key 'flow' in trigger",
        ],
        id="missing_required_key",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
          log: {adapter: file, path: out.jsonl}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send: {channel: grup, text: hi}
        """,
        {},
        [
            "pb.yaml:10:23: error: unknown channel 'grup' (did you mean 'group'?); channels are group, log",
        ],
        id="missing_channel",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
          log: {adapter: file, path: out.jsonl}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send:
                text: hi
        """,
        {},
        [
            "pb.yaml:10:7: error: send has no channel; name one of group, log (a send may leave it out only when there is exactly one channel)",
        ],
        id="send_without_channel",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: consol}
        flows: {}
        """,
        {},
        [
            "pb.yaml:4:20: error: unknown adapter 'consol' (did you mean 'console'?); installed adapters are console, dingtalk, discord, email, feishu, file, slack, telegram, webhook, wecom",
        ],
        id="unknown_adapter",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group:
            adapter: console
            prefx: ">> "
        flows: {}
        """,
        {},
        [
            "pb.yaml:6:5: error: unknown setting 'prefx' for adapter 'console' (did you mean 'prefix'?); its settings are prefix, stream",
        ],
        id="unknown_adapter_setting",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          log:
            adapter: file
            fsync: false
        flows: {}
        """,
        {},
        [
            "pb.yaml:4:3: error: channel 'log' needs setting 'path' (adapter 'file')",
        ],
        id="missing_adapter_setting",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - id: hello
              send: {text: hi}
            - id: hello
              send: {text: again}
        """,
        {},
        [
            "pb.yaml:11:11: error: duplicate step id 'hello'; step ids are unique in a playbook (first at line 9)",
        ],
        id="duplicate_step_id",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send: {text: hi}
              wait: 1d
        """,
        {},
        [
            "pb.yaml:10:7: error: step has two kinds, 'send' and 'wait'; a step holds exactly one",
        ],
        id="step_with_two_kinds",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - id: hello
              sned: {text: hi}
        """,
        {},
        [
            "pb.yaml:10:7: error: step has no kind; expected one of send, wait, set, tag, untag, award, checkin, choose, repeat, emit, stop (did you mean 'send'?)",
        ],
        id="step_without_kind",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - id: joined
            evnt: member.joined
            flow: onboard
        flows:
          onboard:
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:7:5: error: trigger has no kind; expected one of event, cron, at, manual (did you mean 'event'?)",
        ],
        id="trigger_without_kind",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - if: "state.points >"
              send: {text: hi}
        """,
        {},
        [
            "pb.yaml:9:11: error: expression syntax error: unexpected end of expression",
        ],
        id="expression_syntax_error",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - id: joined
            event: member.joined
            where: "'vip' in membr.tags"
            flow: onboard
        flows:
          onboard:
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:8:12: error: unknown name 'membr' (did you mean 'member'?); names in scope are audience, checkin, event, member, now, roles, run, state, today, vars, wait",
        ],
        id="undefined_name_in_expression",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send:
                text: |
                  Welcome!
                  We are glad you are here.
                  See you soon, {{ usr.name }}
        """,
        {},
        [
            "pb.yaml:13:11: error: unknown name 'usr'; names in scope are audience, checkin, event, member, now, roles, run, state, today, vars, wait",
        ],
        id="undefined_name_in_inline_template",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send:
                text: |
                  Welcome!
                    Hello {{ member.name }
        """,
        {},
        [
            "pb.yaml:12:13: error: template syntax error: unexpected '}'",
        ],
        id="template_syntax_error",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        locale: zh-CN
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send: {template: welcome}
        """,
        {},
        [
            "pb.yaml:10:24: error: template 'welcome' not found: looked for templates/welcome.zh-CN.*.j2 and templates/welcome.*.j2",
        ],
        id="missing_template_file",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send: {template: welcome}
        """,
        {
            "templates/welcome.txt.j2": "Hello {{ member.name }},\n  your streak: {{ state.streak }} {{ strak }}\n"
        },
        [
            "templates/welcome.txt.j2:2:3: error: unknown name 'strak' (did you mean 'state'?); names in scope are audience, checkin, event, member, now, roles, run, state, today, vars, wait",
        ],
        id="error_in_template_file",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        flows:
          onboard: [
            {send: {text: hi}}
        """,
        {},
        [
            "pb.yaml:6:1: error: YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence at line 4)",
        ],
        id="yaml_syntax_error",
    ),
    # What a Chinese input method types: a full-width colon after a key, a full-width
    # space (U+3000) as indentation. The second parses, with the key one level too high.
    pytest.param(
        """\
        cmtyflow: 1
        name：新人欢迎
        flows: {}
        """,
        {},
        [
            "pb.yaml:2:5: error: YAML syntax error: could not find expected ':' (while scanning a simple key at line 2); "
            "this line has a full-width colon '：': a key needs ':' and a space, as in 'name: value'",
        ],
        id="full_width_colon",
    ),
    # SPEC writes `at: 2026-12-24T20:00` unquoted; inside braces YAML takes its ':' for
    # a key's, and said only "found unexpected ':'".
    pytest.param(
        """\
        cmtyflow: 1
        name: q
        flows:
          f:
            - wait: {until: 09:00}
        """,
        {},
        [
            "pb.yaml:5:23: error: YAML syntax error: found unexpected ':'; inside { } a time needs quotes: "
            "write \"09:00\" (YAML reads its ':' as a key's)",
        ],
        id="unquoted_time_in_braces",
    ),
    # YAML reads `if: true` and `text: 2026` as a boolean and a number.
    pytest.param(
        """\
        cmtyflow: 1
        name: q
        channels: {dm: {adapter: console}}
        triggers:
          - {id: t, event: a.b, flow: f}
        flows:
          f:
            - if: true
              send: {text: 2026}
        """,
        {},
        [
            "pb.yaml:8:11: error: 'if' should be text, not true; write it in quotes: \"true\"",
            "pb.yaml:9:20: error: 'text' should be text, not the number 2026; write it in quotes: \"2026\"",
        ],
        id="boolean_or_number_where_text_goes",
    ),
    # Text pasted from a web page: U+2028 is a line break to YAML, not to an editor.
    pytest.param(
        """\
        cmtyflow: 1
        name: x # the club's \u2028 reading night
        flows: {}
        """,
        {},
        [
            "pb.yaml:2:22: error: YAML syntax error: did not find expected key; the file holds U+2028 (LINE SEPARATOR) "
            "here, which YAML reads as a line break (copied from a web page?): delete it",
        ],
        id="line_separator",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        flows:
        \u3000welcome:
            - send: {text: "　　欢迎！"}
        """,
        {},
        [
            "pb.yaml:4:1: error: '\u3000welcome' starts with a full-width space (U+3000); indent with ordinary spaces",
        ],
        id="full_width_space_indent",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: welcome}
        flows:
          welcome:
            - wait：3d
            - send: {channel: group, text: hi}
        """,
        {},
        [
            "pb.yaml:9:7: error: step should be a mapping such as 'send: {text: ...}', not 'wait：3d'; "
            "it has a full-width colon '：': write 'wait: 3d'",
        ],
        id="full_width_colon_in_a_step",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        flows: {}
        name: other
        """,
        {},
        [
            "pb.yaml:4:1: error: duplicate key 'name' (first at line 2)",
        ],
        id="duplicate_key",
    ),
    pytest.param(
        """\

        """,
        {},
        [
            "pb.yaml:1:1: error: empty file: a playbook needs at least cmtyflow, name and flows",
        ],
        id="empty_file",
    ),
    pytest.param(
        """\
        - cmtyflow: 1
        - name: demo
        """,
        {},
        [
            "pb.yaml:1:1: error: a playbook should be a mapping of keys such as cmtyflow, name and flows, not a list",
        ],
        id="not_a_mapping",
    ),
    pytest.param(
        """\
        cmtyflow: 2
        name: demo
        flows: {}
        """,
        {},
        [
            "pb.yaml:1:11: error: unsupported language version 2; this cmtyflow reads version 1",
        ],
        id="unsupported_version",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        roles:
          moderators: [u001]
        triggers:
          - {id: reported, event: report.filed, flow: alert}
        flows:
          alert:
            - send: {text: "report!", to: roles.moderator}
        """,
        {},
        [
            "pb.yaml:11:35: error: unknown role 'moderator' (did you mean 'moderators'?); roles are moderators",
        ],
        id="unknown_role",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - id: nightly
            cron: "0 20 * * *"
            timezone: member
            flow: remind
        flows:
          remind:
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:8:15: error: timezone: member needs for_each: audience",
        ],
        id="timezone_member_without_for_each",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - id: xmas
            at: 2026-12-32T20:00
            flow: party
        flows:
          party:
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:7:9: error: 'at' should be an ISO 8601 date and time such as 2026-12-24T20:00, not '2026-12-32T20:00'",
        ],
        id="at_bad_datetime",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send:
                text: hi
                template: welcome
        """,
        {"templates/welcome.txt.j2": "hi\n"},
        [
            "pb.yaml:9:7: error: a send needs exactly one of text, template or variants (it has text and template)",
        ],
        id="two_send_bodies",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: Reading Challenge
        flows: {}
        """,
        {},
        [
            "pb.yaml:2:7: error: 'name' should be lowercase letters, digits and dashes (such as welcome-dm), not 'Reading Challenge'",
        ],
        id="bad_playbook_name",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard, mode: restrat}
        flows:
          onboard:
            - send: {text: hi}
        """,
        {},
        [
            "pb.yaml:6:61: error: 'mode' should be one of single, restart, queued or parallel, not 'restrat' (did you mean 'restart'?)",
        ],
        id="bad_mode",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        vars: {community: 书友会, links: {rules: "https://example.com"}}
        channels:
          group: {adapter: console}
        roles:
          moderators: [u001]
        triggers:
          - {id: reported, event: report.filed, flow: alert, where: "event.member in roles.moderator"}
        flows:
          alert:
            - send: {text: "{{ vars.comunity }} {{ vars.get('x', '') }} {{ vars.links.rules }} {{ vars['nope'] }}"}
            - send: {template: page}
        """,
        {"templates/page.txt.j2": "ok {{ vars.community }}\n{{ roles['admins'] }}\n"},
        [
            "pb.yaml:9:61: error: unknown role 'moderator' (did you mean 'moderators'?); roles are moderators",
            "pb.yaml:12:20: error: unknown var 'comunity' (did you mean 'community'?); vars are community, links",
            "pb.yaml:12:20: error: unknown var 'nope'; vars are community, links",
            "templates/page.txt.j2:2:1: error: unknown role 'admins'; roles are moderators (in playbook pb.yaml)",
        ],
        id="unknown_var_and_role_keys",
    ),
    pytest.param(
        """\
        cmtyflow: 1
        name: demo
        channels:
          group: {adapter: console}
        triggers:
          - {id: joined, event: member.joined, flow: onboard, for_each: audience}
          - {id: go, manual: {}, flow: onboard, timezone: Asia/Shanghai}
        flows:
          onboard:
            - wait: 90
            - wait: [3d]
            - send: {text: 你好}
        """,
        {},
        [
            "pb.yaml:6:55: error: 'for_each' applies to cron and at triggers only; "
            "an event trigger starts a run for the event's member",
            "pb.yaml:7:41: error: 'timezone' applies to cron and at triggers only; "
            "a manual trigger starts one run each time cmtyflow launch names it",
            "pb.yaml:10:13: error: 'wait' should be a duration such as 90s, 3d or 1h30m, or a mapping with for, "
            "until or event, not the number 90; a duration needs its unit, as in 90s or 90m",
            "pb.yaml:11:7: error: 'wait' should be a duration such as 90s, 3d or 1h30m, or a mapping with for, "
            "until or event, not a list",
        ],
        id="schedule_keys_on_other_triggers_and_a_wait_of_a_number",
    ),
]


@pytest.mark.parametrize(("text", "files", "expected"), CASES)
def test_invalid_playbook(text, files, expected, write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("pb.yaml", text)
    for name, content in files.items():
        write(name, content)
    assert problems_of("pb.yaml") == expected
    assert not load(["pb.yaml"]).ok


def test_a_machine_without_a_zone_database_is_told_so(write, tmp_path, monkeypatch):
    """Without one (no system zoneinfo, no tzdata package) every name is unknown, and the
    message said "unknown timezone 'Asia/Shanghai'; use an IANA name such as
    Asia/Shanghai". It now names the cause."""
    from cmtyflow import checks

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checks, "valid_timezone", lambda name: False)
    monkeypatch.setattr(checks, "_zones", lambda: [])
    write("pb.yaml", """\
        cmtyflow: 1
        name: demo
        timezone: Asia/Shanghai
        channels: {dm: {adapter: console}}
        triggers: [{id: t, event: a.b, flow: f}]
        flows: {f: [{send: {text: hi}}]}
        """)
    assert problems_of("pb.yaml") == [
        "pb.yaml:3:11: error: timezone 'Asia/Shanghai' cannot be read: this machine has no time-zone database "
        "(install the tzdata package: pip install tzdata)",
    ]


def test_a_trigger_at_or_flow_of_the_wrong_type_is_an_error_not_a_crash(write, tmp_path, monkeypatch):
    """`at: 5` passed validate and stopped the dry run (exit 3); `flow: [f]` stopped
    validate itself (TypeError: unhashable type)."""
    monkeypatch.chdir(tmp_path)
    write("pb.yaml", """\
        cmtyflow: 1
        name: demo
        channels: {dm: {adapter: console}}
        triggers:
          - {id: t, at: 5, flow: f}
          - {id: u, event: a.b, flow: [f]}
        flows:
          f:
            - send: {text: hi}
        """)
    assert problems_of("pb.yaml") == [
        "pb.yaml:5:17: error: 'at' should be an ISO 8601 date and time such as 2026-12-24T20:00, not 5",
        "pb.yaml:6:25: error: 'flow' should be text, not a list",
    ]


def test_three_errors_in_one_file_are_all_reported(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(
        "pb.yaml",
        """\
        cmtyflow: 1
        name: demo
        timezon: UTC
        channels:
          group: {adapter: console}
        triggers:
          - {id: nightly, cron: "0 20 * * 8", flow: remind}
        flows:
          remind:
            - send: {channel: gruop, text: hi}
        """,
    )
    assert problems_of("pb.yaml") == [
        "pb.yaml:3:1: error: unknown key 'timezon' in playbook (did you mean 'timezone'?)",
        "pb.yaml:7:25: error: cron '0 20 * * 8': '8' is not a valid day of week (0-6 or SUN-SAT)",
        "pb.yaml:10:23: error: unknown channel 'gruop' (did you mean 'group'?); channels are group",
    ]


def test_billion_laughs_fails_fast(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = ["cmtyflow: 1", "name: lol", "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in "bcdefghij":
        prev = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ", ".join([f"*{prev}"] * 9) + "]")
    write("pb.yaml", "\n".join(lines) + "\n")
    started = time.perf_counter()
    found = problems_of("pb.yaml")
    elapsed = time.perf_counter() - started
    assert found == [
        "pb.yaml:8:4: error: the file holds more than 100,000 values, counting what each alias repeats; refused (split it into several playbooks)"
    ]
    assert elapsed < 2.0


def test_python_tag_is_refused_and_nothing_runs(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    write(
        "pb.yaml",
        f"""\
        cmtyflow: 1
        name: demo
        vars:
          x: !!python/object/apply:os.system ["touch {marker}"]
        flows: {{}}
        """,
    )
    assert problems_of("pb.yaml") == [
        "pb.yaml:4:6: error: tag '!!python/object/apply:os.system' is not allowed in a playbook; "
        "it holds plain data only"
    ]
    assert not marker.exists()


def test_five_megabyte_file_is_refused_before_parsing(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(
        "pb.yaml", b"cmtyflow: 1\nname: big\nvars:\n" + b"  k: " + b"x" * (5 * 1024 * 1024) + b"\n"
    )
    assert problems_of("pb.yaml") == [
        "pb.yaml:1:1: error: file is 5,242,914 bytes; a playbook may be at most 1 MiB (1,048,576 bytes)"
    ]


def test_binary_garbage_is_refused(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("pb.yaml", bytes(range(256)) * 4)
    assert problems_of("pb.yaml") == ["pb.yaml:1:1: error: not UTF-8 text (the file looks binary)"]


def test_undecodable_text_is_refused(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("pb.yaml", "cmtyflow: 1\nname: démo\n".encode("latin-1"))
    assert problems_of("pb.yaml") == ["pb.yaml:2:1: error: not UTF-8 text"]


def test_nesting_deeper_than_64_is_refused(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("pb.yaml", "cmtyflow: 1\nname: deep\nvars:\n  x: " + "[" * 100 + "]" * 100 + "\n")
    assert problems_of("pb.yaml") == ["pb.yaml:4:68: error: nested deeper than 64 levels"]


def test_very_deep_nesting_does_not_crash_the_parser(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("pb.yaml", "x: " + "[" * 500_000 + "]" * 500_000 + "\n")
    assert problems_of("pb.yaml") == ["pb.yaml:1:67: error: nested deeper than 64 levels"]
