"""The shipped library: every playbook validates, and its golden transcript holds."""

from pathlib import Path

import pytest

from cmtyflow.loader import load
from cmtyflow.runtime.golden import discover, run_golden

ROOT = Path(__file__).resolve().parent.parent
SPECS = discover([str(ROOT / "playbooks")])


def test_library_validates_without_problems():
    result = load([ROOT / "playbooks"])
    assert result.problems == []
    assert len(result.playbooks) >= 10


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_golden_transcript(spec):
    result = run_golden(spec)
    assert not result.missing, f"{result.expected} is missing"
    assert result.diff == [], "\n".join(result.diff)


def test_crisis_transcript_says_what_a_manager_expects():
    spec = ROOT / "playbooks" / "crisis-response.test.yaml"
    import json

    lines = [json.loads(x) for x in run_golden(spec).actual]
    steps = [(d["at"][11:16], d["step"], d["member"]) for d in lines]
    # urgent page to both moderators at once, in the middle of quiet hours
    assert steps[0][0] == "23:05" and {s[2] for s in steps if s[0] == "23:05"} == {"u001", "u002"}
    # nobody acknowledged within 15 minutes: escalation to the admin
    assert any(s[0] == "23:20" and s[2] == "u001" for s in steps)


def dry_run_deliveries(capsys: pytest.CaptureFixture[str], tmp_path: Path, playbook: str, events: str,
                       start: str, days: int) -> list[dict]:
    """The deliveries of a shipped playbook's dry run over the example roster, with
    ``events`` (JSON lines) as its events."""
    import json

    from cmtyflow.cli import main

    (tmp_path / "e.jsonl").write_text(events, encoding="utf-8")
    args = ["dry-run", str(ROOT / "playbooks" / f"{playbook}.yaml"), "--roster", str(ROOT / "examples" / "members.csv"),
            "--events", str(tmp_path / "e.jsonl"), "--start", start, "--days", str(days), "--format", "jsonl"]
    assert main(args) == 0
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"delivery"' in x]


def test_a_crisis_declared_while_another_is_open_still_pages_the_moderators(tmp_path, capsys):
    """A second crisis 8 hours into the first was dropped without a page (mode single:
    one response at a time). It is paged at once with its own summary; one declared
    after the first response has closed gets a response of its own."""
    import json

    events = (ROOT / "examples" / "crisis-response.events.jsonl").read_text(encoding="utf-8")
    events += json.dumps({"id": "b", "type": "crisis.declared", "at": "2026-12-11T07:00:00+08:00",
                          "data": {"summary": "群被盗号刷屏", "severity": "critical"}}, ensure_ascii=False) + "\n"
    events += json.dumps({"id": "c", "type": "crisis.declared", "at": "2026-12-13T07:00:00+08:00",
                          "data": {"summary": "third", "severity": "low"}}) + "\n"
    sent = dry_run_deliveries(capsys, tmp_path, "crisis-response", events, "2026-12-10", 5)
    again = [d for d in sent if d["step"] == "page-another"]
    assert [(d["at"][:16], d["member"]) for d in again] == [("2026-12-11T07:00", "u001"), ("2026-12-11T07:00", "u002")]
    assert "群被盗号刷屏" in again[0]["text"] and "级别：严重" in again[0]["text"]  # severity in the message's language
    third = [d["step"] for d in sent if d["at"].startswith("2026-12-13")]
    assert third[:2] == ["page-moderators", "page-moderators"] and "holding-statement" in third


def test_a_crisis_declared_the_day_after_one_was_resolved_gets_a_full_response(tmp_path, capsys):
    """The response waited a day for the post-mortem reminder after its follow-up, with
    the crisis marked resolved: a crisis declared in that day was neither followed
    (mode single) nor paged (``another`` pages only open crises). The reminder now waits
    in a run of its own, and names the incident it is about."""
    lines = [
        {"id": "c1", "type": "crisis.declared", "at": "2026-12-01T10:00:00+08:00", "data": {"summary": "一", "severity": "high"}},
        {"id": "c1a", "type": "crisis.acknowledged", "at": "2026-12-01T10:05:00+08:00", "member": "u002", "data": {"by": "陈静"}},
        {"id": "c1r", "type": "crisis.resolved", "at": "2026-12-01T10:30:00+08:00", "data": {"note": "ok"}},
        {"id": "c2", "type": "crisis.declared", "at": "2026-12-01T15:00:00+08:00", "data": {"summary": "钓鱼链接", "severity": "critical"}},
    ]
    import json

    events = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    sent = dry_run_deliveries(capsys, tmp_path, "crisis-response", events, "2026-12-01", 3)
    second = [(d["step"], d["member"]) for d in sent if "2026-12-01T15:00" <= d["at"] < "2026-12-02"]
    assert second[:2] == [("page-moderators", "u001"), ("page-moderators", "u002")]
    assert ("holding-statement", None) in second and ("follow-up", None) in second
    reminders = [(d["at"][:16], d["text"]) for d in sent if d["step"] == "postmortem-reminder" and d["member"] == "u001"]
    assert [at for at, _ in reminders] == ["2026-12-02T10:30", "2026-12-02T17:45"]
    assert "：一" in reminders[0][1] and "已解决" in reminders[0][1]
    assert "钓鱼链接" in reminders[1][1] and "处理中" in reminders[1][1]


def test_a_crisis_resolved_while_watched_is_said_in_the_group(tmp_path, capsys):
    """The group was told "still on it" at the follow-up; a crisis.resolved in the day
    of watching after it was taken and nothing said."""
    lines = [
        {"id": "a", "type": "crisis.declared", "at": "2026-12-01T10:00:00+08:00", "data": {"summary": "A"}},
        {"id": "a-ack", "type": "crisis.acknowledged", "at": "2026-12-01T10:05:00+08:00", "member": "u002", "data": {"by": "陈静"}},
        {"id": "a-res", "type": "crisis.resolved", "at": "2026-12-01T16:30:00+08:00", "data": {"note": "已处理完毕"}},
    ]
    import json

    events = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    sent = dry_run_deliveries(capsys, tmp_path, "crisis-response", events, "2026-12-01", 3)
    group = [(d["at"][:16], d["step"], d["text"]) for d in sent if d["member"] is None]
    assert [(at, step) for at, step, _ in group] == [
        ("2026-12-01T10:05", "holding-statement"), ("2026-12-01T12:05", "follow-up"), ("2026-12-01T16:30", "resolved-later")
    ]
    assert "问题已解决" in group[2][2] and "已处理完毕" in group[2][2]


def test_a_crisis_launched_without_a_summary_is_paged_all_the_same(tmp_path, capsys):
    """`launch` now refuses a manual input without a default; in a crisis a page
    without a summary beats none, so the summary has one."""
    from cmtyflow.cli import main

    state = str(tmp_path / "state.db")
    assert main(["launch", str(ROOT / "playbooks" / "crisis-response.yaml"), "declare", "--state", state]) == 0
    assert "queued" in capsys.readouterr().out


def test_onboarding_does_not_report_an_opted_out_newcomer_as_silent(tmp_path, capsys):
    """u011 opted out: she gets no welcome, so the moderators were told, falsely, that
    she had had the welcome and reminders and was still silent a week later."""
    joined = '{"id": "j11", "type": "member.joined", "at": "2026-12-01T10:00:00+08:00", "member": "u011"}\n'
    sent = dry_run_deliveries(capsys, tmp_path, "onboarding", joined, "2026-12-01", 10)
    assert not any(d["member"] == "u011" for d in sent)
    assert not any(d["step"] == "report-silent" for d in sent)


def test_a_survey_answer_after_the_results_went_out_is_not_counted_or_thanked(tmp_path, capsys):
    """The results go to the moderators at 18 Dec 20:00 Beijing time, but the window
    runs to the end of 18 Dec in each member's own date: u009 in New York answered at
    10:00 her time (23:00 Beijing), was thanked and rewarded, and never counted."""
    answers = (
        '{"id": "late", "type": "poll.answered", "at": "2026-12-18T10:00:00-05:00", "member": "u009", '
        '"data": {"poll": "2026-q4", "choice": "x"}}\n'
        '{"id": "in-time", "type": "poll.answered", "at": "2026-12-18T19:00:00+08:00", "member": "u003", '
        '"data": {"poll": "2026-q4", "choice": "y"}}\n'
    )
    sent = dry_run_deliveries(capsys, tmp_path, "feedback-survey", answers, "2026-12-14", 6)
    assert [d["member"] for d in sent if d["step"] == "thank-you-dm"] == ["u003"]


def test_an_english_speaker_checks_in_with_an_english_word(tmp_path, capsys):
    """The English texts told members to post "打卡": they had to type Chinese to check in.
    "#checkin", in any case, counts as well."""
    post = ('{"id": "p1", "type": "message.posted", "at": "2026-12-02T09:00:00-05:00", "member": "u009", '
            '"data": {"text": "#CheckIn day 1: finished chapter 2"}}\n')
    sent = dry_run_deliveries(capsys, tmp_path, "checkin-challenge", post, "2026-12-01", 3)
    done = [d for d in sent if d["step"] == "checkin-done"]
    assert [d["member"] for d in done] == ["u009"] and "#checkin" not in done[0]["text"]
    reminders = [d["text"] for d in sent if d["step"] == "nightly-reminder" and d["member"] == "u009"]
    assert reminders and all('"#checkin"' in t for t in reminders)


def test_a_member_without_a_name_is_called_by_their_id_on_the_leaderboard(tmp_path, capsys):
    """docs/playbooks.md: templates call a member without a name by their id. The
    leaderboard and the summary printed a blank ("1.  — 20 分")."""
    events = (
        '{"id": "j1", "type": "member.joined", "at": "2026-12-01T09:00:00+08:00", '
        '"member": {"id": "n1", "tags": ["reading"]}}\n'
        '{"id": "p1", "type": "message.posted", "at": "2026-12-02T09:00:00+08:00", "member": "n1", '
        '"data": {"text": "打卡 第一天"}}\n'
    )
    sent = dry_run_deliveries(capsys, tmp_path, "checkin-challenge", events, "2026-12-01", 7)
    board = [d["text"] for d in sent if d["step"] == "weekly-leaderboard"]
    assert board and all("1. n1 — " in text for text in board)


PLAYBOOK_FILES = sorted(
    p for p in (ROOT / "playbooks").glob("*.yaml") if p.name != "cmtyflow.yaml" and not p.name.endswith(".test.yaml")
)


@pytest.mark.parametrize("path", PLAYBOOK_FILES, ids=lambda p: p.name)
def test_json_schema_accepts_every_shipped_playbook(path):
    import json

    import jsonschema
    from ruamel.yaml import YAML

    schema = json.loads((ROOT / "cmtyflow" / "schema" / "playbook.schema.json").read_text(encoding="utf-8"))
    # YAML timestamps are written as text in a playbook; JSON Schema sees them as strings.
    data = json.loads(json.dumps(YAML(typ="safe").load(path.read_text(encoding="utf-8")), default=str))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(data)]
    assert errors == []


def test_json_schema_accepts_the_short_forms_validate_accepts():
    """`checkin:` and `stop:` with nothing, `manual:` with no inputs, `tag: vip`, role
    members given as numbers: validate takes them, and the schema marked them wrong in
    editors."""
    import json

    import jsonschema
    from ruamel.yaml import YAML

    from cmtyflow.loader import load_text

    text = """\
cmtyflow: 1
name: short
timezone: Asia/Shanghai
channels: {dm: {adapter: console}}
roles: {moderators: [1001, u2]}
triggers:
  - id: go
    manual:
    flow: f
flows:
  f:
    - checkin:
    - tag: vip
    - untag: new
    - send: {text: hi}
    - stop:
"""
    assert [p.message for p in load_text(text).problems] == []
    schema = json.loads((ROOT / "cmtyflow" / "schema" / "playbook.schema.json").read_text(encoding="utf-8"))
    data = YAML(typ="safe").load(text)
    assert [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(data)] == []
