"""Semantic checks over a whole playbook: references, schedules, channels, secrets,
templates (SPEC 1-4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmtyflow.checks import cron_problem, valid_timezone
from cmtyflow.loader import load, load_text
from cmtyflow.secretscan import credential_in_url, literal_secret
from cmtyflow.templates import TemplateSource, find_templates, pick, template_dirs

FULL = """\
cmtyflow: 1
name: reading-challenge
title: 21天读书打卡挑战
timezone: Asia/Shanghai
locale: zh-CN
window: {start: 2026-12-01, days: 21}
vars: {checkin_word: 打卡, goal_days: 21}
channels:
  group: {adapter: console, prefix: "[group] "}
  log: {adapter: file, path: "${env:LOG_PATH}", fsync: "${env:LOG_FSYNC}"}
audience: {where: "'reading' in member.tags"}
roles: {moderators: [u001, u002]}
policies:
  quiet_hours: {start: "22:00", end: "08:00"}
  max_per_member_per_day: 3
  catch_up: {grace: 1h}
goals:
  first_post: {event: message.posted, within: 7d, where: "event.data.channel == 'group'"}
triggers:
  - {id: joined, event: member.joined, flow: onboard}
  - id: nightly
    cron: "0 20 * * *"
    timezone: member
    for_each: audience
    flow: remind
  - {id: every-second, cron: "*/30 * * * * 0", flow: remind, mode: queued}
  - {id: xmas, at: "2026-12-20T20:00", timezone: Europe/Paris, flow: remind}
  - id: launch
    manual: {inputs: {note: {type: string, default: hi}}}
    flow: remind
flows:
  onboard:
    - id: welcome
      send: {channel: group, text: "欢迎 {{ member.name }}"}
    - wait: {event: message.posted, timeout: 3d}
    - if: wait.timed_out
      send: {channel: log, text: "{{ member.id }} is quiet", to: roles.moderators}
    - set: {intro_done: "true", score: 1, note: "'x' ~ vars.checkin_word"}
    - choose:
        - if: "state.points > 10"
          steps: [{award: {points: 5, badge: reader}}]
        - else: [{tag: [quiet]}]
    - repeat:
        times: "vars.goal_days // 7"
        steps:
          - checkin: {}
          - emit: {event: reading.done, data: {day: "state.checkins", label: "'x'"}, member: member.id}
  remind:
    - send:
        channel: group
        to: [u001, u002]
        variants:
          short: {text: "{{ vars.checkin_word }}!", weight: 2}
          long: {text: "Day {{ state.streak }}: {{ vars.checkin_word }}"}
    - stop: done
"""


def problems(result) -> list[str]:
    return [f"{p.line}:{p.col}: {p.severity}: {p.message}" for p in result.problems]


def test_a_playbook_using_every_feature_passes():
    result = load_text(FULL)
    assert problems(result) == []
    assert result.ok


def test_a_send_may_omit_its_channel_when_there_is_exactly_one():
    text = "cmtyflow: 1\nname: x\nchannels: {c: {adapter: console}}\ntriggers: [{id: t, event: e, flow: a}]\nflows: {a: [{send: {text: hi}}]}\n"
    assert problems(load_text(text)) == []


def test_the_one_channel_may_come_from_folder_defaults(write, tmp_path):
    write("cmtyflow.yaml", "channels: {c: {adapter: console}}\n")
    text = "cmtyflow: 1\nname: x\ntriggers: [{id: t, event: e, flow: a}]\nflows: {a: [{send: {text: hi}}]}\n"
    assert problems(load_text(text, tmp_path / "pb.yaml")) == []


def test_a_send_without_channel_and_no_channels():
    text = "cmtyflow: 1\nname: x\ntriggers: [{id: t, event: e, flow: a}]\nflows: {a: [{send: {text: hi}}]}\n"
    assert problems(load_text(text)) == [
        "4:14: error: send has no channel and the playbook defines none; add channels:"
    ]


def test_a_flow_no_trigger_starts_is_a_warning_only():
    text = FULL.replace("  remind:\n", "  spare: [{stop: x}]\n  remind:\n")
    result = load_text(text)
    assert problems(result) == ["48:3: warning: flow 'spare' is never started: no trigger names it"]
    assert result.ok


def test_duplicate_trigger_ids():
    text = FULL.replace("id: launch", "id: joined")
    assert problems(load_text(text)) == [
        "28:9: error: duplicate trigger id 'joined' (first at line 20)"
    ]


def test_step_ids_are_unique_across_flows_and_nested_steps():
    text = FULL.replace("- checkin: {}", "- {id: welcome, checkin: {}}")
    assert problems(load_text(text)) == [
        "46:18: error: duplicate step id 'welcome'; step ids are unique in a playbook (first at line 33)"
    ]


def test_to_must_be_member_channel_a_role_or_ids():
    text = FULL.replace("to: roles.moderators", "to: moderators")
    assert problems(load_text(text)) == [
        "37:66: error: 'to' should be member, channel, a role such as roles.moderators, "
        "or a list of member ids, not 'moderators'"
    ]


def test_expressions_everywhere_are_checked():
    text = (
        FULL.replace("member.tags", "membr.tags")
        .replace("event.data.channel", "evnt.data.channel")
        .replace("state.checkins", "stat.checkins")
        .replace("member: member.id", "member: mbr.id")
        .replace("vars.goal_days // 7", "var.goal_days // 7")
        .replace('if: "state.points > 10"', 'if: "points > 10"')
    )
    found = [p.split(";")[0] for p in problems(load_text(text))]
    assert found == [
        "11:19: error: unknown name 'membr' (did you mean 'member'?)",
        "18:58: error: unknown name 'evnt' (did you mean 'event'?)",
        "40:15: error: unknown name 'points'",
        "44:16: error: unknown name 'var' (did you mean 'vars'?)",
        "47:53: error: unknown name 'stat' (did you mean 'state'?)",
        "47:93: error: unknown name 'mbr' (did you mean 'member'?)",
    ]


def test_variant_templates_are_checked():
    text = FULL.replace("{{ state.streak }}", "{{ state.streak }")
    assert problems(load_text(text)) == ["54:24: error: template syntax error: unexpected '}'"]


def test_adapter_settings_accept_env_references_of_any_type():
    # fsync is a boolean; "${env:LOG_FSYNC}" is only resolved when the channel opens.
    assert "fsync" in FULL
    assert load_text(FULL).ok


def test_adapter_setting_of_the_wrong_type():
    text = FULL.replace('fsync: "${env:LOG_FSYNC}"', "fsync: sometimes")
    assert problems(load_text(text)) == [
        "10:56: error: setting 'fsync' should be true or false, not 'sometimes'"
    ]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("token: 12345:abcdef", "setting 'token' holds a literal secret"),
        ("api_key: sk-live-1", "setting 'api_key' holds a literal secret"),
        ("webhook: https://example.com/in/abc", "setting 'webhook' holds a literal secret"),
        (
            "url: https://bot:hunter2@example.com/",
            "setting 'url' is a URL with a user name and password in it",
        ),
        (
            "url: https://hooks.slack.com/services/T0/B0/XYZ",
            "setting 'url' is a URL with a Slack webhook credential in it",
        ),
        (
            "url: https://discord.com/api/webhooks/1/abc",
            "setting 'url' is a URL with a Discord webhook token in it",
        ),
        (
            "url: https://open.feishu.cn/open-apis/bot/v2/hook/abc",
            "setting 'url' is a URL with a Feishu/Lark webhook token in it",
        ),
        (
            "url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc",
            "setting 'url' is a URL with a credential in its query",
        ),
        (
            "url: https://oapi.dingtalk.com/robot/send?access_token=abc",
            "setting 'url' is a URL with a credential in its query",
        ),
    ],
)
def test_literal_secrets_in_channels_are_warned_about(setting, message):
    key, value = setting.split(": ", 1)
    text = FULL.replace('prefix: "[group] "', f'{key}: "{value}"')
    found = [p for p in load_text(text).problems if p.severity == "warning"]
    assert [(p.line, p.col) for p in found] == [(9, 31 + len(key))]
    assert found[0].message == (
        f"channel 'group' {message}; write ${{env:NAME}} and set NAME in the environment"
    )


@pytest.mark.parametrize(
    "value",
    [
        "${env:TG_TOKEN}",
        "https://hooks.slack.com/services/${env:SLACK_HOOK}",
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=${env:WECOM_KEY}",
        "https://${env:USER}:${env:PASS}@example.com/",
    ],
)
def test_env_references_are_not_secrets(value):
    assert literal_secret("token", value) is None
    assert literal_secret("url", value) is None


def test_credential_urls_in_vars_are_warned_about():
    text = FULL.replace(
        "goal_days: 21}", "goal_days: 21, hook: 'https://discord.com/api/webhooks/1/x'}"
    )
    assert problems(load_text(text)) == [
        "7:47: warning: this URL has a Discord webhook token in it; put secrets in the environment and write ${env:NAME}"
    ]


def test_harmless_settings_are_not_secrets():
    assert literal_secret("prefix", "token: ") is None
    assert literal_secret("key_file", "/etc/key.pem") is None
    assert credential_in_url("https://example.com/page?id=3") is None


def test_playbook_names_are_unique_among_loaded_playbooks(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("a.yaml", FULL)
    write("b.yaml", FULL)
    assert [f"{p.path}:{p.line}:{p.col}: {p.message}" for p in load(["."]).problems] == [
        "b.yaml:2:7: playbook name 'reading-challenge' is also used by a.yaml"
    ]


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 20 * * *", None),
        ("*/15 9-17 * * MON-FRI", None),
        ("0 0 1 1 * 30", None),
        (
            "@daily",
            "cron '@daily' has 1 field; write 5 (minute hour day-of-month month day-of-week), or 6 with seconds last",
        ),
        ("60 * * * *", "cron '60 * * * *': '60' is not a valid minute (0-59)"),
        ("0 0 32 * *", "cron '0 0 32 * *': '32' is not a valid day of month (1-31)"),
        ("0 0 * 13 *", "cron '0 0 * 13 *': '13' is not a valid month (1-12 or JAN-DEC)"),
        # Each field valid, no date matches: the dry run crashed looking for a firing.
        ("0 9 30 2 *", "cron '0 9 30 2 *' never fires: no month '2' has a day '30'"),
        ("0 0 31 4,6 *", "cron '0 0 31 4,6 *' never fires: no month '4,6' has a day '31'"),
        ("0 9 29 2 *", None),  # leap years
        ("0 9 30 2 MON", None),  # day of month or day of week: every Monday
        # Seconds first, as Quartz and Spring write them (copied from a blog or a Java
        # project): read as seconds last, "0 0 20 * * *" is every second of 00:00 on the 20th.
        (
            "0 0 20 * * *",
            "cron '0 0 20 * * *' fires 60 times a minute: a 6th field is seconds, last (cmtyflow starts with "
            "the minute, as crontab does); Quartz and Spring put seconds first: for their '0 0 20 * * *' write '0 20 * * *'",
        ),
        (
            "0 30 8 ? * MON-FRI",
            "cron '0 30 8 ? * MON-FRI': '?' is Quartz syntax, which cmtyflow does not read; "
            "Quartz and Spring put seconds first: for their '0 30 8 ? * MON-FRI' write '30 8 * * MON-FRI'",
        ),
        (
            "0 0 20 * * ?",
            "cron '0 0 20 * * ?': '?' is Quartz syntax, which cmtyflow does not read; "
            "Quartz and Spring put seconds first: for their '0 0 20 * * ?' write '0 20 * * *'",
        ),
        (
            "0 20 * * * */10",
            "cron '0 20 * * * */10' fires 6 times a minute: a 6th field is seconds, last (cmtyflow starts with "
            "the minute, as crontab does); give one second, or write 5 fields",
        ),
    ],
)
def test_cron(cron, message):
    assert cron_problem(cron) == message


def test_timezones():
    assert valid_timezone("Asia/Shanghai")
    assert valid_timezone("UTC")
    assert not valid_timezone("Mars/Olympus")
    assert not valid_timezone("../../etc/passwd")
    assert not valid_timezone("")
    # files of the zone database that are no IANA zone: the machine's own, a placeholder,
    # the leap-second and POSIX variants
    for name in ("localtime", "Factory", "posixrules", "right/UTC", "posix/Asia/Shanghai"):
        assert not valid_timezone(name), name


def test_variant_weights_are_finite_positive_numbers():
    """`.inf` gave every member the other variant; two of 1e308 overflowed their sum to
    inf and did the same; a weight of true or '2' was read as a number."""
    text = (
        "cmtyflow: 1\nname: w\ntimezone: UTC\nchannels: {dm: {adapter: console}}\n"
        "triggers: [{id: t, event: a.b, flow: f}]\nflows:\n  f:\n    - send:\n        variants:\n"
        "          a: {text: A, weight: .inf}\n          b: {text: B, weight: '2'}\n"
        "          c: {text: C, weight: true}\n          d: {text: D, weight: 1e308}\n          e: {text: E, weight: 2}\n"
    )
    assert problems(load_text(text)) == [
        "10:32: error: 'weight' should be a finite number",
        "11:32: error: 'weight' should be a number, not '2'",
        "12:32: error: 'weight' should be a number, not true",
        "13:32: error: 'weight' should be at most 1000000, not the number 1e+308",
    ]


# --- template files (SPEC 2) ---------------------------------------------------------


def source(locale, fmt):
    return TemplateSource("welcome", locale, fmt, Path(f"welcome.{locale}.{fmt}.j2"), "")


def test_pick_walks_the_locale_chain_then_the_formats():
    sources = [
        source(None, "plain"),
        source("zh-CN", "plain"),
        source("zh-CN", "markdown"),
        source("fr", "html"),
    ]
    assert pick(sources, ["zh-CN", "en", None], ("markdown", "plain")).format == "markdown"
    assert pick(sources, ["de", "zh-CN", None], ("html", "plain")).locale == "zh-CN"
    assert pick(sources, [None, "en", None], ("plain",)).locale is None
    assert pick(sources, ["fr", None], ("plain",)).locale is None
    assert pick(sources, ["en"], ("plain",)) is None


def test_find_templates_first_folder_wins(write, tmp_path):
    write("playbooks/templates/welcome.zh-CN.md.j2", "near")
    write("templates/welcome.zh-CN.md.j2", "far")
    write("templates/welcome.txt.j2", "plain")
    write("templates/welcome.extra.zh-CN.md.j2", "not this")
    write("templates/welcomed.txt.j2", "nor this")
    write("templates/emails/welcome.html.j2", "<p>hi</p>")
    dirs = template_dirs(tmp_path / "playbooks" / "pb.yaml")
    assert dirs == [tmp_path / "playbooks" / "templates", tmp_path / "templates"]
    found = {(s.locale, s.format): s.source for s in find_templates(dirs, "welcome")}
    assert found == {("zh-CN", "markdown"): "near", (None, "plain"): "plain"}
    assert [s.source for s in find_templates(dirs, "emails/welcome")] == ["<p>hi</p>"]
    assert find_templates(dirs, "../templates/welcome") == []


def test_a_template_found_in_the_parent_folder_resolves(write, tmp_path):
    write("templates/welcome.txt.j2", "Hello {{ member.name }}")
    text = FULL.replace('text: "欢迎 {{ member.name }}"', "template: welcome")
    path = write("playbooks/pb.yaml", text)
    result = load([path])
    assert problems(result) == []
    assert [s.path for s in result.playbooks[0].templates["welcome"]] == [
        tmp_path / "templates" / "welcome.txt.j2"
    ]


def test_a_variant_template_that_does_not_exist(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = FULL.replace(
        'long: {text: "Day {{ state.streak }}: {{ vars.checkin_word }}"}', "long: {template: long}"
    )
    write("pb.yaml", text)
    assert problems(load(["pb.yaml"])) == [
        "54:28: error: template 'long' not found: looked for templates/long.zh-CN.*.j2 and templates/long.*.j2"
    ]


def test_a_template_file_that_is_not_text(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("templates/welcome.txt.j2", b"\xff\xfe\x00binary")
    write("pb.yaml", FULL.replace('text: "欢迎 {{ member.name }}"', "template: welcome"))
    found = [f"{p.path}:{p.line}:{p.col}: {p.message}" for p in load(["pb.yaml"]).problems]
    assert found == [
        "pb.yaml:34:40: template 'welcome' not found: looked for templates/welcome.zh-CN.*.j2 and templates/welcome.*.j2",
        "templates/welcome.txt.j2:1:1: template not UTF-8 text",
    ]


SMALL = """\
cmtyflow: 1
name: x
timezone: Asia/Shanghai
channels: {dm: {adapter: console}}
triggers: [TRIGGER]
flows:
  f:
    - STEP
"""


@pytest.mark.parametrize(
    ("trigger", "step", "expected"),
    [
        # every run failed on these ("template '' has no file", 1,000 sends then "ran past max_loop")
        (None, "send: {channel: dm, variants: {}}", "8:7: error: variants needs at least one variant"),
        (None, "repeat: {times: 100000000, steps: [{send: {channel: dm, text: x}}]}",
         "8:7: error: times must be between 0 and 10000, not 100000000"),
        (None, "repeat: {times: -5, steps: [{send: {channel: dm, text: x}}]}", "8:7: error: times must be between 0 and 10000, not -5"),
        # a launch then failed the run on the wrong type
        ('{id: c, manual: {inputs: {n: {type: integer, default: "abc"}}}, flow: f}', "send: {channel: dm, text: x}",
         '5:38: error: default "abc" is not an integer'),
    ],
    ids=["empty-variants", "repeat-over-limit", "repeat-negative", "manual-default"],
)
def test_what_would_fail_every_run_is_refused_at_validate(trigger, step, expected):
    text = SMALL.replace("TRIGGER", trigger or '{id: c, cron: "0 9 * * *", for_each: audience, flow: f}').replace("STEP", step)
    found = [f"{p.line}:{p.col}: {p.severity}: {p.message}" for p in load_text(text, "pb.yaml").problems]
    assert expected in found, found


def test_hidden_files_in_a_folder_are_not_playbooks(tmp_path):
    """An editor's lock file (.#pb.yaml, a dangling link) failed the whole folder."""
    (tmp_path / "pb.yaml").write_text(SMALL.replace("TRIGGER", '{id: c, cron: "0 9 * * *", flow: f}').replace("STEP", "send: {channel: dm, text: x}"), encoding="utf-8")
    (tmp_path / ".#pb.yaml").symlink_to(tmp_path / "nowhere")
    (tmp_path / ".draft.yaml").write_text("not: [a playbook", encoding="utf-8")
    result = load([tmp_path])
    assert result.problems == [] and [p.playbook.name for p in result.playbooks] == ["x"]


@pytest.mark.parametrize("value", ["${ENV:TG_TOKEN}", "${env:}", "${TG_TOKEN}", "${env:TG-TOKEN}"])
def test_a_reference_that_is_not_one_is_an_error_not_a_literal_secret(value):
    """`${ENV:X}` was taken for a literal secret (a warning), and `${env:}` passed: the
    text itself would have gone to the platform as the token."""
    text = (
        "cmtyflow: 1\nname: x\nchannels:\n"
        f'  tg: {{adapter: telegram, token: "{value}", chat_id: "-100"}}\n'
        "triggers: [{id: j, event: member.joined, flow: f}]\nflows: {f: [{send: {text: hi}}]}\n"
    )
    found = [f"{p.line}:{p.col}: {p.severity}: {p.message}" for p in load_text(text, "pb.yaml").problems]
    assert found == [
        f"4:34: error: channel 'tg' setting 'token': {value} is not an environment reference; "
        "write ${env:NAME} (lower-case env, a name of letters, digits and _)"
    ]


def test_a_send_to_members_through_a_group_robot_is_a_warning():
    """A robot (wecom, dingtalk, feishu) has one destination, its group: a 'private'
    reminder to a member is posted for everyone to read.
    A campaign run's default (the channel) and to: channel are not warned of."""
    text = """\
cmtyflow: 1
name: w
timezone: Asia/Shanghai
channels:
  dm: {adapter: wecom, webhook_url: "${env:WECOM_HOOK}"}
roles: {moderators: [a]}
triggers:
  - {id: j, event: member.joined, flow: f}
  - {id: c, cron: "0 9 * * *", flow: g}
flows:
  f:
    - {id: s, send: {text: "你今天还没打卡（私信）"}}
    - {id: t, send: {to: roles.moderators, text: "new member"}}
    - {id: u, send: {to: channel, text: "ok"}}
    - {id: x, send: {to: [a, b], text: "ok"}}
  g:
    - {id: v, send: {text: "早上好"}}
"""
    found = [(p.line, p.col, p.severity, p.message) for p in load_text(text).problems]
    # A role is not warned of: a robot of the moderators' own group is the usual way to
    # page them (the crisis playbook suggests it), and the warning prints on every run.
    assert [(line, col, severity) for line, col, severity, _ in found] == [(12, 15, "warning"), (15, 26, "warning")]
    assert found[0][3].startswith("channel 'dm' is a wecom robot, whose one destination is its group: this send to the member")
    assert "this send to these members" in found[1][3]


def test_a_send_to_a_member_through_a_webhook_without_a_bot_token_is_a_warning():
    """slack and discord without a bot token post through their webhook, in its one
    channel: a 'private' badge message went to the public channel without a word."""
    text = """\
cmtyflow: 1
name: w
timezone: UTC
channels:
  d: {adapter: discord, webhook_url: "${env:DISCORD_HOOK}"}
  s: {adapter: slack, webhook_url: "${env:SLACK_HOOK}"}
  bot: {adapter: discord, bot_token: "${env:DISCORD_TOKEN}", webhook_url: "${env:DISCORD_HOOK}"}
triggers:
  - {id: j, event: member.joined, flow: f}
flows:
  f:
    - {id: a, send: {channel: d, text: "your badge"}}
    - {id: b, send: {channel: s, to: member, text: "your badge"}}
    - {id: c, send: {channel: bot, text: "your badge"}}
    - {id: e, send: {channel: d, to: channel, text: "welcome"}}
"""
    found = [(p.line, p.severity, p.message) for p in load_text(text).problems]
    assert [(line, severity) for line, severity, _ in found] == [(12, "warning"), (13, "warning")]
    assert found[0][2].startswith("channel 'd' is a discord webhook without a bot token, whose one destination is its "
                                  "channel: this send to the member is posted there")
    assert found[1][2].startswith("channel 's' is a slack webhook without a bot token")


def test_an_at_outside_the_window_is_a_warning():
    """Triggers fire only inside the window (SPEC 1): such an `at` never fires, and
    validate said nothing. Its day is read in its timezone, as the engine reads it."""
    text = """\
cmtyflow: 1
name: a
timezone: Asia/Shanghai
window: {start: 2026-12-01, days: 21}
channels:
  dm: {adapter: console}
triggers:
  - {id: x, at: "2027-01-05T09:00", flow: f}
  - {id: y, at: "2026-12-21T20:00:00-08:00", flow: f}
  - {id: z, at: "2026-12-21T09:00", flow: f}
flows:
  f:
    - send: {text: hi}
"""
    found = [(p.line, p.severity, p.message) for p in load_text(text).problems]
    assert found == [
        (8, "warning", "this 'at' falls on 2027-01-05, outside the window (2026-12-01 .. 2026-12-21): it never fires"),
        (9, "warning", "this 'at' falls on 2026-12-22, outside the window (2026-12-01 .. 2026-12-21): it never fires"),
    ]


def test_a_name_unknown_where_the_playbook_has_none_of_its_kind_says_so():
    """It said "roles are none", "vars are none"."""
    text = """\
cmtyflow: 1
name: a
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - {id: x, event: a.b, flow: f}
flows:
  f:
    - send: {to: roles.mods, text: "{{ vars.word }}"}
"""
    messages = [p.message for p in load_text(text).problems]
    assert "unknown role 'mods'; the playbook has no roles" in messages
    assert any(m.startswith("unknown var 'word'; the playbook has no vars") for m in messages), messages


LOOP = """\
cmtyflow: 1
name: loop
timezone: Asia/Shanghai
channels: {group: {adapter: console}}
triggers:
  - {id: ping, event: ping.x, flow: a MODE}
  - {id: go, manual: {}, flow: a}
flows:
  a:
    - send: {text: hi}
STEPS
"""


def _loop_problems(steps: str, mode: str = "") -> list[str]:
    text = LOOP.replace(" MODE", mode).replace("STEPS\n", steps)
    return [f"{p.line}:{p.col}: {p.severity}: {p.message}" for p in load_text(text, "pb.yaml").problems]


def test_a_flow_that_emits_the_event_that_starts_it_is_warned_about_at_the_emit():
    """A dry run sent 101 messages, then warned that a chain of emits was cut."""
    assert _loop_problems("    - emit: {event: ping.x}\n") == [
        "11:21: warning: flow 'a' emits 'ping.x', which starts flow 'a' again (trigger 'ping'): "
        "each run starts the next, until the chain is cut at 100",
    ]


def test_an_emit_under_a_condition_can_start_its_flow_again():
    steps = "    - choose:\n        - if: member.name == 'x'\n          steps:\n            - emit: {event: ping.x}\n"
    assert _loop_problems(steps) == [
        "14:29: warning: flow 'a' emits 'ping.x', which can start flow 'a' again (trigger 'ping'): "
        "each run can start the next, until the chain is cut at 100",
    ]
    assert _loop_problems("    - if: member.name == 'x'\n      emit: {event: ping.x}\n") == [
        "12:21: warning: flow 'a' emits 'ping.x', which can start flow 'a' again (trigger 'ping'): "
        "each run can start the next, until the chain is cut at 100",
    ]


def test_a_cycle_through_another_flow_is_warned_about_at_each_emit():
    text = """\
cmtyflow: 1
name: loop
timezone: Asia/Shanghai
channels: {group: {adapter: console}}
triggers:
  - {id: ping, event: ping.x, flow: a}
  - {id: pong, event: pong.x, flow: b}
flows:
  a:
    - emit: {event: pong.x}
  b:
    - send: {text: hi}
    - repeat:
        times: 2
        steps:
          - emit: {event: ping.x}
"""
    assert [f"{p.line}:{p.col}: {p.message}" for p in load_text(text, "pb.yaml").problems] == [
        "10:21: flow 'a' emits 'pong.x', which starts flow 'b' (trigger 'pong'), whose run emits 'ping.x', "
        "which starts flow 'a' again (trigger 'ping'): each run starts the next, until the chain is cut at 100",
        "16:27: flow 'b' emits 'ping.x', which starts flow 'a' (trigger 'ping'), whose run emits 'pong.x', "
        "which starts flow 'b' again (trigger 'pong'): each run starts the next, until the chain is cut at 100",
    ]


@pytest.mark.parametrize(
    ("steps", "mode"),
    [
        # a run waiting after its emit: the new firing is dropped (mode single) or waits its turn (queued)
        ("    - emit: {event: ping.x}\n    - wait: 1h\n", ""),
        ("    - emit: {event: ping.x}\n    - wait: 1h\n", ", mode: queued"),
        # a wait before the emit: one run an hour, not a chain at one instant
        ("    - wait: 1h\n    - emit: {event: ping.x}\n", ", mode: parallel"),
        ("    - repeat: {times: 2, steps: [{wait: 1h}, {emit: {event: ping.x}}]}\n", ", mode: parallel"),
        # another event, or a flow no trigger maps it to
        ("    - emit: {event: pong.x}\n", ""),
    ],
    ids=["wait-after-single", "wait-after-queued", "wait-before", "wait-in-the-loop", "other-event"],
)
def test_an_emit_that_cannot_chain_at_one_instant_is_not_warned_about(steps, mode):
    assert _loop_problems(steps, mode) == []


@pytest.mark.parametrize(
    ("steps", "at"),
    [
        ("    - emit: {event: ping.x}\n    - wait: 1h\n", "11:21"),
        ("    - repeat: {times: 2, steps: [{emit: {event: ping.x}}, {wait: 1h}]}\n", "11:49"),
    ],
    ids=["wait-after", "wait-after-in-the-loop"],
)
def test_an_emit_before_a_wait_chains_when_each_firing_starts_a_run(steps, at):
    assert _loop_problems(steps, ", mode: parallel") == [
        f"{at}: warning: flow 'a' emits 'ping.x', which starts flow 'a' again (trigger 'ping'): "
        "each run starts the next, until the chain is cut at 100",
    ]


def test_the_chain_cut_named_is_the_runners():
    from cmtyflow.loopchecks import EMIT_CHAIN_CUT
    from cmtyflow.runtime.driver import MAX_EMIT_DEPTH

    assert EMIT_CHAIN_CUT == MAX_EMIT_DEPTH


@pytest.mark.parametrize(
    ("policies", "times", "expected"),
    [
        ("", 2000, ["8:23: error: repeat times 2000 is more than policies.max_loop (1000): every run would fail here; "
                    "raise policies.max_loop or lower times"]),
        ("", 1000, []),
        ("policies: {max_loop: 10}\n", 11, ["9:23: error: repeat times 11 is more than policies.max_loop (10): every run "
                                           "would fail here; raise policies.max_loop or lower times"]),
        ("policies: {max_loop: 5000}\n", 2000, []),
    ],
    ids=["default", "at-the-limit", "own-limit", "raised"],
)
def test_a_repeat_of_more_times_than_max_loop_is_an_error_at_times(policies, times, expected):
    """Every run sent max_loop rounds of messages, then failed."""
    text = SMALL.replace("TRIGGER", '{id: c, event: a.b, flow: f}').replace(
        "STEP", f"repeat: {{times: {times}, steps: [{{send: {{channel: dm, text: x}}}}]}}"
    ).replace("flows:\n", policies + "flows:\n")
    assert [f"{p.line}:{p.col}: {p.severity}: {p.message}" for p in load_text(text, "pb.yaml").problems] == expected


def test_a_max_loop_of_the_folder_defaults_applies_to_repeat_times(tmp_path):
    (tmp_path / "cmtyflow.yaml").write_text("policies: {max_loop: 10}\n", encoding="utf-8")
    (tmp_path / "pb.yaml").write_text(
        SMALL.replace("TRIGGER", '{id: c, event: a.b, flow: f}').replace(
            "STEP", "repeat: {times: 20, steps: [{send: {channel: dm, text: x}}]}"
        ),
        encoding="utf-8",
    )
    assert [f"{p.line}:{p.col}: {p.message}" for p in load([tmp_path]).problems] == [
        "8:23: repeat times 20 is more than policies.max_loop (10): every run would fail here; "
        "raise policies.max_loop or lower times",
    ]


@pytest.mark.parametrize(
    ("zone", "severity", "says"),
    [
        ("EST", "warning", "timezone 'EST' is a fixed offset all year, with no daylight saving"),
        ("Etc/GMT+8", "warning", "timezone 'Etc/GMT+8' is UTC-8 (the Etc names read the sign backwards)"),
        ("PST", "error", "unknown timezone 'PST': write the place's IANA name, e.g. America/Los_Angeles"),
        ("cst", "error", "e.g. America/Chicago (US Central) or Asia/Shanghai (China)"),
        ("GMT+8", "error", "unknown timezone 'GMT+8': a UTC offset is not a timezone"),
        ("UTC+05:30", "error", "a UTC offset is not a timezone"),
    ],
)
def test_abbreviations_offsets_and_fixed_zones_say_what_to_write(zone, severity, says):
    """'PST' was answered 'did you mean MST?', 'UTC+1' 'did you mean UTC?', and 'EST'
    (UTC-5 all year) was taken without a word: reminders an hour late all summer."""
    text = f'cmtyflow: 1\nname: t\ntimezone: "{zone}"\nchannels:\n  dm: {{adapter: console}}\nflows:\n  f:\n    - send: {{text: hi}}\n'
    found = [(p.severity, p.message) for p in load_text(text).problems if "timezone" in p.message]
    assert len(found) == 1 and found[0][0] == severity and says in found[0][1], found


def test_a_kinds_keys_written_one_level_out_say_to_indent_them():
    """`send:` alone on its line, its keys below it at the same indent: 'unknown key
    channel in send step' (channel is a send key) sent the newcomer looking elsewhere."""
    text = """\
cmtyflow: 1
name: t
timezone: UTC
channels:
  c: {adapter: console}
triggers:
  - {id: j, event: member.joined, flow: f}
flows:
  f:
    - send:
      channel: c
      text: "hello"
      bogus: 1
"""
    found = [f"{p.line}:{p.col}: {p.message}" for p in load_text(text).problems]
    assert "11:7: 'channel' is a key of send: indent it under 'send:', two spaces further in than 'send'" in found
    assert "12:7: 'text' is a key of send: indent it under 'send:', two spaces further in than 'send'" in found
    assert any(f.startswith("13:7: unknown key 'bogus' in send step") for f in found)
