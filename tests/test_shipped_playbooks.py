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
