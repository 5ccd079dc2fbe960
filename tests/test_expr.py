"""Template and expression injection (SPEC 2): refused by validate at the YAML line, and
member data is never evaluated as template source."""

from __future__ import annotations

import re

import pytest

from cmtyflow.expr import RenderError, compile_expression, compile_template, scope
from cmtyflow.exprcheck import static_problems_expression, static_problems_template
from cmtyflow.loader import load, load_text

PLAYBOOK = """\
cmtyflow: 1
name: demo
channels:
  group: {{adapter: console}}
triggers:
  - id: joined
    event: member.joined
    flow: onboard
flows:
  onboard:
    - send:
        text: |
          Hello!
          {text}
"""


def problems_for(text: str) -> list[str]:
    result = load_text(PLAYBOOK.format(text=text), "pb.yaml")
    return [f"{p.line}:{p.col}: {p.severity}: {p.message}" for p in result.problems]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{{ ''.__class__.__mro__ }}", "access to '__mro__' is not allowed"),
        ("{{ cycler.__init__.__globals__.os }}", "access to '__globals__' is not allowed"),
        ("{{ member.name|attr('format') }}", "the attr filter is not allowed in playbooks"),
        ("{{ 'a'*10**9 }}", "not allowed: repeating 1000000000 times is over the limit of 10000"),
        ("{{ member['__class__'] }}", "access to '__class__' is not allowed"),
        ("{{ 2**100000 }}", "not allowed: an exponent of 100000 is over the limit of 256"),
    ],
    ids=["mro", "globals", "attr-filter", "repeat", "getitem-dunder", "pow"],
)
def test_injection_in_a_template_is_refused_at_its_yaml_line(payload, message):
    found = problems_for(payload)
    assert f"14:11: error: {message}" in found
    assert all(p.startswith("14:11: error: ") for p in found)


@pytest.mark.parametrize(
    "source",
    ["''.__class__.__mro__", "cycler.__init__.__globals__", "'x'|attr('format')", "'a'*10**9"],
)
def test_injection_in_an_expression_is_refused(source, write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(
        "pb.yaml",
        f"""\
        cmtyflow: 1
        name: demo
        channels:
          group: {{adapter: console}}
        triggers:
          - id: joined
            event: member.joined
            where: "{source}"
            flow: onboard
        flows:
          onboard:
            - send: {{text: hi}}
        """,
    )
    result = load(["pb.yaml"])
    assert not result.ok
    assert {(p.line, p.col) for p in result.problems} == {(8, 12)}
    assert all("not allowed" in p.message for p in result.problems)


def test_member_data_is_printed_never_evaluated():
    template = compile_template("Welcome, {{ member.name }}!")
    assert template.render({"member": {"name": "{{ 7*7 }}"}}) == "Welcome, {{ 7*7 }}!"
    assert template.render({"member": {"name": "{% for x in range(9) %}x{% endfor %}"}}) == (
        "Welcome, {% for x in range(9) %}x{% endfor %}!"
    )


def test_repetition_with_runtime_values_fails_that_render_only():
    template = compile_template("{{ 'a' * vars.n }}")
    assert template.render({"vars": {"n": 3}}) == "aaa"
    with pytest.raises(RenderError, match="over the limit"):
        template.render({"vars": {"n": 10**9}})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # a loop doubling a string: reached 24 GB before the output's size was seen
        ("{% set ns = namespace(a='x') %}{% for i in range(9999) %}{% set ns.a = ns.a ~ ns.a %}{% endfor %}{{ ns.a }}",
         "~ would make a text of 524288 characters, over the limit of 262144"),
        ("{% set ns = namespace(a='x') %}{% for i in range(9999) %}{% set ns.a = ns.a + ns.a %}{% endfor %}{{ ns.a }}",
         "+ would make a text of 524288 characters, over the limit of 262144"),
        # padding built in one call: gigabytes allocated, then refused by size
        ("{{ 'x' | center(vars.n) }}", "center would make a text of 1000000000 characters"),
        ("{{ 'x' | indent(vars.n) }}", "an indent of 1000000000 is over the limit of 256"),
        ("{{ '%1000000000s' | format('x') }}", "format would make a text of 1000000000 characters"),
        ("{{ '%1000000000s' % 'x' }}", "% would make a text of 1000000000 characters"),
        ("{{ '{:>1000000000}'.format('x') }}", "format() would make a text of 1000000000 characters"),
        ("{{ '{:{w}}'.format('x', w=vars.n) }}", "format(): widths taken from the arguments are not allowed"),
        ("{{ 'x'.ljust(vars.n) }}", "ljust() would make a text of 1000000000 characters"),
        ("{{ ('x' * 10000).replace('x', 'y' * 10000) }}", "replace() would make a text of 100000000 characters"),
        ("{{ ('x' * 10000) | replace('x', 'y' * 10000) }}", "replace would make a text of 100000000 characters"),
        ("{{ range(9999) | map('string') | join('x' * 10000) }}", "join would make a text of"),
        # a macro calling itself: "internal error: RecursionError" before
        ("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", "a macro calls itself too deeply"),
        # a number squared in a loop: ran for minutes with no end in sight
        ("{% set ns = namespace(x=10**256) %}{% for i in range(22) %}{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
         "* would make a number of more than 4000 digits"),
        ("{{ (10 ** 200) ** 200 }}", "** would make a number of more than 4000 digits"),
        # 44 million characters from one call
        ("{{ lipsum(n=100000) }}", "lipsum(n=100000) is over the limit of 100"),
        ("{{ lipsum(2, max=vars.n) }}", "lipsum(max=1000000000) is over the limit of 100"),
        # the size, not the count, is over: said as such
        ("{{ ('x' * 60) * 2000 }}", "a text of 60 characters repeated 2000 times would make 120000 characters"),
        # loops over lists counted as range() is: three such loops ran for good, deaf to SIGTERM
        ("{% for a in [0] * 10000 %}{% for b in [0] * 10000 %}{% endfor %}{% endfor %}",
         "more than 100000 loop iterations in one render"),
    ],
    ids=["concat", "plus", "center", "indent", "format", "percent", "str-format", "dynamic-width", "ljust",
         "str-replace", "replace", "join", "recursion", "int-square", "int-pow", "lipsum-n", "lipsum-max",
         "repeat-size", "list-loops"],
)
def test_text_built_while_rendering_is_bounded_before_it_is_built(source, message):
    with pytest.raises(RenderError, match=re.escape(message)):
        compile_template(source).render(scope({"vars": {"n": 10**9}}))


def test_ordinary_text_operations_still_work():
    cases = {
        "{{ 'a' ~ 'b' }}": "ab", "{{ 1 + 2 }}": "3", "{{ [1] + [2] }}": "[1, 2]", "{{ 7 % 3 }}": "1",
        "{{ '%5.2f' | format(3.14159) }}": " 3.14", "{{ '%s-%s' % ('a', 'b') }}": "a-b", "{{ 'x' | center(5) }}": "  x  ",
        "{{ 'a b' | replace(' ', '-') }}": "a-b", "{{ ['a', 'b'] | join(', ') }}": "a, b", "{{ '{:>3}'.format('x') }}": "  x",
        "{{ 'l1\nl2' | indent(2) }}": "l1\n  l2", "{{ '-'.join(['a', 'b']) }}": "a-b",
        "{{ 2 ** 64 }}": "18446744073709551616", "{{ (10 ** 100) * (10 ** 100) > 0 }}": "True",
        "{{ lipsum(1, html=false, min=3, max=4) | wordcount }}": "3",
    }
    assert {src: compile_template(src).render(scope({})) for src in cases} == cases


def test_unknown_name_has_a_did_you_mean():
    (problem,) = static_problems_expression("membr.name")
    assert problem.message.startswith("unknown name 'membr' (did you mean 'member'?)")


def test_expression_syntax_errors_read_as_expressions():
    assert [p.message for p in static_problems_expression("state.points >")] == [
        "expression syntax error: unexpected end of expression"
    ]
    assert [p.message for p in static_problems_expression("a b")] == [
        "expression syntax error: unexpected b after the expression"
    ]


def test_template_problems_carry_the_line_inside_the_template():
    found = static_problems_template("line one\nline two\n{{ nope }}\n")
    assert [(p.lineno, p.message.split(";")[0]) for p in found] == [(3, "unknown name 'nope'")]


def test_loop_variables_and_set_names_are_known_in_templates(write, tmp_path, monkeypatch):
    result = load_text(
        PLAYBOOK.format(
            text="{% set n = 2 %}{% for b in state.badges %}{{ loop.index }} {{ b }} {{ n }}{% endfor %}"
        ),
        "pb.yaml",
    )
    assert result.problems == []


def test_none_prints_as_nothing_in_a_message():
    # A member without a name is greeted without "None"; a default is the template's to give.
    from cmtyflow.expr import compile_template, scope

    member = {"name": None, "id": "u1"}
    assert compile_template("👋 {{ member.name }}，欢迎").render(scope({"member": member})) == "👋 ，欢迎"
    assert compile_template("{{ member.name or '新朋友' }}").render(scope({"member": member})) == "新朋友"
    assert compile_template("{{ 0 }} {{ false }} {{ '' }}|").render(scope({})) == "0 False |"


def test_a_template_that_loads_another_is_refused_at_its_line():
    """There is no loader: include/import/extends passed validate and failed every run."""
    source = 'hi\n{% include "x.txt.j2" %}\n{% import "m" as m %}\n{% from "m" import a %}\n'
    found = static_problems_template(source)
    assert [(p.lineno, p.message.split(" is not")[0]) for p in found] == [
        (2, "{% include %}"), (3, "{% import %}"), (4, "{% from ... import %}"),
    ]
    assert found[0].message.endswith("a template cannot load another; use a macro in the same template, or a var for shared text")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # an undefined value returned bare: strict undefined failed later, where it was used
        # (a condition, a stored value), as "cmtyflow hit a bug"
        # (and says so in a playbook's terms: Jinja's "'dict object' has no attribute")
        ("event.data.nope", "undefined name or key: no key 'nope' here (it is empty); .get('nope') reads a key that may be missing"),
        ("[1, event.data.nope]", "undefined name or key"),
        ("{'a': event.data.nope}", "undefined name or key"),
        ("'\\ud800'", "the text holds '\\ud800', a lone surrogate, not a character"),
        ("1e999", "a number too large to be one (infinite, or not a number)"),
    ],
)
def test_an_expression_whose_value_cannot_be_used_fails_where_it_is_evaluated(source, message):
    with pytest.raises(RenderError, match=re.escape(message)):
        compile_expression(source).evaluate(scope({"event": {"data": {}}}))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ '\\ud800' }}", "the text holds '\\ud800', a lone surrogate, not a character"),
        ("{{ '%c' % 55296 }}", "a lone surrogate"),
        ("{{ 1e999 | int }}", "a number too large to be one"),
        ("{{ 'abc' | truncate(2) }}", "a filter's argument is out of its range: expected length >= 3, got 2"),
    ],
)
def test_a_template_whose_text_cannot_be_sent_fails_its_render(source, message):
    """Each stopped the dry run or the runner with exit 3 (UnicodeEncodeError at the
    output or the store, NameError from Jinja's folded constant, AssertionError)."""
    with pytest.raises(RenderError, match=re.escape(message)):
        compile_template(source).render(scope({}))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ cycler() }}", "at least one item has to be provided"),  # a RuntimeError
        ("{{ now.fromtimestamp(10 ** 17) }}", "Value too large"),  # an OSError, from event data
        ("x{{ '\\x00' }}y", "the text holds a NUL character"),  # PostgreSQL refuses it in text
    ],
)
def test_more_templates_that_stopped_the_runner_fail_their_render(source, message):
    """Each made `run --once` exit 3 at every start (the fuzzer's second round)."""
    import datetime as dt

    with pytest.raises(RenderError, match=re.escape(message)):
        compile_template(source).render(scope({"now": dt.datetime(2026, 12, 1, tzinfo=dt.UTC)}))


def test_a_constant_part_that_always_fails_or_nesting_too_deep_is_a_static_problem():
    """Jinja folds constant parts while compiling: `[1, 2][5] ~ 'a'` failed there, and the
    runner could not load the playbook (exit 3); 70 parentheses stopped validate itself."""
    assert [p.message for p in static_problems_template("{{ [1, 2][5] ~ 'a' }}")] == [
        "this template always fails: undefined name or key: list object has no element 5"
    ]
    assert [p.message for p in static_problems_expression("1 if ''.x else 2")][0].startswith("this expression always fails")
    assert [p.message for p in static_problems_expression("(" * 200 + "1" + ")" * 200)] == [
        "expression nested too deeply (parentheses, brackets or operators)"
    ]


def test_a_name_that_is_both_a_key_and_a_mapping_method_is_not_guessed():
    """`{{ event.data.values }}` printed a bound method with its memory address (other
    bytes in the dry run and the run), and `if: event.data.items` was true whatever
    the data said (a method is true). Reading the key first instead broke
    `event.data.items()`. Where the data holds such a key, the run fails saying how to
    write either; elsewhere the method is the method, as Jinja reads it."""
    from datetime import date

    from cmtyflow.engine.context import MemberView, StateView

    ctx = {
        "state": StateView({"values": 1, "count": 2}, date(2026, 12, 1)),
        "event": {"data": {"items": 0, "order": "A1"}},
        "vars": {"x": 1},
        "member": MemberView({"id": "m", "city": "杭州"}),
    }
    for source in ("{% if event.data.items %}yes{% endif %}", "{{ state.values }}", "{{ event.data.items() }}"):
        with pytest.raises(RenderError, match=r"'(items|values)' is both a key of this data and a method of every mapping: write \["):
            compile_template(source).render(ctx)
    assert compile_expression("event.data['items'] == 0").evaluate(ctx) is True
    text = "{% for k, v in event.data|dictsort %}{{ k }}={{ v }};{% endfor %} {% for k, v in vars.items() %}{{ k }}{% endfor %}"
    assert compile_template(text).render(ctx) == "items=0;order=A1; x"
    with pytest.raises(RenderError, match=r"'items' is a function, not a value to print; call it, or read a key"):
        compile_template("{{ vars.items }}").render(ctx)  # no such key: the method, printed
    assert compile_expression("state.get('count', 0) + state.points").evaluate(ctx) == 2
    assert compile_template("{{ event.data.order }} {{ member.city }}").render(ctx) == "A1 杭州"


def test_expression_mistakes_of_template_habits_get_hints():
    """`set: {word: hello}` said only "unknown name 'hello'"; `if: "{{ member.name }}"`
    said "expected token ':', got '}'"."""
    (word,) = static_problems_expression("hello")
    assert word.message == "unknown name 'hello'; if 'hello' is meant as text, quote it inside the YAML quotes: \"'hello'\""
    (typo,) = static_problems_expression("stat")
    assert "(did you mean 'state'?)" in typo.message  # a near name keeps its own hint
    (braces,) = static_problems_expression("{{ member.name }}")
    assert braces.message.endswith("an expression is written without {{ }}: member.name, not {{ member.name }}")
    assert static_problems_expression("member.name") == []


def test_a_var_named_like_a_mapping_method_read_as_an_attribute_is_refused():
    """`vars.items` with a var named items is the mapping's method (Jinja's order):
    validate says to write vars['items']."""
    known = {"vars": ["items", "x"], "roles": []}
    (found,) = static_problems_template("{% for i in vars.items %}{{ i }}{% endfor %}", known=known)
    assert found.message == "vars.items is the mapping's method items, not the var 'items': write vars['items']"
    assert static_problems_template("{{ vars['items'] }} {{ vars.get('x') }} {{ vars.x }}", known=known) == []


def test_a_misspelt_filter_or_test_is_told_the_near_one():
    found = [p.message for p in static_problems_template("{{ vars | defualt('y') }}{% if vars is defind %}{% endif %}{{ vars | zzz }}")]
    assert found == ["unknown filter 'defualt' (did you mean 'default'?)", "unknown test 'defind' (did you mean 'defined'?)",
                     "unknown filter 'zzz'"]


def test_a_key_of_nothing_says_what_is_none_and_how_to_guard_it():
    """An anonymous report (an event naming no member) failed with "'None' has no
    attribute 'name'"."""
    with pytest.raises(RenderError, match=re.escape(
            "'.name' of nothing: the value before it is none (a campaign run, or an event that names no member, "
            "has no member); test it first, as in: x.name if x else ''")):
        compile_template("{{ member.name }}").render(scope({"member": None}))
