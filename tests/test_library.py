"""The playbook library as a community manager reads it: for each of the ten shipped
playbooks, what its dry run delivers over its natural span (the golden spec beside it:
playbooks/NAME.test.yaml with the example roster and events). Explicit expectations,
not snapshots; each says in one line what a manager expects."""

from __future__ import annotations

import csv
import functools
import json
import re
from collections import Counter, defaultdict
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cmtyflow.runtime.golden import read_spec, transcript

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS = ROOT / "playbooks"
SHANGHAI = ZoneInfo("Asia/Shanghai")
LIBRARY = [
    "onboarding",
    "checkin-challenge",
    "crisis-response",
    "daily-brief",
    "weekly-topic",
    "re-engagement",
    "feedback-survey",
    "referral",
    "event-campaign",
    "faq-autoreply",
]
# SPEC 4 `urgent: true`: crisis sends ignore quiet hours and the daily cap.
URGENT = {
    ("crisis-response", s)
    for s in (
        "page-moderators",
        "escalate-admins",
        "unacknowledged-warning",
        "holding-statement",
        "follow-up",
    )
}
QUIET_START, QUIET_END = time(22, 0), time(8, 0)  # playbooks/cmtyflow.yaml


@functools.cache
def deliveries(name: str) -> tuple[dict[str, Any], ...]:
    _, lines = transcript(PLAYBOOKS / f"{name}.test.yaml")
    return tuple(json.loads(line) for line in lines)


@functools.cache
def roster() -> dict[str, dict[str, str]]:
    with open(ROOT / "examples" / "members.csv", encoding="utf-8", newline="") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


@functools.cache
def events(name: str) -> tuple[dict[str, Any], ...]:
    spec = read_spec(PLAYBOOKS / f"{name}.test.yaml")
    assert spec.events, f"{name}: the golden spec names no events"
    path = PLAYBOOKS / spec.events
    return tuple(
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    )


@functools.cache
def timezones() -> dict[str, str]:
    """Member id -> timezone, from the roster and the newcomers in the event files."""
    zones = {mid: row["timezone"] for mid, row in roster().items()}
    for name in LIBRARY:
        for event in events(name):
            if isinstance(event["member"], dict):
                zones.setdefault(
                    event["member"]["id"], event["member"].get("timezone") or "Asia/Shanghai"
                )
    return zones


def opted_out() -> set[str]:
    return {mid for mid, row in roster().items() if row["opted_out"] == "true"}


def local(d: dict[str, Any], member: str | None = None) -> datetime:
    """When a delivery happens on its recipient's clock (Beijing time for channel posts)."""
    who = member or d["member"]
    zone = ZoneInfo(timezones()[who]) if who else SHANGHAI
    return datetime.fromisoformat(d["at"]).astimezone(zone)


def event_local(event: dict[str, Any]) -> datetime:
    who = event["member"]["id"] if isinstance(event["member"], dict) else event["member"]
    return datetime.fromisoformat(event["at"]).astimezone(
        ZoneInfo(timezones().get(who, "Asia/Shanghai"))
    )


def step(name: str, step_id: str) -> list[dict[str, Any]]:
    return [d for d in deliveries(name) if d["step"] == step_id]


def when(d: dict[str, Any], member: str | None = None) -> tuple[str, str]:
    at = local(d, member)
    return at.date().isoformat(), at.strftime("%H:%M")


def in_quiet_hours(at: datetime) -> bool:
    return at.time() >= QUIET_START or at.time() < QUIET_END


# the whole library -------------------------------------------------------------------------------
def test_library_every_playbook_has_a_golden_spec_and_events():
    # every shipped playbook can be rehearsed with one command, against realistic events
    shipped = sorted(
        p.stem
        for p in PLAYBOOKS.glob("*.yaml")
        if p.name != "cmtyflow.yaml" and not p.name.endswith(".test.yaml")
    )
    assert shipped == sorted(LIBRARY)
    for name in LIBRARY:
        assert events(name), name
        assert deliveries(name), f"{name} delivers nothing over its span"


@pytest.mark.parametrize("name", LIBRARY)
def test_library_never_messages_opted_out_members(name):
    # a member who opted out hears nothing from any playbook, not even a thank-you
    assert [d for d in deliveries(name) if d["member"] in opted_out()] == []


@pytest.mark.parametrize("name", LIBRARY)
def test_library_direct_messages_respect_the_recipients_quiet_hours(name):
    # nobody gets a DM between 22:00 and 08:00 their time, except crisis pages
    late = [
        (d["step"], d["member"], local(d).isoformat())
        for d in deliveries(name)
        if d["member"] and (name, d["step"]) not in URGENT and in_quiet_hours(local(d))
    ]
    assert late == []


@pytest.mark.parametrize("name", LIBRARY)
def test_library_keeps_the_daily_cap_of_three_per_member(name):
    # at most three ordinary messages per member per day of their own calendar
    per_day = Counter(
        (d["member"], local(d).date())
        for d in deliveries(name)
        if d["member"] and (name, d["step"]) not in URGENT
    )
    assert max(per_day.values(), default=0) <= 3, per_day.most_common(3)


# onboarding ---------------------------------------------------------------------------------------
def test_onboarding_welcomes_every_newcomer_once_with_rules_and_a_group_intro():
    # each newcomer gets one welcome (variant a or b), the rules, and an intro in the group
    newcomers = ["u013", "u014", "u015"]
    assert sorted(d["member"] for d in step("onboarding", "welcome-dm")) == newcomers
    assert {d["variant"] for d in step("onboarding", "welcome-dm")} <= {"a", "b"}
    assert sorted(d["member"] for d in step("onboarding", "rules-dm")) == newcomers
    assert len(step("onboarding", "group-intro")) == 3


def test_onboarding_welcome_waits_for_morning_after_a_late_join():
    # 黄丽 joined at 23:10: her welcome and rules arrive at 08:00 the next morning
    assert [when(d) for d in step("onboarding", "welcome-dm") if d["member"] == "u014"] == [
        ("2026-12-03", "08:00")
    ]
    assert [when(d) for d in step("onboarding", "rules-dm") if d["member"] == "u014"] == [
        ("2026-12-03", "08:00")
    ]


def test_onboarding_nudges_only_the_silent_and_congratulates_first_posts():
    # 吴磊 posted within the hour: no nudge; 黄丽 and Emily stayed silent 3 days: one nudge each
    assert sorted(d["member"] for d in step("onboarding", "nudge-dm")) == ["u014", "u015"]
    assert sorted(d["member"] for d in step("onboarding", "first-post-congrats")) == [
        "u013",
        "u015",
    ]


def test_onboarding_tells_moderators_about_a_newcomer_silent_for_seven_days():
    # only 黄丽 never posted: both moderators hear about her once, about a week after she joined
    reports = step("onboarding", "report-silent")
    assert sorted(d["member"] for d in reports) == ["u001", "u002"]
    assert all("u014" in d["text"] for d in reports)
    assert {when(d) for d in reports} == {("2026-12-10", "08:00")}


# checkin-challenge --------------------------------------------------------------------------------
def test_checkin_challenge_posts_kickoff_leaderboards_and_summary_on_schedule():
    # kick-off on day 1 at 08:30, a leaderboard every Sunday 20:00, the summary on the last evening
    assert [when(d) for d in step("checkin-challenge", "kickoff-post")] == [("2026-12-01", "08:30")]
    boards = [when(d) for d in step("checkin-challenge", "weekly-leaderboard")]
    assert boards == [("2026-12-06", "20:00"), ("2026-12-13", "20:00"), ("2026-12-20", "20:00")]
    assert all(date.fromisoformat(day).weekday() == 6 for day, _ in boards)
    assert [when(d) for d in step("checkin-challenge", "final-summary")] == [
        ("2026-12-21", "21:30")
    ]


def _checkins() -> list[dict[str, Any]]:
    """Check-ins of challenge participants: bot check-ins and group messages with 打卡."""
    readers = {mid for mid, row in roster().items() if "reading" in row["tags"].split(";")}
    return [
        e
        for e in events("checkin-challenge")
        if e["member"] in readers
        and (e["type"] == "checkin.posted" or "打卡" in e["data"].get("text", ""))
    ]


def test_checkin_challenge_reminds_at_21_local_only_those_who_have_not_checked_in():
    # the nightly reminder comes at 21:00 in each member's own timezone, never after a check-in that day
    checked: dict[str, set[date]] = defaultdict(set)
    for e in _checkins():
        if event_local(e).time() < time(21, 0):
            checked[e["member"]].add(event_local(e).date())
    reminders = step("checkin-challenge", "nightly-reminder")
    assert reminders
    for d in reminders:
        at = local(d)
        assert at.strftime("%H:%M") == "21:00", d
        assert at.date() not in checked[d["member"]], d


def test_checkin_challenge_reminds_only_participants_and_gives_up_after_three_nights():
    # only `reading` members are reminded, and at most three times since their last check-in
    readers = {mid for mid, row in roster().items() if "reading" in row["tags"].split(";")}
    for d in step("checkin-challenge", "nightly-reminder"):
        assert d["member"] in readers
        at = datetime.fromisoformat(d["at"])
        last = max(
            [
                datetime.fromisoformat(e["at"])
                for e in _checkins()
                if e["member"] == d["member"] and datetime.fromisoformat(e["at"]) < at
            ],
            default=None,
        )
        since = [
            r
            for r in step("checkin-challenge", "nightly-reminder")
            if r["member"] == d["member"]
            and (last is None or datetime.fromisoformat(r["at"]) > last)
            and datetime.fromisoformat(r["at"]) <= at
        ]
        assert len(since) <= 3, (d["member"], d["at"])


def test_checkin_challenge_confirms_each_day_once_and_answers_a_second_check_in_briefly():
    # one "checked in" reply per member and check-in day; a second check-in that day gets the short reply
    days: dict[str, set[date]] = defaultdict(set)
    total: Counter[str] = Counter()
    for e in _checkins():
        if e["member"] not in opted_out():
            days[e["member"]].add(event_local(e).date())
            total[e["member"]] += 1
    done = Counter(d["member"] for d in step("checkin-challenge", "checkin-done"))
    assert done == {m: len(v) for m, v in days.items()}
    again = Counter(d["member"] for d in step("checkin-challenge", "already-checked-in"))
    assert again == {m: n - len(days[m]) for m, n in total.items() if n > len(days[m])}
    seventh = [
        d["text"]
        for d in step("checkin-challenge", "checkin-done")
        if d["member"] == "u003" and when(d)[0] == "2026-12-07"
    ]
    # 李雷's seventh day in a row earns the 7-day streak badge
    assert len(seventh) == 1 and "连续 7 天" in seventh[0] and "徽章" in seventh[0]


# crisis-response ----------------------------------------------------------------------------------
def test_crisis_pages_both_moderators_at_once_even_at_night():
    # the page goes out at 23:05 to both moderators, inside quiet hours, because it is urgent
    pages = step("crisis-response", "page-moderators")
    assert sorted(d["member"] for d in pages) == ["u001", "u002"]
    assert {when(d) for d in pages} == {("2026-12-10", "23:05")}


def test_crisis_escalates_to_the_admin_after_fifteen_silent_minutes():
    # nobody acknowledged by 23:20: the admin (only) is paged; the 23:25 acknowledgement stops further warnings
    assert [(d["member"], when(d)) for d in step("crisis-response", "escalate-admins")] == [
        ("u001", ("2026-12-10", "23:20"))
    ]
    assert step("crisis-response", "unacknowledged-warning") == []


def test_crisis_informs_the_group_then_follows_up_and_asks_for_a_postmortem():
    # holding statement when acknowledged, follow-up two hours later, post-mortem reminder next morning
    assert [when(d) for d in step("crisis-response", "holding-statement")] == [
        ("2026-12-10", "23:25")
    ]
    assert [when(d) for d in step("crisis-response", "follow-up")] == [("2026-12-11", "01:25")]
    postmortem = step("crisis-response", "postmortem-reminder")
    assert sorted(d["member"] for d in postmortem) == ["u001", "u002"]
    assert {when(d) for d in postmortem} == {("2026-12-12", "08:00")}


# daily-brief --------------------------------------------------------------------------------------
def test_daily_brief_morning_0830_and_evening_2100_on_weekdays_only():
    # two working weeks: a morning brief at 08:30 and an evening brief at 21:00 each weekday, none at weekends
    weekdays = [date(2026, 12, d).isoformat() for d in (14, 15, 16, 17, 18, 21, 22, 23, 24, 25)]
    assert [when(d) for d in step("daily-brief", "morning-brief")] == [
        (day, "08:30") for day in weekdays
    ]
    assert [when(d) for d in step("daily-brief", "evening-brief")] == [
        (day, "21:00") for day in weekdays
    ]
    assert all(d["to"] == "channel" and d["channel"] == "group" for d in deliveries("daily-brief"))


def test_daily_brief_never_posts_in_quiet_hours():
    # the group is asleep from 22:00 to 08:00 Beijing time: no brief then
    assert not any(in_quiet_hours(local(d)) for d in deliveries("daily-brief"))


def test_daily_brief_friday_evening_looks_ahead_to_monday():
    # the Friday evening brief announces Monday's agenda, the others tomorrow's
    for d in step("daily-brief", "evening-brief"):
        friday = local(d).weekday() == 4
        assert ("下周一" in d["text"]) == friday, d["at"]


def test_daily_brief_drops_a_notice_after_its_date():
    # the year-end book club notice shows up to 19 December and not after
    for d in step("daily-brief", "morning-brief"):
        shown = "年终线上读书会" in d["text"]
        assert shown == (local(d).date() <= date(2026, 12, 19)), d["at"]


# weekly-topic -------------------------------------------------------------------------------------
def test_weekly_topic_reminds_only_that_weeks_host_on_tuesday_evening():
    # Tuesday 20:00 Beijing time, one DM to the host of that Wednesday, none in the week without a host
    hosts = [
        (datetime.fromisoformat(d["at"]).astimezone(SHANGHAI).date().isoformat(), d["member"])
        for d in step("weekly-topic", "host-reminder")
    ]
    assert hosts == [
        ("2026-12-01", "u003"),
        ("2026-12-08", "u004"),
        ("2026-12-15", "u008"),
        ("2026-12-29", "u002"),
    ]
    assert {
        datetime.fromisoformat(d["at"]).astimezone(SHANGHAI).strftime("%a %H:%M")
        for d in step("weekly-topic", "host-reminder")
    } == {"Tue 20:00"}


def test_weekly_topic_posts_every_wednesday_at_20_with_an_open_floor_when_nobody_hosts():
    # five Wednesdays: four topics and one open floor (23 December), all at 20:00
    topics = [when(d) for d in step("weekly-topic", "topic-post")]
    assert topics == [
        (day, "20:00") for day in ("2026-12-02", "2026-12-09", "2026-12-16", "2026-12-30")
    ]
    assert [when(d) for d in step("weekly-topic", "open-floor-post")] == [("2026-12-23", "20:00")]


def test_weekly_topic_recap_on_thursday_noon_after_hosted_sessions_only():
    # a recap prompt each Thursday at 12:00 that follows a session; none after the open floor
    recaps = [when(d) for d in step("weekly-topic", "recap-prompt")]
    assert recaps == [
        (day, "12:00") for day in ("2026-12-03", "2026-12-10", "2026-12-17", "2026-12-31")
    ]
    assert all(date.fromisoformat(day).weekday() == 3 for day, _ in recaps)


def test_weekly_topic_ignores_group_chatter():
    # schedules only: 13 deliveries over five weeks whatever people write
    assert Counter(d["step"] for d in deliveries("weekly-topic")) == {
        "host-reminder": 4,
        "topic-post": 4,
        "open-floor-post": 1,
        "recap-prompt": 4,
    }


# re-engagement ------------------------------------------------------------------------------------
def _last_activity(member: str, before: date) -> date:
    start = date(2026, 12, 1)  # the first scan starts counting for everyone
    seen = [
        event_local(e).date()
        for e in events("re-engagement")
        if e["member"] == member and event_local(e).date() < before
    ]
    return max([start, *seen])


def test_re_engagement_nudges_only_after_fourteen_silent_days():
    # a "we miss you" DM goes only to someone silent for at least 14 days, at 10:00 their time
    nudges = step("re-engagement", "miss-you-dm")
    assert nudges and min(local(d).date() for d in nudges) == date(2026, 12, 15)
    for d in nudges:
        at = local(d)
        assert at.strftime("%H:%M") == "10:00", d
        assert (at.date() - _last_activity(d["member"], at.date())).days >= 14, d


def test_re_engagement_leaves_active_members_moderators_and_opted_out_alone():
    # regular posters, check-in-only and reaction-only members, moderators and opted-out members get no nudge
    nudged = {d["member"] for d in step("re-engagement", "miss-you-dm")}
    assert nudged == {"u005", "u006", "u007", "u008", "u012"}
    assert not nudged & {"u001", "u002", "u003", "u004", "u009", "u010", "u011"}


def test_re_engagement_welcomes_back_whoever_responds_in_any_way():
    # a post or even just a reaction after the nudge earns a welcome back, right away
    back = {d["member"]: when(d) for d in step("re-engagement", "welcome-back-dm")}
    assert back == {
        "u005": ("2026-12-16", "19:30"),
        "u006": ("2026-12-17", "08:45"),
        "u008": ("2026-12-17", "08:30"),
    }


def test_re_engagement_weekly_digest_lists_the_inactive_for_moderators():
    # Monday 10:30 the moderators get one digest, only in weeks with someone tagged inactive
    digests = step("re-engagement", "inactive-digest")
    assert sorted({when(d) for d in digests}) == [("2026-12-28", "10:30"), ("2027-01-04", "10:30")]
    assert all(d["member"] in ("u001", "u002") for d in digests)
    first = [d["text"] for d in digests if d["at"].startswith("2026-12-28")]
    assert all("u007" in t and "u012" in t for t in first)
    last = [d["text"] for d in digests if d["at"].startswith("2027-01-04")]
    # u012 still inactive; u007 no longer, but listed as back this week
    assert all("周杰（u012）：最后活跃" in t and "赵敏（u007）：2026-12-30 重新活跃" in t for t in last)


def test_re_engagement_tells_moderators_in_the_next_digest_when_an_inactive_member_returns():
    # 赵敏 posts again on 30 December: she is welcomed back at once; the moderators read
    # it in the next Monday digest, not in a DM of its own (which kept her night, not
    # theirs, and took from their daily cap)
    assert step("re-engagement", "returned-to-moderators") == []
    assert [(d["member"], when(d)) for d in step("re-engagement", "returned-welcome-dm")] == [
        ("u007", ("2026-12-30", "20:15"))
    ]


# feedback-survey ----------------------------------------------------------------------------------
AUDIENCE_SURVEY = ["u003", "u004", "u005", "u006", "u007", "u008", "u009", "u010", "u012"]


def test_feedback_survey_announces_and_invites_everyone_but_moderators_once():
    # one group announcement Monday 10:00, one personal invitation to each member (not moderators, not opted out)
    assert [when(d) for d in step("feedback-survey", "group-announcement")] == [
        ("2026-12-14", "10:00")
    ]
    invites = step("feedback-survey", "invite-dm")
    assert sorted(d["member"] for d in invites) == AUDIENCE_SURVEY
    beijing = {
        datetime.fromisoformat(d["at"]).astimezone(SHANGHAI).strftime("%m-%d %H:%M")
        for d in invites
        if d["member"] != "u008"
    }
    assert beijing == {"12-14 10:30"}


def test_feedback_survey_reminds_the_evening_before_the_deadline_only_those_without_an_answer():
    # 17 December 20:00 their time, only to invited members who have not answered by then
    reminders = step("feedback-survey", "reminder-dm")
    assert sorted(d["member"] for d in reminders) == ["u005", "u007", "u009", "u010", "u012"]
    assert {when(d) for d in reminders} == {("2026-12-17", "20:00")}


def test_feedback_survey_thanks_each_answer_once_and_reports_to_moderators():
    # first answers only, nothing for another poll or after the window; results to moderators Friday 20:00
    thanks = step("feedback-survey", "thank-you-dm")
    assert sorted(d["member"] for d in thanks) == ["u003", "u004", "u005", "u006", "u008", "u009"]
    # 韩梅梅 answered at 23:30: thanked at 08:00
    assert [when(d) for d in thanks if d["member"] == "u004"] == [("2026-12-15", "08:00")]
    results = step("feedback-survey", "results-to-moderators")
    assert sorted(d["member"] for d in results) == ["u001", "u002"]
    assert {when(d) for d in results} == {("2026-12-18", "20:00")}
    assert all("6 / 9" in d["text"] for d in results)


# referral -----------------------------------------------------------------------------------------
def test_referral_thanks_each_credited_invite_once():
    # 李雷 brought ten, 刘洋 three, Anna one; rejoins, self-invites, duplicates and unknown inviters earn nothing
    assert Counter(d["member"] for d in step("referral", "referral-thanks")) == {
        "u003": 10,
        "u006": 3,
        "u008": 1,
    }


def test_referral_rewards_milestones_and_tells_moderators_about_an_ambassador():
    # badges at the 1st, 3rd and 10th invite; the moderators hear about the 10th so they can send the gift
    li_lei = [d["text"] for d in step("referral", "referral-thanks") if d["member"] == "u003"]
    badges = [i + 1 for i, text in enumerate(li_lei) if "🏅" in text or "🏆" in text]
    assert badges == [1, 3, 10]
    told = step("referral", "ambassador-to-moderators")
    assert sorted(d["member"] for d in told) == ["u001", "u002"]
    assert all("u003" in d["text"] for d in told)
    assert {when(d) for d in told} == {("2026-12-20", "15:00")}


def test_referral_thanks_wait_for_morning_and_the_daily_cap():
    # a join at 23:15 is thanked at 08:00; of four joins one evening, the fourth thank-you waits for the next morning
    times = [when(d) for d in step("referral", "referral-thanks") if d["member"] == "u003"]
    assert ("2026-12-06", "08:00") in times
    assert [t for t in times if t[0] == "2026-12-12"] == [
        ("2026-12-12", "19:00"),
        ("2026-12-12", "19:05"),
        ("2026-12-12", "19:20"),
    ]
    assert ("2026-12-13", "08:00") in times


# event-campaign -----------------------------------------------------------------------------------
def test_event_campaign_group_posts_follow_the_event_timeline():
    # warm-ups 7 days and 1 day before at 20:00, live at 20:00, thanks at 21:30, all in the group
    assert [when(d) for d in step("event-campaign", "warmup-post")] == [
        ("2026-12-12", "20:00"),
        ("2026-12-18", "20:00"),
    ]
    assert [when(d) for d in step("event-campaign", "live-post")] == [("2026-12-19", "20:00")]
    assert [when(d) for d in step("event-campaign", "thanks-post")] == [("2026-12-19", "21:30")]


def test_event_campaign_confirms_new_sign_ups_only():
    # a confirmation per new sign-up; none for a repeat, another event, a late one or an opted-out member
    assert sorted(d["member"] for d in step("event-campaign", "signup-confirmation")) == [
        "u005",
        "u006",
        "u009",
        "u012",
    ]
    assert [
        when(d) for d in step("event-campaign", "signup-confirmation") if d["member"] == "u012"
    ] == [("2026-12-16", "08:00")]


def test_event_campaign_reminds_every_registered_member_once_at_a_waking_hour():
    # the 1-hour reminder at 19:00 Beijing time; New York (06:00 there) gets the early one the evening before
    registered = {"u003", "u004", "u005", "u006", "u007", "u008", "u009", "u012"}
    one_hour = step("event-campaign", "reminder-1h")
    early = step("event-campaign", "reminder-early")
    assert {
        datetime.fromisoformat(d["at"]).astimezone(SHANGHAI).strftime("%m-%d %H:%M")
        for d in one_hour
    } == {"12-19 19:00"}
    assert [(d["member"], when(d)) for d in early] == [("u009", ("2026-12-18", "20:00"))]
    reminded = Counter(d["member"] for d in one_hour + early)
    assert set(reminded) == registered and set(reminded.values()) == {1}


# the members examples/event-campaign.events.jsonl signs up for the event (besides the moderators)
SIGNED_UP = ["u003", "u004", "u005", "u006", "u007", "u008", "u009", "u012"]


def test_event_campaign_thanks_registered_members_and_reminds_moderators_to_run_the_retro():
    # after the event a DM with the replay to each registered member; two days later the retro reminder
    thanks = step("event-campaign", "thanks-dm")
    assert sorted(d["member"] for d in thanks) == SIGNED_UP
    retro = step("event-campaign", "retro-reminder")
    assert sorted(d["member"] for d in retro) == ["u001", "u002"]
    assert {when(d) for d in retro} == {("2026-12-21", "10:00")}
    assert all("报名人数：9" in d["text"] for d in retro)


def test_event_campaign_sends_no_dm_to_members_who_did_not_register():
    # people who never signed up (or only for another event) get no DM
    dms = {d["member"] for d in deliveries("event-campaign") if d["member"]} - {"u001", "u002"}
    assert "u010" not in dms and dms <= set(SIGNED_UP)


# faq-autoreply ------------------------------------------------------------------------------------
def _asker(d: dict[str, Any]) -> str:
    """The member an answer @-mentions (names may hold spaces: "Anna Schmidt")."""
    names = sorted(((row["name"], mid) for mid, row in roster().items()), key=lambda n: -len(n[0]))
    return next(mid for name, mid in names if d["text"].startswith(f"@{name} "))


def test_faq_answers_in_the_group_mentioning_the_asker_in_their_language():
    # each answer is a group post starting with @name, English for English speakers
    answers = step("faq-autoreply", "faq-answer")
    assert all(d["to"] == "channel" and d["text"].startswith("@") for d in answers)
    english = [d for d in answers if _asker(d) in ("u008", "u009")]
    assert len(english) == 2 and all("Knowledge-share night" in d["text"] for d in english)


def test_faq_limits_replies_per_member_per_day_and_never_repeats_a_topic():
    # at most three answers per member per day, each topic once a day; a new day starts afresh
    per_day = Counter(
        (_asker(d), local(d, _asker(d)).date()) for d in step("faq-autoreply", "faq-answer")
    )
    assert max(per_day.values()) <= 3
    assert per_day[("u010", date(2026, 12, 9))] == 3 and per_day[("u010", date(2026, 12, 10))] == 1
    u010 = [
        d["text"]
        for d in step("faq-autoreply", "faq-answer")
        if _asker(d) == "u010" and d["at"].startswith("2026-12-09")
    ]
    assert len(set(u010)) == 3


def test_faq_ignores_moderators_opted_out_members_and_chit_chat():
    # moderators answer themselves, opted-out members are not @-mentioned, "有时间吗" is no question
    askers = Counter(_asker(d) for d in step("faq-autoreply", "faq-answer"))
    assert askers == {
        "u006": 1,
        "u005": 2,
        "u008": 1,
        "u004": 1,
        "u010": 4,
        "u009": 1,
        "u003": 1,
        "u012": 1,
    }


def test_faq_question_in_quiet_hours_is_answered_in_the_morning():
    # 韩梅梅 asked at 23:30: the answer goes to the group at 08:00
    assert [when(d) for d in step("faq-autoreply", "faq-answer") if _asker(d) == "u004"] == [
        ("2026-12-09", "08:00")
    ]


def test_library_gallery_figures_are_those_of_the_golden_runs():
    # docs/playbooks.md shows, per playbook, the deliveries per step of its golden dry run
    text = (ROOT / "docs" / "playbooks.md").read_text(encoding="utf-8")
    for name in LIBRARY:
        section = text.split(f"\n## {name} — ", 1)[1].split("\n## ", 1)[0]
        rows = re.findall(r"^\| `([a-z0-9-]+)` \| \w+ \| [^|]+ \| (\d+) \|$", section, re.M)
        assert dict((s, int(n)) for s, n in rows) == Counter(d["step"] for d in deliveries(name)), (
            name
        )
        assert f"| **total** | | | **{len(deliveries(name))}** |" in section, name
        assert f"| `{name}` |" in text and f"| {len(deliveries(name))} |" in text
