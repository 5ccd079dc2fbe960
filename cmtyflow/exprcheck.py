"""Expressions and templates checked without running them (SPEC 2): what ``validate``
can see in a source alone.

Rules:
- Syntax errors, names outside the scope SPEC 2 defines, access to private attributes,
  the ``attr`` filter, unknown filters and tests, constant expressions over the
  sandbox's bounds, tags that would load another template, and a constant part that
  always fails (Jinja works it out while compiling) are problems, each at its line in
  the source.
- With ``known`` (a playbook's ``vars`` and ``roles``), a misspelled key of them is one.
- ``names_out_of_scope`` reports names that cannot hold where a source runs
  (``scopechecks`` says which).
- ``state_keys_read`` lists the keys of ``state`` a source reads as ``state.KEY`` or
  ``state['KEY']`` without a guard (``is defined``, ``'KEY' in state``): the caller
  compares them with the keys the playbook writes.
- Sources are parsed exactly as ``expr`` compiles them, so the checks and the runs
  accept the same text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.lexer import describe_token
from jinja2.parser import Parser

from .expr import (
    ENV,
    FAILURES,
    GLOBAL_NAMES,
    SCOPE_NAMES,
    compile_expression,
    compile_template,
    describe_failure,
    safe_mul,
    safe_pow,
)


@dataclass(frozen=True, slots=True)
class StaticProblem:
    message: str
    lineno: int  # 1-based line inside the expression or template source


def _assigned_names(tree: nodes.Node) -> set[str]:
    names: set[str] = set()
    for node in tree.find_all((nodes.Name,)):
        if node.ctx in ("store", "param"):
            names.add(node.name)
    for macro in tree.find_all((nodes.Macro,)):
        names.add(macro.name)
    return names


def _const(node: nodes.Node) -> Any:
    """Value of a constant sub-expression made of literals, * and **, within bounds."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, (nodes.Mul, nodes.Pow)):
        left, right = _const(node.left), _const(node.right)
        return (safe_mul if isinstance(node, nodes.Mul) else safe_pow)(left, right)
    raise LookupError


# The tags that load another template, as a template writes them.
_LOADS: dict[type[nodes.Node], str] = {
    nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "from ... import", nodes.Extends: "extends",
}


def _walk_problems(tree: nodes.Node, extra_names: Iterable[str]) -> list[StaticProblem]:
    problems: list[StaticProblem] = []
    allowed = GLOBAL_NAMES | _assigned_names(tree) | set(extra_names)
    seen: set[str] = set()
    for node in tree.find_all((nodes.Name,)):
        if node.ctx == "load" and node.name not in allowed and node.name not in seen:
            seen.add(node.name)
            hint = _near(node.name, sorted(SCOPE_NAMES))
            problems.append(
                StaticProblem(
                    f"unknown name '{node.name}'{hint}; names in scope are "
                    + ", ".join(sorted(SCOPE_NAMES)),
                    node.lineno,
                )
            )
    for getattr_ in tree.find_all((nodes.Getattr,)):
        if getattr_.attr.startswith("_"):
            problems.append(StaticProblem(f"access to '{getattr_.attr}' is not allowed", getattr_.lineno))
    for getitem in tree.find_all((nodes.Getitem,)):
        arg = getitem.arg
        if isinstance(arg, nodes.Const) and isinstance(arg.value, str) and arg.value.startswith("_"):
            problems.append(StaticProblem(f"access to '{arg.value}' is not allowed", getitem.lineno))
    for call in tree.find_all((nodes.Filter, nodes.Test)):
        if isinstance(call, nodes.Filter) and call.name == "attr":
            problems.append(StaticProblem("the attr filter is not allowed in playbooks", call.lineno))
        elif isinstance(call, nodes.Filter) and call.name not in ENV.filters:
            problems.append(StaticProblem(f"unknown filter '{call.name}'{_near(call.name, sorted(ENV.filters))}", call.lineno))
        if isinstance(call, nodes.Test) and call.name not in ENV.tests:
            problems.append(StaticProblem(f"unknown test '{call.name}'{_near(call.name, sorted(ENV.tests))}", call.lineno))
    for power in tree.find_all((nodes.Mul, nodes.Pow)):
        try:
            _const(power)
        except SecurityError as exc:
            problems.append(StaticProblem(f"not allowed: {exc}", power.lineno))
        except (LookupError, TypeError, ValueError, ArithmeticError):
            pass
    for other in tree.find_all(tuple(_LOADS)):
        # Each message is one template (or one file): there is no loader to find others.
        tag = _LOADS[type(other)]
        problems.append(StaticProblem(
            f"{{% {tag} %}} is not available: a template cannot load another; use a macro in the same template, "
            "or a var for shared text", other.lineno,
        ))
    return problems


def _near(name: str, options: list[str]) -> str:
    import difflib

    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


Known = Mapping[str, Iterable[str]]  # a playbook's own names and their keys (vars, roles)


def static_problems_expression(
    source: str, extra_names: Iterable[str] = (), known: Known | None = None
) -> list[StaticProblem]:
    """The problems of an expression; with ``known``, when it has none of its own, its
    misspelled keys of those names too (``_unknown_keys``)."""
    # Parsed the way ENV.compile_expression parses, so the static check and the run
    # accept exactly the same expressions.
    try:
        parser = Parser(ENV, source, state="variable")
        tree = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            raise TemplateSyntaxError(f"unexpected {describe_token(token)} after the expression", token.lineno)
    except TemplateSyntaxError as exc:
        message = (exc.message or "invalid expression").replace("'end of template'", "end of expression")
        if "{{" in source or "{%" in source:
            message += "; an expression is written without {{ }}: member.name, not {{ member.name }}"
        return [StaticProblem(f"expression syntax error: {message}", exc.lineno or 1)]
    except RecursionError:
        return [StaticProblem("expression nested too deeply (parentheses, brackets or operators)", 1)]
    # find_all looks below a node, never at the node itself: give the expression a parent.
    problems = _tree_problems(nodes.Template([nodes.Output([tree])]), extra_names, known)
    if (isinstance(tree, nodes.Name) and problems and problems[0].message.startswith("unknown name")
            and not _near(tree.name, sorted(SCOPE_NAMES))):
        # `set: {word: hello}`: a word meant as text, read as a name.
        word = tree.name
        problems[0] = StaticProblem(
            f"unknown name '{word}'; if '{word}' is meant as text, quote it inside the YAML quotes: \"'{word}'\"",
            problems[0].lineno,
        )
    return problems or _compile_problems(compile_expression, source, "expression")


def static_problems_template(
    source: str, extra_names: Iterable[str] = (), known: Known | None = None
) -> list[StaticProblem]:
    """The problems of a template; ``known`` as for ``static_problems_expression``."""
    try:
        tree = ENV.parse(source)
    except TemplateSyntaxError as exc:
        return [StaticProblem(f"template syntax error: {exc.message}", exc.lineno)]
    except RecursionError:
        return [StaticProblem("template nested too deeply (blocks, parentheses or operators)", 1)]
    return _tree_problems(tree, extra_names, known) or _compile_problems(compile_template, source, "template")


def _compile_problems(compile_: Callable[[str], Any], source: str, what: str) -> list[StaticProblem]:
    """Compiling folds constant parts (Jinja's optimiser): one that always fails fails
    there (``[1, 2][5] ~ 'a'``), and a run could not even load the playbook."""
    try:
        compile_(source)
    except RecursionError:
        return [StaticProblem(f"{what} nested too deeply (blocks, parentheses or operators)", 1)]
    except FAILURES as exc:
        return [StaticProblem(f"this {what} always fails: {describe_failure(exc)}", 1)]
    return []


def _tree_problems(tree: nodes.Template, extra_names: Iterable[str], known: Known | None) -> list[StaticProblem]:
    problems = _walk_problems(tree, extra_names)
    if not problems and known:
        problems = _unknown_keys(tree, known)
    return problems


_MAPPING_METHODS = frozenset(n for n in dir(dict) if not n.startswith("_"))


def _unknown_keys(tree: nodes.Template, known: Known) -> list[StaticProblem]:
    """``NAME.key`` and ``NAME['key']`` where NAME is one of ``known`` (a playbook's
    ``vars``, ``roles``) and key is not one of its keys: a misspelling a static check can
    see (SPEC 2)."""
    assigned = _assigned_names(tree)
    keys = {name: sorted(set(values)) for name, values in known.items()}
    found: list[StaticProblem] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        base = node.node if isinstance(node, (nodes.Getattr, nodes.Getitem)) else None
        if not isinstance(base, nodes.Name) or base.name not in keys or base.name in assigned:
            continue
        if isinstance(node, nodes.Getattr):
            key = node.attr
            if key in _MAPPING_METHODS:
                if key in keys[base.name]:  # vars.items, with a var named items: the method
                    found.append(StaticProblem(
                        f"{base.name}.{key} is the mapping's method {key}, not the "
                        f"{ {'vars': 'var', 'roles': 'role'}.get(base.name, base.name)} '{key}': "
                        f"write {base.name}['{key}']",
                        node.lineno,
                    ))
                continue
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            key = node.arg.value
        else:
            continue
        options = keys[base.name]
        if key not in options:
            what = {"vars": "var", "roles": "role"}.get(base.name, base.name)
            found.append(StaticProblem(
                f"unknown {what} '{key}'{_near(key, options)}; "
                + (f"{base.name} are {', '.join(options)}" if options else f"the playbook has no {base.name}"),
                node.lineno,
            ))
    return found


def _parsed(source: str, template: bool) -> nodes.Node | None:
    """``source`` parsed as a template, or as an expression under a template node (so
    that ``find_all`` sees it); None when it does not parse (the other checks say so)."""
    try:
        if template:
            return ENV.parse(source)
        parser = Parser(ENV, source, state="variable")
        return nodes.Template([nodes.Output([parser.parse_expression()])])
    except (TemplateSyntaxError, RecursionError):
        return None


def names_out_of_scope(
    source: str, template: bool, undefined: Mapping[str, str], none: Mapping[str, str]
) -> list[StaticProblem]:
    """Uses of names that cannot hold a value where ``source`` runs, one problem per
    name: ``undefined`` (name -> why) fail wherever they are read, unless the source
    tests them (``wait is defined``); ``none`` (name -> why) hold none, so reading a key
    of them fails, unless the source also reads the name alone (``if member``, ``member
    or ...``), which guards it. A source that does not parse is left to the other
    checks."""
    tree = _parsed(source, template)
    if tree is None:
        return []
    assigned = _assigned_names(tree)
    tested = {
        t.node.name for t in tree.find_all((nodes.Test,))
        if isinstance(t, nodes.Test) and t.name in ("defined", "undefined") and isinstance(t.node, nodes.Name)
    }
    keyed = {
        id(n.node) for n in tree.find_all((nodes.Getattr, nodes.Getitem))
        if isinstance(n, (nodes.Getattr, nodes.Getitem)) and isinstance(n.node, nodes.Name)
    }
    loads = [n for n in tree.find_all((nodes.Name,)) if n.ctx == "load" and n.name not in assigned and n.name not in tested]
    alone = {n.name for n in loads if id(n) not in keyed}
    found: list[StaticProblem] = []
    reported: set[str] = set()
    for name in loads:
        if name.name in reported:
            continue
        if name.name in undefined:
            why = undefined[name.name]
        elif name.name in none and id(name) in keyed and name.name not in alone:
            why = none[name.name]
        else:
            continue
        reported.add(name.name)
        found.append(StaticProblem(why, name.lineno))
    return found


def state_keys_read(source: str, template: bool) -> list[tuple[str, int]]:
    """(key, line) of each ``state.KEY`` or ``state['KEY']`` that ``source`` reads
    unguarded (rules above); a method (``state.get``) is not a key. A source that does
    not parse, or that assigns ``state`` itself, is left to the other checks."""
    tree = _parsed(source, template)
    if tree is None or "state" in _assigned_names(tree):
        return []
    found: list[tuple[str, int]] = []
    guarded: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and node.attr in _MAPPING_METHODS:
            continue  # state.get, state.items: the mapping's methods
        found += _state_keys_of(node)
    for test in tree.find_all((nodes.Test,)):
        if isinstance(test, nodes.Test) and test.name in ("defined", "undefined"):
            guarded.update(key for key, _ in _state_keys_of(test.node))
    for compare in tree.find_all((nodes.Compare,)):
        if isinstance(compare, nodes.Compare) and isinstance(compare.expr, nodes.Const):
            for op in compare.ops:
                if op.op in ("in", "notin") and isinstance(op.expr, nodes.Name) and op.expr.name == "state":
                    guarded.add(str(compare.expr.value))
    return [(key, line) for key, line in found if key not in guarded]


def _state_keys_of(node: nodes.Node) -> list[tuple[str, int]]:
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "state":
        return [(node.attr, node.lineno)]
    if (isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and node.node.name == "state"
            and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)):
        return [(node.arg.value, node.lineno)]
    return []
