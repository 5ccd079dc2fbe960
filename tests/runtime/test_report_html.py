from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cmtyflow.runtime.report_html import render_report, write_report

TZ = timezone(timedelta(hours=8))
START = datetime(2026, 12, 1, tzinfo=TZ)


def delivery(at: datetime, step: str, member: str | None, text: str, **extra) -> dict:
    d = {
        "kind": "delivery",
        "at": at.isoformat(),
        "playbook": "welcome",
        "flow": "onboarding",
        "step": step,
        "channel": "wechat" if member else "announcements",
        "adapter": "console",
        "member": member,
        "to": f"user:{member}" if member else "#announcements",
        "text": text,
        "variant": None,
    }
    d.update(extra)
    return d


def summary_for(deliveries: list[dict], days: int = 3) -> dict:
    per_day = Counter(d["at"][:10] for d in deliveries)
    return {
        "start": START.isoformat(),
        "end": (START + timedelta(days=days)).isoformat(),
        "days": days,
        "deliveries": len(deliveries),
        "per_day": dict(sorted(per_day.items())),
        "per_step": dict(Counter(d["step"] for d in deliveries)),
        "per_channel": dict(Counter(d["channel"] for d in deliveries)),
        "deferred": {"quiet_hours": 2, "daily_cap": 1},
        "dropped": {"late-signup": 1},
        "goals": {"joined_call": {"reached": 3, "of": 4}},
        "pending": 5,
        "warnings": ["step remind has no id"],
    }


@pytest.fixture
def sample() -> list[dict]:
    return [
        delivery(
            START + timedelta(hours=21),
            "welcome",
            "m1",
            "<script>alert(1)</script>",
            member_name="Alice",
        ),
        delivery(
            START + timedelta(hours=22),
            "welcome",
            "m2",
            "{{ 7*7 }} 你好，欢迎加入社区！",
            member_name="王小明",
            variant="b",
        ),
        delivery(
            START + timedelta(days=1, hours=9), "remind", "m1", "see https://example.org/x?a=1&b=2"
        ),
        delivery(START + timedelta(days=2, hours=9), "remind", "m2", "reminder"),
        delivery(START + timedelta(days=2, hours=10), "welcome", "m3", "hi Carol"),
        delivery(START + timedelta(days=2, hours=12), "digest", None, "weekly digest"),
    ]


def test_escapes_texts_and_shows_them_literally(sample):
    doc = render_report(sample, summary_for(sample), title="Welcome <dry run> & more")
    assert "<script>alert(1)</script>" not in doc
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert "{{ 7*7 }}" in doc
    assert "你好，欢迎加入社区！" in doc and "王小明" in doc
    assert "<title>Welcome &lt;dry run&gt; &amp; more</title>" in doc
    assert doc.count("<script>") == 1


def test_document_basics(sample):
    doc = render_report(sample, summary_for(sample), title="t")
    assert doc.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in doc
    for font in ('"PingFang SC"', '"Microsoft YaHei"', '"Noto Sans CJK SC"', "sans-serif"):
        assert font in doc
    assert '<input id="q" type="search"' in doc
    assert "addEventListener('input'" in doc


def test_no_external_urls_outside_delivery_text(sample):
    doc = render_report(sample, summary_for(sample), title="t")
    escaped_text = html.escape("see https://example.org/x?a=1&b=2", quote=True)
    assert escaped_text in doc
    rest = doc.replace(escaped_text, "")
    assert "http://" not in rest and "https://" not in rest
    assert "xmlns" not in doc and "@import" not in doc and "src=" not in doc


def test_chart_has_one_rect_per_nonzero_day_step(sample):
    doc = render_report(sample, summary_for(sample), title="t")
    bars = re.findall(r'<rect class="bar"[^>]*><title>([^<]*)</title>', doc)
    expected = Counter((d["at"][:10], d["step"]) for d in sample)
    assert len(bars) == len(expected) == 5
    for (day, step), n in expected.items():
        assert f"{day} · {step}: {n} / " in " | ".join(bars)
    assert doc.count('<ul class="legend">') == 1
    for step in ("welcome", "remind", "digest"):
        assert f"</i>{step}</li>" in doc
    assert ">12-01</text>" in doc and ">12-03</text>" in doc


def test_summary_tables_and_unknown_keys(sample):
    summary = summary_for(sample)
    summary["engine"] = "virtual-clock"
    summary["lateness"] = {"wait-1": "PT5M"}
    summary["skipped_firings"] = ["a", "b"]
    doc = render_report(sample, summary, title="t")
    assert "<h3>per_step</h3>" in doc and "<h3>deferred</h3>" in doc
    assert "<td>quiet_hours</td>" in doc and "<td>late-signup</td>" in doc
    assert "<td>joined_call</td>" in doc and "75%" in doc
    assert "step remind has no id" in doc
    assert "<h3>other</h3>" in doc and "virtual-clock" in doc
    assert "<h3>lateness</h3>" in doc and "PT5M" in doc
    assert "<h3>skipped_firings</h3>" in doc


@pytest.mark.parametrize(
    "summary",
    [{}, {"days": 0}, {"per_day": "bad", "goals": {"g": 3}, "deferred": None, "warnings": "x"}],
)
def test_missing_or_odd_summary_keys_do_not_crash(sample, summary):
    doc = render_report(sample, summary, title="t")
    assert doc.count('<rect class="bar"') == 5


def test_transcript_groups_members_in_time_order(sample):
    shuffled = list(reversed(sample))
    doc = render_report(shuffled, summary_for(sample), title="t")
    sections = re.findall(r'<section class="member" data-key="([^"]*)">(.*?)</section>', doc)
    keys = [k for k, _ in sections]
    assert keys == ["channel", "m1 alice", "m2 王小明", "m3"]
    m1 = sections[1][1]
    assert m1.index("alert(1)") < m1.index("example.org")
    assert ">2026-12-01 21:00 +08:00<" in m1  # with the offset the time is in
    assert "#announcements" in sections[0][1]
    assert "<td>b</td>" in sections[2][1]


def test_members_in_counting_order_and_the_page_in_the_playbooks_language():
    rows = [delivery(START, "hi", m, "x") for m in ("u10", "u2", "u1", "ann")]
    doc = render_report(rows, summary_for(rows), title="t", lang="zh-CN")
    keys = re.findall(r'<section class="member" data-key="([^"]*)">', doc)
    assert keys == ["ann", "u1", "u2", "u10"]  # u10 came before u2
    assert doc.startswith('<!DOCTYPE html>\n<html lang="zh-CN">')


def test_empty_deliveries_renders_clear_note():
    doc = render_report([], {}, title="nothing")
    assert "No deliveries" in doc
    assert '<rect class="bar"' not in doc and "<svg" not in doc
    assert '<section class="member"' not in doc


def test_transcript_cap_with_note_and_large_input_is_fast():
    import time

    deliveries = [
        delivery(START + timedelta(minutes=i), f"s{i % 7}", f"m{i % 5000:04d}", f"text {i}")
        for i in range(100_000)
    ]
    t0 = time.perf_counter()
    doc = render_report(deliveries, {"days": 70}, title="big")
    assert time.perf_counter() - t0 < 20
    assert doc.count('<section class="member"') == 2000
    assert "3,000 more members (60,000 deliveries) were left out" in doc
    small = render_report(deliveries[:50], {}, title="small", max_members=3)
    assert small.count('<section class="member"') == 3
    assert "47 more members (47 deliveries)" in small


def test_write_report_is_atomic_utf8(tmp_path, sample):
    out = tmp_path / "report.html"
    out.write_text("old", encoding="utf-8")
    write_report(out, sample, summary_for(sample), title="报告")
    text = out.read_bytes().decode("utf-8")
    assert "<title>报告</title>" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def decode_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and unfiltered rows of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, [], 0
    height = colour_type = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour_type in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        else:
            assert ftype == 0, f"unknown PNG filter {ftype}"
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def browser_deliveries() -> list[dict]:
    steps = ["欢迎 welcome", "reminder", "digest", "follow-up", "survey"]
    out = []
    for i in range(200):
        day = i * 21 // 200
        at = START + timedelta(days=day, hours=9 + i % 12, minutes=i % 60)
        step = steps[(i * 7 + day) % len(steps)]
        member = None if i % 25 == 0 else f"m{i % 30:02d}"
        out.append(
            delivery(
                at,
                step,
                member,
                f"你好，第{i}条消息：欢迎参加社区活动！ <b>{{{{ 7*7 }}}}</b>",
                member_name=f"成员{i % 30}" if member else None,
            )
        )
    return out


needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (Debian package: chromium)"
)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [
        shutil.which("chromium") or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, timeout=60, check=False)


def write_browser_report(tmp_path: Path) -> Path:
    deliveries = browser_deliveries()
    report = tmp_path / "report.html"
    write_report(report, deliveries, summary_for(deliveries, days=21), title="社区活动 dry run")
    return report


@pytest.mark.slow
@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path):
    report = write_browser_report(tmp_path)
    shot = tmp_path / "shot.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    assert shot.exists(), proc.stderr.decode("utf-8", "replace")[-2000:]
    width, height, bpp, rows = decode_png(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    colours: set[bytes] = set()
    non_white = 0
    for row in rows:
        for x in range(0, len(row), bpp):
            px = row[x : x + 3]
            colours.add(px)
            if px != b"\xff\xff\xff":
                non_white += 1
    assert len(colours) >= 5
    assert non_white / (width * height) > 0.02


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize(
    ("query", "visible", "count"),
    [
        ("成员7", ["m07 成员7"], "1 / 31 groups match"),
        ("第50条", ["channel"], "1 / 31 groups match"),
        ("M2", [f"m{i:02d} 成员{i}" for i in range(20, 30)], "10 / 31 groups match"),
    ],
)
def test_search_box_filters_in_headless_chromium(tmp_path, query, visible, count):
    report = write_browser_report(tmp_path)
    typed = report.with_name("typed.html")
    script = (
        '<script>var b=document.getElementById("q");'
        f'b.value={json.dumps(query)};b.dispatchEvent(new Event("input"));</script></body>'
    )
    typed.write_text(report.read_text("utf-8").replace("</body>", script), "utf-8")
    proc = chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", typed.as_uri())
    dom = proc.stdout.decode("utf-8")
    sections = re.findall(r'<section class="member" data-key="([^"]*)"( hidden="")?>', dom)
    assert len(sections) == 31, proc.stderr.decode("utf-8", "replace")[-2000:]
    assert [key for key, hidden in sections if not hidden] == visible
    assert f'id="qcount">{count}<' in dom


def test_a_report_for_chinese_playbooks_speaks_chinese(sample):
    """The page was tagged zh-CN, and its headings were the summary's JSON keys
    (per_day, queued_behind_active) under "key / value", all of it in English."""
    doc = render_report(sample, summary_for(sample), title="读书打卡：演练", lang="zh-CN")
    for words in ("每日送达（按步骤）", "<h2>汇总</h2>", "<h2>逐条记录</h2>", "<h3>每日送达</h3>", "<th>日期</th>",
                  "<th>送达</th>", "<span>触达成员</span>", 'data-says="组匹配"', "<th>内容</th>"):
        assert words in doc, words
    assert "per_day" not in doc and "Transcript" not in doc
    english = render_report(sample, summary_for(sample), title="t", lang="en")
    assert "<h3>per_day</h3>" in english and "<h2>Transcript</h2>" in english  # unchanged in English
