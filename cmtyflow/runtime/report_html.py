"""Self-contained HTML report for ``cmtyflow dry-run --report FILE.html``.

The document carries its own CSS, JavaScript and an SVG chart drawn here; it
references no external resource, so it can be mailed or archived as one file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MAX_MEMBERS", "render_report", "write_report"]

Record = Mapping[str, Any]
DEFAULT_MAX_MEMBERS = 2000

# fmt: off
_PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#86bcb6", "#d37295", "#8cd17d", "#499894", "#f1ce63", "#a0cbe8",
)
# fmt: on
_FONT_STACK = (
    '-apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "PingFang SC", '
    '"Hiragino Sans GB", "Microsoft YaHei", "Noto Sans CJK SC", "Noto Sans SC", '
    '"Source Han Sans SC", "WenQuanYi Micro Hei", sans-serif'
)
_TABLE_HEADS = {
    "per_day": ("day", "deliveries"),
    "per_step": ("step", "deliveries"),
    "per_channel": ("channel", "deliveries"),
    "deferred": ("reason", "messages"),
    "dropped": ("trigger", "dropped"),
}
# The report's own words in Chinese (``lang`` zh-*): the first communities it serves
# read Chinese. Names of the summary's tables and of their keys, column heads, and the
# rest of the page's text; anything not listed stays as it is.
_ZH = {
    "Deliveries per day by step": "每日送达（按步骤）", "Summary": "汇总", "Transcript": "逐条记录",
    "No deliveries: the dry run planned no messages in this window.": "没有送达：这次演练在此时段内没有安排任何消息。",
    "No deliveries, so there is no transcript.": "没有送达，因此没有逐条记录。",
    "The summary has no further details.": "汇总没有更多内容。",
    "per_day": "每日送达", "per_step": "各步骤送达", "per_channel": "各频道送达", "per_variant": "各版本送达",
    "deferred": "延后发送", "dropped": "丢弃（mode: single）", "queued_behind_active": "排队等待（mode: queued）",
    "runs": "运行", "skipped": "跳过", "goals": "目标", "warnings": "警告", "other": "其他", "input_problems": "输入问题",
    "day": "日期", "deliveries": "送达", "step": "步骤", "channel": "频道", "reason": "原因", "messages": "消息数",
    "trigger": "触发器", "key": "项目", "value": "数值", "goal": "目标", "reached": "达成", "of": "共", "rate": "比例",
    "none": "无", "quiet_hours": "免打扰时段", "daily_cap": "每日上限", "started": "已开始", "done": "已完成",
    "stopped": "已停止", "failed": "失败", "cancelled": "已取消", "active_at_end": "结束时仍在进行",
    "opted_out": "已退订", "left": "已离开", "outside_audience": "不在受众内", "outside_window": "不在时间窗口内",
    "filtered_by_where": "被 where 条件过滤", "events_outside_span": "时段外的事件", "duplicate_events": "重复事件",
    "members reached": "触达成员", "steps": "步骤", "channels": "频道", "pending after the window": "时段结束后待发",
    "Dry run: ": "演练：", "days": "天", "span not given": "未给出时段", "(no step)": "（无步骤）",
    "Search member id, name or text…": "搜索成员 ID、名字或内容…", "Search the transcript": "搜索逐条记录",
    "Channel destinations (no member)": "发往频道（无成员）", "member": "成员", "time": "时间", "to": "发往",
    "variant": "版本", "text": "内容", "groups match": "组匹配",
    "Transcript limited to {shown} members: {left} more members ({hidden} deliveries) were left out and are not "
    "searchable here; they are still counted in the chart and summary.":
    "逐条记录只列出 {shown} 位成员：另有 {left} 位成员（{hidden} 条送达）未列出，无法在此搜索；图表和汇总仍计入他们。",
}


def _words(lang: str) -> dict[str, str]:
    return _ZH if lang.lower().startswith("zh") else {}
_HEADER_KEYS = ("start", "end", "days", "deliveries", "pending")
_NO_MEMBER = "\x00channel"

_CSS = """
*{box-sizing:border-box}
body{margin:0;padding:24px 32px;font-family:__FONT__;color:#1f2933;background:#fff;
 font-size:14px;line-height:1.45}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px;
 border-bottom:1px solid #e4e7eb;padding-bottom:4px}h3{font-size:14px;margin:0 0 6px}
.span{color:#52606d;margin-bottom:12px}
.totals{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.total{background:#f5f7fa;border:1px solid #e4e7eb;border-radius:6px;padding:8px 14px;min-width:110px}
.total b{display:block;font-size:20px}.total span{color:#52606d;font-size:12px}
.note{background:#fffbea;border:1px solid #f0d878;border-radius:6px;padding:8px 12px;margin:10px 0}
.empty{background:#f5f7fa;border:1px dashed #9aa5b1;border-radius:6px;padding:16px;color:#52606d}
.chart svg{width:100%;height:auto;max-width:1200px;display:block}
.chart text{font-family:__FONT__;font-size:11px;fill:#3e4c59}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:8px 0;padding:0;list-style:none}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;
 vertical-align:-1px}
.cards{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.card{border:1px solid #e4e7eb;border-radius:6px;padding:10px 12px;max-height:360px;overflow:auto}
table{border-collapse:collapse}td,th{padding:3px 8px;text-align:left;vertical-align:top;
 border-bottom:1px solid #eef1f4}th{color:#52606d;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn li{color:#8a4b08}
#q{width:100%;max-width:520px;padding:8px 10px;font-size:14px;border:1px solid #9aa5b1;
 border-radius:6px;font-family:inherit}
#qcount{color:#52606d;margin-left:8px}
section.member{margin:14px 0;border:1px solid #e4e7eb;border-radius:6px;padding:8px 12px}
section.member table{width:100%}section.member td.t{white-space:nowrap;color:#52606d}
td.text{white-space:pre-wrap;word-break:break-word}
[hidden]{display:none!important}
""".replace("__FONT__", _FONT_STACK)

_JS = """
(function(){
var box=document.getElementById('q'),out=document.getElementById('qcount'),says=out?out.getAttribute('data-says'):'';
if(!box)return;
var secs=Array.prototype.slice.call(document.querySelectorAll('section.member')),timer=null;
function rowsOf(s){if(!s._rows){s._rows=Array.prototype.map.call(s.querySelectorAll('tbody tr'),
 function(r){return [r,r.textContent.toLowerCase()];});}return s._rows;}
function run(){var q=box.value.trim().toLowerCase(),shown=0;
 secs.forEach(function(s){var rows=rowsOf(s),key=(s.getAttribute('data-key')||'').indexOf(q)>=0,any=key;
  rows.forEach(function(p){var hit=!q||key||p[1].indexOf(q)>=0;p[0].hidden=!hit;any=any||hit;});
  s.hidden=!!q&&!any;if(!s.hidden)shown++;});
 out.textContent=q?shown+' / '+secs.length+' '+says:'';}
box.addEventListener('input',function(){clearTimeout(timer);timer=setTimeout(run,120);});
})();
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _e(json.dumps(value))
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, Mapping | list | tuple):
        return _e(json.dumps(value, ensure_ascii=False, default=str))
    return _e(value)


def _num(value: Any) -> float:
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    return 0.0


def _w(w: Mapping[str, str], text: str) -> str:
    """``text`` in the report's language (``_words``)."""
    return w.get(text, text)


def _step_of(d: Record, w: Mapping[str, str] | None = None) -> str:
    step = d.get("step")
    return _w(w or {}, "(no step)") if step is None else str(step)


def _day_of(d: Record) -> str:
    return str(d.get("at") or "")[:10]


def _parse_day(value: Any) -> date | None:
    try:
        return datetime.fromisoformat(str(value)).date()
    except (TypeError, ValueError):
        return None


def _colour(i: int) -> str:
    if i < len(_PALETTE):
        return _PALETTE[i]
    return f"hsl({(i * 137.508) % 360:.0f},55%,48%)"


def _nice_step(top: float) -> int:
    raw = max(top / 5.0, 1.0)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return int(m * mag)
    return int(10 * mag)


def _days(deliveries: Sequence[Record], summary: Record) -> list[str]:
    days: set[str] = {_day_of(d) for d in deliveries if _day_of(d)}
    per_day = summary.get("per_day")
    if isinstance(per_day, Mapping):
        days.update(str(k) for k in per_day)
    start, n = _parse_day(summary.get("start")), summary.get("days")
    if start is not None and isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 3660:
        days.update((start + timedelta(days=i)).isoformat() for i in range(n))
    return sorted(days)


def _chart(deliveries: Sequence[Record], summary: Record, w: Mapping[str, str]) -> str:
    counts: Counter[tuple[str, str]] = Counter((_day_of(d), _step_of(d, w)) for d in deliveries)
    steps = list(dict.fromkeys(_step_of(d, w) for d in deliveries))
    colours = {s: _colour(i) for i, s in enumerate(steps)}
    days = _days(deliveries, summary)
    totals: Counter[str] = Counter()
    for (day, _), c in counts.items():
        totals[day] += c
    step_y = _nice_step(max(totals.values(), default=1))
    top = max(step_y, math.ceil(max(totals.values(), default=1) / step_y) * step_y)
    left, right, upper, plot_h, plot_w = 56, 16, 14, 300, 1000
    height = upper + plot_h + 46
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.78, 1.0)
    parts = [
        f'<svg viewBox="0 0 {left + plot_w + right} {height}" role="img" '
        f'aria-label="{_e(_w(w, "Deliveries per day by step"))}">'
    ]
    for v in range(0, top + 1, step_y):
        y = upper + plot_h - v / top * plot_h
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{"#9aa5b1" if v == 0 else "#e4e7eb"}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:,}</text>'
        )
    label_every = max(1, math.ceil(len(days) * 44 / plot_w))
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        base: float = upper + plot_h
        for step in steps:
            c = counts.get((day, step), 0)
            if not c:
                continue
            h = c / top * plot_h
            base -= h
            parts.append(
                f'<rect class="bar" x="{x:.2f}" y="{base:.2f}" width="{bar_w:.2f}" '
                f'height="{h:.2f}" fill="{colours[step]}"><title>{_e(day)} · {_e(step)}: '
                f"{c:,} / {totals[day]:,}</title></rect>"
            )
        if i % label_every == 0:
            cx = left + i * slot + slot / 2
            parts.append(
                f'<text x="{cx:.1f}" y="{upper + plot_h + 16}" text-anchor="middle">'
                f"{_e(day[5:] or day)}</text>"
            )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">{_e(_w(w, "day"))}</text>'
        f'<text transform="translate(14 {upper + plot_h / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{_e(_w(w, "deliveries"))}</text></svg>'
    )
    legend = "".join(f'<li><i style="background:{colours[s]}"></i>{_e(s)}</li>' for s in steps)
    return "".join(parts) + f'<ul class="legend">{legend}</ul>'


def _kv_table(title: str, data: Mapping[Any, Any], heads: tuple[str, str], w: Mapping[str, str]) -> str:
    rows = (
        "".join(f'<tr><td>{_e(_w(w, str(k)))}</td><td class="n">{_fmt(v)}</td></tr>' for k, v in data.items())
        or f'<tr><td colspan="2">{_e(_w(w, "none"))}</td></tr>'
    )
    return (
        f'<div class="card"><h3>{_e(_w(w, title))}</h3><table><thead><tr><th>{_e(_w(w, heads[0]))}</th>'
        f"<th>{_e(_w(w, heads[1]))}</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def _list_card(title: str, items: Iterable[Any], w: Mapping[str, str], cls: str = "") -> str:
    lis = "".join(f"<li>{_fmt(i)}</li>" for i in items) or f"<li>{_e(_w(w, 'none'))}</li>"
    return f'<div class="card{cls}"><h3>{_e(_w(w, title))}</h3><ul>{lis}</ul></div>'


def _goals_card(goals: Record, w: Mapping[str, str]) -> str:
    rows = []
    for name, g in goals.items():
        if isinstance(g, Mapping):
            reached, of = g.get("reached"), g.get("of")
            rate = f"{_num(reached) / _num(of):.0%}" if _num(of) else "–"
            rows.append(
                f'<tr><td>{_e(name)}</td><td class="n">{_fmt(reached)}</td>'
                f'<td class="n">{_fmt(of)}</td><td class="n">{rate}</td></tr>'
            )
        else:
            rows.append(f'<tr><td>{_e(name)}</td><td colspan="3">{_fmt(g)}</td></tr>')
    body = "".join(rows) or f'<tr><td colspan="4">{_e(_w(w, "none"))}</td></tr>'
    heads = "".join(f"<th>{_e(_w(w, h))}</th>" for h in ("goal", "reached", "of", "rate"))
    return (
        f'<div class="card"><h3>{_e(_w(w, "goals"))}</h3><table><thead><tr>{heads}'
        f"</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _summary_tables(summary: Record, w: Mapping[str, str]) -> str:
    cards, other = [], {}
    for key, value in summary.items():
        name = str(key)
        if name in _HEADER_KEYS:
            continue
        if name == "goals" and isinstance(value, Mapping):
            cards.append(_goals_card(value, w))
        elif name == "warnings" and isinstance(value, list | tuple):
            cards.append(_list_card("warnings", value, w, " warn"))
        elif isinstance(value, Mapping):
            cards.append(_kv_table(name, value, _TABLE_HEADS.get(name, ("key", "value")), w))
        elif isinstance(value, list | tuple):
            cards.append(_list_card(name, value, w))
        else:
            other[name] = value
    if other:
        cards.append(_kv_table("other", other, ("key", "value"), w))
    if not cards:
        return f'<p class="empty">{_e(_w(w, "The summary has no further details."))}</p>'
    return f'<div class="cards">{"".join(cards)}</div>'


def _natural(member_id: str) -> list[tuple[int, int, str]]:
    """Member ids in the order people count them: u2 before u10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", member_id)]


def _sort_key(d: Record) -> tuple[float, str]:
    at = str(d.get("at") or "")
    try:
        return (datetime.fromisoformat(at).timestamp(), at)
    except ValueError:
        return (math.inf, at)


def _transcript(deliveries: Sequence[Record], max_members: int, w: Mapping[str, str]) -> str:
    groups: dict[str, list[Record]] = {}
    names: dict[str, str] = {}
    for d in deliveries:
        member = d.get("member")
        key = _NO_MEMBER if member is None else str(member)
        groups.setdefault(key, []).append(d)
        if d.get("member_name") and key not in names:
            names[key] = str(d["member_name"])
    members = sorted((k for k in groups if k != _NO_MEMBER), key=_natural)
    shown = members[: max(max_members, 0)]
    left_out = members[len(shown) :]
    order = ([_NO_MEMBER] if _NO_MEMBER in groups else []) + shown
    out = [
        f'<p><input id="q" type="search" placeholder="{_e(_w(w, "Search member id, name or text…"))}" '
        f'aria-label="{_e(_w(w, "Search the transcript"))}" autocomplete="off">'
        f'<span data-says="{_e(_w(w, "groups match"))}" id="qcount"></span></p>'
    ]
    if left_out:
        hidden = sum(len(groups[k]) for k in left_out)
        said = _w(w, "Transcript limited to {shown} members: {left} more members ({hidden} deliveries) were left out "
                  "and are not searchable here; they are still counted in the chart and summary.")
        out.append(f'<p class="note">{_e(said.format(shown=f"{len(shown):,}", left=f"{len(left_out):,}", hidden=f"{hidden:,}"))}</p>')
    for key in order:
        rows = sorted(groups[key], key=_sort_key)
        is_channel = key == _NO_MEMBER
        if is_channel:
            heading, search_key = _e(_w(w, "Channel destinations (no member)")), "channel"
        else:
            name = names.get(key, "")
            heading = f"{_e(key)} — {_e(name)}" if name else _e(key)
            search_key = f"{key} {name}".strip().lower()
            heading = f"{_e(_w(w, 'member'))} {heading}"
        extra_head = f"<th>{_e(_w(w, 'to'))}</th>" if is_channel else ""
        body = []
        for d in rows:
            at = str(d.get("at") or "")
            extra = f"<td>{_e(d.get('to'))}</td>" if is_channel else ""
            body.append(
                f'<tr><td class="t" title="{_e(at)}">{_e(_local_time(at))}</td>'
                f"<td>{_e(_step_of(d, w))}</td><td>{_e(d.get('channel'))}</td>{extra}"
                f"<td>{_e(d.get('variant') or '')}</td>"
                f'<td class="text">{_e(d.get("text"))}</td></tr>'
            )
        head = "".join(f"<th>{_e(_w(w, h))}</th>" for h in ("time", "step", "channel"))
        tail = "".join(f"<th>{_e(_w(w, h))}</th>" for h in ("variant", "text"))
        out.append(
            f'<section class="member" data-key="{_e(search_key)}"><h3>{heading} '
            f"<small>({len(rows):,} {_e(_w(w, 'deliveries'))})</small></h3><table><thead><tr>{head}"
            f"{extra_head}{tail}</tr></thead><tbody>{''.join(body)}</tbody></table></section>"
        )
    return "".join(out)


def _local_time(at: str) -> str:
    """``2026-12-01T10:15:00+08:00`` as ``2026-12-01 10:15 +08:00``: the minute and the
    offset it is in (times are in each member's or the playbook's timezone)."""
    offset = at[19:].lstrip(".0123456789")
    return at[:16].replace("T", " ") + (f" {offset}" if offset else "")


def _header(deliveries: Sequence[Record], summary: Record, title: str, w: Mapping[str, str]) -> str:
    start, end, days = summary.get("start"), summary.get("end"), summary.get("days")
    span = []
    if start is not None or end is not None:
        span.append(
            f"{_e(start if start is not None else '?')} → {_e(end if end is not None else '?')}"
        )
    if days is not None:
        span.append(f"{_fmt(days)} {_e(_w(w, 'days'))}")
    members = {str(d.get("member")) for d in deliveries if d.get("member") is not None}
    total = summary.get("deliveries", len(deliveries))
    deferred = summary.get("deferred")
    tiles = [
        ("deliveries", total),
        ("members reached", len(members)),
        ("steps", len({_step_of(d, w) for d in deliveries})),
        ("channels", len({str(d.get("channel")) for d in deliveries})),
    ]
    if "pending" in summary:
        tiles.append(("pending after the window", summary["pending"]))
    if isinstance(deferred, Mapping):
        tiles.append(("deferred", int(sum(_num(v) for v in deferred.values()))))
    if isinstance(summary.get("warnings"), list | tuple):
        tiles.append(("warnings", len(summary["warnings"])))
    tiles_html = "".join(
        f'<div class="total"><b>{_fmt(v)}</b><span>{_e(_w(w, k))}</span></div>' for k, v in tiles
    )
    span_html = " · ".join(span) or _e(_w(w, "span not given"))
    return (
        f'<header><h1>{_e(title)}</h1><div class="span">{_e(_w(w, "Dry run: "))}{span_html}</div>'
        f'<div class="totals">{tiles_html}</div></header>'
    )


def render_report(
    deliveries: Sequence[Record],
    summary: Record,
    *,
    title: str,
    max_members: int = DEFAULT_MAX_MEMBERS,
    lang: str = "en",
) -> str:
    """Return the report as one HTML document with no external references. ``lang`` is
    the playbooks' locale (zh-CN: browsers then pick Chinese glyphs for the texts)."""
    summary = summary if isinstance(summary, Mapping) else {}
    w = _words(lang)
    if deliveries:
        chart = _chart(deliveries, summary, w)
        transcript = _transcript(deliveries, max_members, w)
    else:
        chart = f'<p class="empty">{_e(_w(w, "No deliveries: the dry run planned no messages in this window."))}</p>'
        transcript = f'<p class="empty">{_e(_w(w, "No deliveries, so there is no transcript."))}</p>'
    return (
        f'<!DOCTYPE html>\n<html lang="{_e(lang)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"{_header(deliveries, summary, title, w)}"
        f'<h2>{_e(_w(w, "Deliveries per day by step"))}</h2><div class="chart">{chart}</div>'
        f"<h2>{_e(_w(w, 'Summary'))}</h2>{_summary_tables(summary, w)}"
        f'<h2>{_e(_w(w, "Transcript"))}</h2><div id="transcript">{transcript}</div>'
        f"<script>{_JS}</script></body></html>\n"
    )


def write_report(
    path: str | os.PathLike[str],
    deliveries: Sequence[Record],
    summary: Record,
    *,
    title: str,
    max_members: int = DEFAULT_MAX_MEMBERS,
    lang: str = "en",
) -> None:
    """Render the report and write it to ``path`` atomically, UTF-8 encoded."""
    target = Path(path)
    document = render_report(deliveries, summary, title=title, max_members=max_members, lang=lang)
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent if str(target.parent) else "."
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(document)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
