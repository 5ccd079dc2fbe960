"""``cmtyflow new``: list the playbook library, copy one playbook with its templates and
the folder defaults into a folder of one's own, from a checkout and from a built package."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmtyflow.cli import main
from cmtyflow.cli import new as new_cmd
from cmtyflow.loader import load

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = sorted(
    p.stem
    for p in (ROOT / "playbooks").glob("*.yaml")
    if p.name != "cmtyflow.yaml" and not p.name.endswith(".test.yaml")
)


def _language(monkeypatch, value):
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    if value is not None:
        monkeypatch.setenv("LANG", value)


@pytest.mark.parametrize("lang", [None, "C.UTF-8", "zh_CN.UTF-8"])
def test_new_lists_the_library_in_chinese_by_default(capsys, monkeypatch, lang):
    _language(monkeypatch, lang)
    assert main(["new"]) == 0
    out = capsys.readouterr().out
    assert len(LIBRARY) == 10
    for name in LIBRARY:
        assert f"  {name}  " in out
    assert "每周知识分享" in out and "每周三晚 8 点知识分享：周二提醒主讲人" in out
    assert "Weekly topic night" not in out
    assert "共 10 个剧本" in out


@pytest.mark.parametrize("how", ["--lang", "LANG", "LC_ALL"])
def test_new_lists_the_library_in_english(capsys, monkeypatch, how):
    """An English user's first screen was Chinese: the environment's language counts."""
    _language(monkeypatch, "zh_CN.UTF-8")
    if how != "--lang":
        monkeypatch.setenv(how, "en_US.UTF-8")
    assert main(["new", "--lang", "en"] if how == "--lang" else ["new"]) == 0
    out = capsys.readouterr().out
    assert "Weekly topic night" in out
    assert "weekly knowledge-share night: host reminder, topic post, recap prompt." in out
    assert "21-day reading challenge" in out
    assert "每周知识分享" not in out
    assert "10 playbooks" in out


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
@pytest.mark.parametrize("name", LIBRARY)
def test_new_copy_of_each_playbook_validates_clean(tmp_path, capsys, name, lang):
    dest = tmp_path / "mine"
    assert main(["new", name, "--lang", lang, "--dir", str(dest)]) == 0
    out = capsys.readouterr().out
    # Said in the language chosen (the copy's lines were in English for zh-CN).
    assert (f"wrote {dest / (name + '.yaml')}" if lang == "en" else f"写入 {dest / (name + '.yaml')}") in out
    assert ("Next:" in out) == (lang == "en") and ("下一步：" in out) == (lang != "en")
    assert f"cmtyflow validate {dest / (name + '.yaml')}" in out and "cmtyflow dry-run" in out
    result = load([dest / f"{name}.yaml"])
    assert [str(p) for p in result.problems] == []
    assert (dest / "cmtyflow.yaml").read_bytes() == (
        ROOT / "playbooks" / "cmtyflow.yaml"
    ).read_bytes()
    # only the templates this playbook names, each in the chosen language (or none), and
    # in the library's other languages too: members are written to in their own locale
    copied = sorted(p.name for p in (dest / "templates").iterdir())
    used = result.playbooks[0].templates
    assert copied and all(any(f.startswith(t + ".") for t in used) for f in copied)
    assert {f.split(".", 1)[0] for f in copied} == set(used)
    for template in used:
        mine = [f for f in copied if f.startswith(template + ".")]
        assert any(f".{lang}." in f or f.count(".") == 2 for f in mine), template
    assert {f.split(".")[1] for f in copied if f.count(".") == 3} <= {"zh-CN", "en"}


def test_new_english_copy_changes_only_the_locale_line(tmp_path):
    assert main(["new", "checkin-challenge", "--lang", "en", "--dir", str(tmp_path)]) == 0
    original = (
        (ROOT / "playbooks" / "checkin-challenge.yaml").read_text(encoding="utf-8").splitlines()
    )
    copy = (tmp_path / "checkin-challenge.yaml").read_text(encoding="utf-8").splitlines()
    changed = [(a, b) for a, b in zip(original, copy, strict=True) if a != b]
    assert changed == [SCHEMA_LINE, ("locale: zh-CN", "locale: en")]


# The library's first line points at the schema in this repository; a copy's, at one
# beside it (`cmtyflow schema -o`, which `new` suggests): the other path led nowhere.
SCHEMA_LINE = (
    "# yaml-language-server: $schema=../cmtyflow/schema/playbook.schema.json",
    "# yaml-language-server: $schema=playbook.schema.json",
)


def test_new_chinese_copy_is_the_same_but_for_its_schema_line(tmp_path, capsys):
    assert main(["new", "onboarding", "--dir", str(tmp_path)]) == 0
    original = (ROOT / "playbooks" / "onboarding.yaml").read_text(encoding="utf-8")
    assert (tmp_path / "onboarding.yaml").read_text(encoding="utf-8") == original.replace(*SCHEMA_LINE, 1)
    assert f"cmtyflow schema -o {tmp_path / 'playbook.schema.json'}" in capsys.readouterr().out
    assert (tmp_path / "templates" / "onboarding-welcome-a.zh-CN.txt.j2").is_file()
    # the English ones too, for members whose locale is en (they got Chinese before)
    assert (tmp_path / "templates" / "onboarding-welcome-a.en.txt.j2").is_file()


def test_new_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    assert main(["new", "referral", "--dir", str(tmp_path)]) == 0
    (tmp_path / "templates" / "referral-thanks.zh-CN.txt.j2").write_text("mine", encoding="utf-8")
    (tmp_path / "templates" / "referral-ambassador.zh-CN.md.j2").unlink()
    capsys.readouterr()
    assert main(["new", "referral", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: these files exist already, so nothing was written: ")
    assert str(tmp_path / "referral.yaml") in err and "referral-thanks.zh-CN.txt.j2" in err
    assert (tmp_path / "templates" / "referral-thanks.zh-CN.txt.j2").read_text(
        encoding="utf-8"
    ) == "mine"
    assert not (tmp_path / "templates" / "referral-ambassador.zh-CN.md.j2").exists()


def test_new_keeps_an_existing_folder_defaults_file_and_says_so(tmp_path, capsys):
    theirs = (ROOT / "playbooks" / "cmtyflow.yaml").read_text(encoding="utf-8") + "# our own\n"
    (tmp_path / "cmtyflow.yaml").write_text(theirs, encoding="utf-8")
    assert main(["new", "daily-brief", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"保留了你的 {tmp_path / 'cmtyflow.yaml'}" in out
    assert (tmp_path / "cmtyflow.yaml").read_text(encoding="utf-8") == theirs
    assert load([tmp_path / "daily-brief.yaml"]).problems == []


def test_new_copies_into_the_current_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["new", "faq-autoreply", "--lang", "en"]) == 0
    assert (tmp_path / "faq-autoreply.yaml").is_file()
    assert (tmp_path / "templates" / "faq-autoreply-answer.en.txt.j2").is_file()
    assert (tmp_path / "cmtyflow.yaml").is_file()


def test_new_unknown_playbook_is_a_user_error(tmp_path, capsys):
    assert main(["new", "weekly", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == "error: no playbook 'weekly' in the library; try one of: weekly-topic (`cmtyflow new` lists them)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_new_works_from_the_built_package_layout(tmp_path, monkeypatch, capsys):
    # What a wheel holds: setup.py's build step copies the library into cmtyflow/library.
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    for name in ("cmtyflow", "playbooks", "templates", "examples"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "build"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "-d", str(out)],
        cwd=src,
        check=True,
        capture_output=True,
    )
    package = out / "cmtyflow"
    assert sorted(p.name for p in (package / "library").iterdir()) == [
        "examples",
        "playbooks",
        "templates",
    ]
    assert (package / "library" / "examples" / "members.csv").is_file()
    monkeypatch.setattr(new_cmd, "PACKAGE", package)
    assert new_cmd.library_root() == package / "library"
    dest = tmp_path / "mine"
    assert main(["new", "weekly-topic", "--lang", "en", "--dir", str(dest)]) == 0
    printed = capsys.readouterr().out
    assert str(package / "library" / "examples" / "members.csv") in printed
    assert load([dest / "weekly-topic.yaml"]).problems == []


def test_new_copies_language_neutral_templates_and_falls_back_to_the_playbooks_language(
    tmp_path, monkeypatch, capsys
):
    # A small library of one's own: `greet` exists only in zh-CN, `footer` is language-neutral.
    library = tmp_path / "pkg" / "library"
    (library / "playbooks").mkdir(parents=True)
    (library / "templates").mkdir()
    shutil.copy(ROOT / "playbooks" / "cmtyflow.yaml", library / "playbooks" / "cmtyflow.yaml")
    (library / "playbooks" / "hello.yaml").write_text(
        "# hello — say hello.\n# 打个招呼。\ncmtyflow: 1\nname: hello\ntitle: 你好 / Hello\n"
        "timezone: Asia/Shanghai\nlocale: zh-CN   # 模板语言\n"
        "triggers:\n  - {id: joined, event: member.joined, flow: hi}\n"
        "flows:\n  hi:\n    - {id: hi, send: {channel: dm, template: greet}}\n"
        "    - {id: bye, send: {channel: dm, template: footer}}\n",
        encoding="utf-8",
    )
    (library / "templates" / "greet.zh-CN.txt.j2").write_text(
        "你好 {{ member.name }}", encoding="utf-8"
    )
    (library / "templates" / "footer.txt.j2").write_text("--", encoding="utf-8")
    (library / "templates" / "unused.en.txt.j2").write_text("not copied", encoding="utf-8")
    monkeypatch.setattr(new_cmd, "PACKAGE", tmp_path / "pkg")
    assert main(["new", "--lang", "en"]) == 0
    assert "say hello." in capsys.readouterr().out
    dest = tmp_path / "mine"
    assert main(["new", "hello", "--lang", "en", "--dir", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "note: template greet has no en version; members without a locale get the zh-CN one" in out
    assert sorted(p.name for p in (dest / "templates").iterdir()) == [
        "footer.txt.j2",
        "greet.zh-CN.txt.j2",
    ]
    assert "locale: zh-CN   # 模板语言" in (dest / "hello.yaml").read_text(encoding="utf-8")
    assert load([dest / "hello.yaml"]).problems == []
    dest2 = tmp_path / "mine2"
    (library / "templates" / "greet.en.txt.j2").write_text("Hi {{ member.name }}", encoding="utf-8")
    assert main(["new", "hello", "--lang", "en", "--dir", str(dest2)]) == 0
    assert "locale: en   # 模板语言" in (dest2 / "hello.yaml").read_text(encoding="utf-8")
    assert sorted(p.name for p in (dest2 / "templates").iterdir()) == [
        "footer.txt.j2",
        "greet.en.txt.j2",
        "greet.zh-CN.txt.j2",
    ]


def test_new_refuses_a_file_where_a_folder_goes_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "templates").write_text("x", encoding="utf-8")
    assert main(["new", "onboarding", "--dir", str(tmp_path)]) == 1
    assert "templates exists and is not a folder; nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["templates"]
    other = tmp_path / "other"
    (other / "cmtyflow.yaml").mkdir(parents=True)
    assert main(["new", "onboarding", "--dir", str(other)]) == 1
    assert "cmtyflow.yaml exists and is not a file" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["cmtyflow.yaml"]


def test_schema_into_a_missing_folder_is_an_error_not_a_crash(tmp_path, capsys):
    assert main(["schema", "-o", str(tmp_path / "no" / "such" / "x.json")]) == 1
    assert "cannot write" in capsys.readouterr().err
