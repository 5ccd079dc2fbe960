"""The one sandboxed Jinja environment for expressions and templates (SPEC 2).

Rules:
- Everything is compiled once and evaluated many times; compiled objects are cached
  by source text.
- ImmutableSandboxedEnvironment + StrictUndefined: no attribute starting with an
  underscore, no mutation of lists or dicts, a misspelled name raises.
- Rendering is bounded: output size (``MAX_OUTPUT``), ``range()`` and string or list
  repetition (``MAX_REPEAT``), total loop iterations through ``range`` per render
  (``MAX_ITERATIONS``), the exponent of ``**`` (``MAX_EXPONENT``), whole numbers made by
  ``*`` and ``**`` (``MAX_INT_DIGITS``) and ``lipsum`` (``MAX_LIPSUM``). Text built on the
  way is bounded too (``MAX_TEXT``: ``~`` and ``+``, padding and widths in ``center``,
  ``indent``, ``format``, ``%`` and the string methods, ``join`` and ``replace``),
  checked before it is built, so that a loop doubling a string cannot take the
  runner's memory before the output's size is seen; and a macro that calls itself
  stops at Python's recursion limit. Over a bound the render raises ``RenderError``
  with a message in playbook terms.
- Member data is only ever *context*, never template source, so a member named
  ``{{ 7*7 }}`` prints as such.
- What can be seen without running (``validate``) is checked in ``exprcheck``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, cast

from jinja2 import StrictUndefined, Undefined, nodes, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.filters import FILTERS as _jinja_filters
from jinja2.runtime import new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT = 64 * 1024
MAX_REPEAT = 10_000
MAX_ITERATIONS = 100_000
MAX_EXPONENT = 256
MAX_INT_DIGITS = 4000  # a whole number made by * or ** (squaring in a loop grew without end)
MAX_INT_BITS = MAX_INT_DIGITS * 3322 // 1000
MAX_LIPSUM = 100  # paragraphs, and words per paragraph, of lipsum()
MAX_TEXT = 4 * MAX_OUTPUT  # characters in any text built while rendering
MAX_INDENT = 256

# Names SPEC 2 puts in scope. ``audience`` exists in campaign runs, ``checkin`` after a
# checkin step, ``wait`` after an event wait; they are undefined (strict) where they do
# not apply, which ``scopechecks`` reports where it can be seen (``exprcheck.names_out_of_scope``).
SCOPE_NAMES = frozenset(
    {"member", "state", "vars", "roles", "event", "now", "today", "run", "wait", "audience", "checkin"}
)


class RenderError(Exception):
    """A template or expression failed for this run only (SPEC 2)."""




_iterations: ContextVar[list[int] | None] = ContextVar("cmtyflow_iterations", default=None)


def _bounded_range(*args: int) -> Iterator[int]:
    r = range(*args)
    if len(r) > MAX_REPEAT:
        raise SecurityError(f"range() of {len(r)} items is over the limit of {MAX_REPEAT}")
    budget = _iterations.get()
    for i in r:
        if budget is not None:
            budget[0] += 1
            if budget[0] > MAX_ITERATIONS:
                raise SecurityError(f"more than {MAX_ITERATIONS} loop iterations in one render")
        yield i


_LOOP_FILTER = "_bounded_loop"


@pass_eval_context
def _bounded_loop(_eval_ctx: Any, iterable: Any) -> Any:
    """What a ``{% for %}`` loops over, counted against ``MAX_ITERATIONS`` per render as
    ``range()`` is (three nested loops over lists of 10,000 ran for good, and a runner
    in one did not even hear SIGTERM)."""
    budget = _iterations.get()
    if budget is None or getattr(iterable, "gi_code", None) is _bounded_range.__code__:
        return iterable  # outside a render, or a range(): counted already
    return _counted(iterable, budget)


def _counted(iterable: Any, budget: list[int]) -> Iterator[Any]:
    for item in iterable:
        budget[0] += 1
        if budget[0] > MAX_ITERATIONS:
            raise SecurityError(f"more than {MAX_ITERATIONS} loop iterations in one render")
        yield item


def _check_repeat(count: Any, other: Any) -> None:
    if isinstance(other, (str, list, tuple)) and isinstance(count, int) and not isinstance(count, bool):
        if count > MAX_REPEAT:
            raise SecurityError(f"repeating {count} times is over the limit of {MAX_REPEAT}")
        if count * max(len(other), 1) > MAX_REPEAT * 10:
            unit = "characters" if isinstance(other, str) else "items"
            what = "a text" if isinstance(other, str) else "a list"
            raise SecurityError(f"{what} of {len(other)} {unit} repeated {count} times would make "
                                f"{count * len(other)} {unit}, over the limit of {MAX_REPEAT * 10}")


def _check_bits(bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise SecurityError(f"{what} would make a number of more than {MAX_INT_DIGITS} digits")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def safe_mul(left: Any, right: Any) -> Any:
    _check_repeat(right, left)
    _check_repeat(left, right)
    if _whole(left) and _whole(right):
        _check_bits(left.bit_length() + right.bit_length(), "*")
    return operator.mul(left, right)


def safe_pow(left: Any, right: Any) -> Any:
    if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
        raise SecurityError(f"an exponent of {right} is over the limit of {MAX_EXPONENT}")
    if _whole(left) and _whole(right) and right > 0:
        _check_bits(left.bit_length() * right, "**")
    return operator.pow(left, right)


def _too_long(size: int, what: str) -> None:
    if size > MAX_TEXT:
        raise SecurityError(f"{what} would make a text of {size} characters, over the limit of {MAX_TEXT}")


def _safe_add(left: Any, right: Any) -> Any:
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        _too_long(len(left) + len(right), "+")
    return operator.add(left, right)


_WIDTH = re.compile(r"%[-+ #0]*(\d+)?(?:\.(\d+))?|\{[^{}]*?:[^{}]*?(\d+)(?:\.(\d+))?[^{}]*\}")


def _check_widths(fmt: Any, what: str) -> None:
    """A format string whose widths or precisions would pad a text past ``MAX_TEXT``
    (``'%1000000000s'``, ``'{:>1000000000}'``), or whose widths come from its arguments
    (``'{:{w}}'``), is refused before it is formatted."""
    if not isinstance(fmt, str):
        return
    if re.search(r"\{[^{}]*:[^{}]*\{", fmt) or re.search(r"%[-+ #0]*\*|%[-+ #0]*\d*\.\*", fmt):
        raise SecurityError(f"{what}: widths taken from the arguments are not allowed")
    for found in _WIDTH.finditer(fmt):
        for number in found.groups():
            if number is not None:
                _too_long(int(number), what)


def _safe_mod(left: Any, right: Any) -> Any:
    _check_widths(left, "%")
    result = operator.mod(left, right)
    if isinstance(result, str):
        _too_long(len(result), "%")
    return result


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {"*": safe_mul, "**": safe_pow, "+": _safe_add, "%": _safe_mod}


def _join_size(sep: str, items: list[Any]) -> int:
    return len(sep) * max(len(items) - 1, 0) + sum(len(x) if isinstance(x, str) else 16 for x in items)


def _replace_size(text: str, old: Any, new: Any) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(text)
    count = text.count(old) if old else len(text) + 1
    return len(text) + count * max(len(new) - len(old), 0)


def _check_str_call(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a string method call that would build a text past ``MAX_TEXT``; returns
    the arguments to call it with (``join``'s items, read once)."""
    if name in ("ljust", "rjust", "center", "zfill") and args and isinstance(args[0], int):
        _too_long(args[0], f"{name}()")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _too_long(len(text) + text.count("\t") * size, "expandtabs()")
    elif name == "replace" and len(args) >= 2:
        _too_long(_replace_size(text, args[0], args[1]), "replace()")
    elif name == "join" and args:
        items = list(args[0])
        _too_long(_join_size(text, items), "join()")
        return (items, *args[1:])
    elif name in ("format", "format_map"):
        _check_widths(text, f"{name}()")
    return args


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 - Jinja's names
    """Jinja's ``lipsum`` (placeholder text in a draft), at most ``MAX_LIPSUM`` paragraphs
    of at most ``MAX_LIPSUM`` words (``lipsum(n=100000)`` made 44 million characters)."""
    from jinja2.utils import generate_lorem_ipsum

    for name, value in (("n", n), ("max", max), ("min", min)):
        if not isinstance(value, int) or value > MAX_LIPSUM:
            raise SecurityError(f"lipsum({name}={value!r}) is over the limit of {MAX_LIPSUM}")
    return str(generate_lorem_ipsum(n=n, html=html, min=min, max=max))


def _bounded_center(value: Any, width: int = 80) -> str:
    if isinstance(width, int):
        _too_long(width, "center")
    return str(value).center(width)


def _bounded_indent(value: Any, width: Any = 4, first: bool = False, blank: bool = False) -> Any:
    size = len(width) if isinstance(width, str) else width
    if isinstance(size, int) and size > MAX_INDENT:
        raise SecurityError(f"an indent of {size} is over the limit of {MAX_INDENT}")
    return _jinja_filters["indent"](value, width, first, blank)


def _bounded_format(value: Any, *args: Any, **kwargs: Any) -> Any:
    _check_widths(value, "format")
    return _jinja_filters["format"](value, *args, **kwargs)


@pass_eval_context
def _bounded_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
    items = list(value)
    if attribute is None:
        _too_long(_join_size(str(d), items), "join")
    result = _jinja_filters["join"](eval_ctx, items, d, attribute)
    _too_long(len(result), "join")
    return result


@pass_eval_context
def _bounded_replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
    _too_long(_replace_size(str(s), old, new), "replace")
    return _jinja_filters["replace"](eval_ctx, s, old, new, count)


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with ``~`` (string concatenation) checked against
    ``MAX_TEXT`` once joined: a loop doubling a string stops at the bound."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_text(")
        super().visit_Concat(node, frame)
        self.write(")")



# Mapping types whose instances have no attributes beyond their class's (plain dicts,
# the engine's ``state`` and ``member`` views): type -> the names ``getattr`` can find.
_ITEM_FIRST: dict[type, frozenset[str]] = {dict: frozenset(dir(dict))}


def item_first(cls: type) -> type:
    """Class decorator: ``obj.name`` on an instance reads ``obj['name']`` straight away
    when ``name`` is no attribute of the class, instead of raising and catching an
    AttributeError first. The sandbox falls back to ``obj[name]`` on that error
    anyway, so the result is the same; names the class does have take the sandbox's
    checked path as before."""
    own_lookup = [k for k in cls.__mro__[:-1] if "__getattr__" in vars(k) or "__getattribute__" in vars(k)]
    if cls.__dictoffset__ or own_lookup:
        raise TypeError(f"{cls.__name__} instances may have attributes their class does not list")
    _ITEM_FIRST[cls] = frozenset(dir(cls))
    return cls


class CmtyflowEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(_BINOPS)
    code_generator_class = _BoundedCodeGenerator

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        return _BINOPS[operator_](left, right)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template, each ``{% for %}`` iterating through ``_bounded_loop``: a filter of
        ours (Jinja allows no node types of one's own) that takes the evaluation context,
        so that the optimiser never runs it while compiling."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            it = loop.iter
            if not (isinstance(it, nodes.Filter) and it.name == _LOOP_FILTER):
                loop.iter = nodes.Filter(it, _LOOP_FILTER, [], [], None, None, lineno=loop.lineno)
        return tree

    @staticmethod
    def bounded_text(value: Any) -> Any:
        if isinstance(value, str):
            _too_long(len(value), "~")
        return value

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        target = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            args = _check_str_call(owner, getattr(target, "__name__", ""), args, kwargs)
        return ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        kind = type(obj)
        if kind is dict:
            if attribute not in _DICT_NAMES:
                # A key at once (Jinja tries the attribute first, and raises and
                # catches an AttributeError on the way).
                value = obj.get(attribute, _NO_KEY)
                if value is _NO_KEY:
                    return self.undefined(hint=_no_key(obj, attribute), obj=obj, name=attribute)
                return value
            if attribute in obj:
                return self.undefined(hint=_ambiguous(attribute), obj=obj, name=attribute)
        if obj is None:
            # A campaign run's member, an event that names no member, an unset value.
            return self.undefined(
                hint=f"'.{attribute}' of nothing: the value before it is none (a campaign run, or an event that "
                     f"names no member, has no member); test it first, as in: x.{attribute} if x else ''",
                obj=obj, name=attribute,
            )
        names = _ITEM_FIRST.get(kind)
        if names is not None and attribute in names and _has_key(obj, attribute):
            return self.undefined(hint=_ambiguous(attribute), obj=obj, name=attribute)
        if names is not None and attribute not in names:
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                # A class may say what a missing name means to a playbook's author
                # (``undefined_hint``), instead of Jinja's "<class> object has no attribute".
                hint = obj.undefined_hint(attribute) if hasattr(obj, "undefined_hint") else None
                return self.undefined(hint=hint, obj=obj, name=attribute)
        return _sandbox_getattr(self, obj, attribute)


_sandbox_getattr = ImmutableSandboxedEnvironment.getattr
_NO_KEY = object()
_DICT_NAMES = frozenset(dir(dict))


def _no_key(obj: dict[Any, Any], name: str) -> str:
    """A missing key of a mapping (event data, a var), said in a playbook's terms:
    Jinja's "'dict object' has no attribute 'report_id'" named neither the keys there
    are nor the way to read an optional one."""
    keys = sorted(str(k) for k in obj)
    there = (f"its keys are {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}" if keys else "it is empty")
    return f"no key '{name}' here ({there}); .get('{name}') reads a key that may be missing"


def _ambiguous(name: str) -> str:
    """`event.data.items` where the data holds a key "items": Jinja gives the mapping's
    method, which a condition reads as true whatever the data says, and a loop cannot
    go through. Neither is guessed: the run fails, saying how to write each."""
    return (f"'{name}' is both a key of this data and a method of every mapping: write ['{name}'] for the key "
            f"(as in event.data['{name}']), or go through the data with |dictsort")


def _has_key(obj: Any, name: str) -> bool:
    try:
        return name in getattr(obj, "_data", ())
    except TypeError:
        return False


def _blank_none(value: Any) -> Any:
    """What ``{{ ... }}`` prints: none as nothing (a member without a name is greeted
    "👋 ，欢迎", not "👋 None，欢迎"); write ``{{ member.name or '朋友' }}`` for a default."""
    if value is None:
        return ""
    if callable(value) and not isinstance(value, (str, Undefined)):
        # A method or a function printed (``{{ state.keys }}``, a macro without its call)
        # printed its memory address: text that differs from run to run (SPEC 5.5).
        name = getattr(value, "__name__", type(value).__name__)
        raise TypeError(f"{name!r} is a function, not a value to print; call it, or read a key of that name with ['{name}']")
    return value


def _make_env() -> CmtyflowEnvironment:
    env = CmtyflowEnvironment(
        undefined=StrictUndefined,
        finalize=_blank_none,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["range"] = _bounded_range
    env.globals["lipsum"] = _bounded_lipsum
    env.filters[_LOOP_FILTER] = _bounded_loop  # every {% for %} goes through it
    env.filters.update(center=_bounded_center, indent=_bounded_indent, format=_bounded_format,
                       join=_bounded_join, replace=_bounded_replace)
    # The attr filter reaches attributes by computed name; the sandbox guards it, but
    # there is nothing a playbook needs it for (SPEC 2: bounded, inert templates).
    env.filters.pop("attr", None)
    return env


ENV = _make_env()
GLOBAL_NAMES = frozenset(ENV.globals) | SCOPE_NAMES
GLOBALS: dict[str, Any] = dict(ENV.globals)


def scope(names: Mapping[str, Any]) -> dict[str, Any]:
    """A context for ``evaluate`` and ``render``: the environment's globals plus ``names``.
    Built once per run and reused for every expression and template of it."""
    out = dict(GLOBALS)
    out.update(names)
    return out


def _context(tmpl: Any, names: Mapping[str, Any]) -> Any:
    # Jinja's own entry points copy the globals (a ChainMap) into a fresh dict on every
    # call, which costs more than the expression itself; a shared context over a scope
    # that already holds the globals gives the same result (brief: 8 us per expression).
    if "range" not in names:
        names = scope(names)
    # shared=True: Jinja reads ``names`` as the context's parent and never writes it,
    # so any mapping does (its signature says dict).
    return new_context(ENV, tmpl.name, tmpl.blocks, cast("dict[str, Any]", names), True, None, None)


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, UndefinedError):
        return f"undefined name or key: {exc.message}"
    if isinstance(exc, SecurityError):
        return f"not allowed: {exc}"
    if isinstance(exc, NameError):
        # Jinja folds a constant such as 1e999 into its code as ``inf``, which is no name.
        return "a number too large to be one (infinite, or not a number)"
    if isinstance(exc, AssertionError):  # a filter's own check (truncate(2): "expected length >= 3")
        return f"a filter's argument is out of its range: {exc}" if str(exc) else "a filter's argument is out of its range"
    return str(exc) or type(exc).__name__


# What a run's expression or template may fail with, said in its terms (RenderError).
FAILURES = (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError, NameError,
             AssertionError, RuntimeError, OSError)  # cycler() with nothing; a timestamp out of range


class Expression:
    """A compiled expression; ``evaluate(context)`` returns its value."""

    __slots__ = ("source", "_tmpl")

    def __init__(self, source: str) -> None:
        self.source = source
        self._tmpl = ENV.compile_expression(source, undefined_to_none=False)._template

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        try:
            ctx = _context(self._tmpl, context)
            for _ in self._tmpl.root_render_func(ctx):
                pass
            return _held(ctx.vars["result"])
        except RenderError:
            raise
        except RecursionError:  # before FAILURES: a RuntimeError too
            raise RenderError(f"expression `{self.source}`: it calls itself too deeply") from None
        except FAILURES as exc:
            raise RenderError(f"expression `{self.source}`: {describe_failure(exc)}") from exc


def _held(value: Any) -> Any:
    """``value`` as an expression's result may be used (an iterator read into a list):
    not undefined (a missing roster
    column read bare, ``event.data.nope``; strict undefined fails only when it is used,
    which was outside any run's care, as a fault of cmtyflow's own), and its text valid
    (a lone surrogate made at run time, ``'\\ud800'``, cannot be stored or printed)."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    elif isinstance(value, Iterator) and not isinstance(value, (str, bytes)):
        # A sequence Jinja hands over unfinished (``| reverse``, ``| map``): a list,
        # read here, where its failures are the run's (kept, it was the text of its address).
        return [_held(item) for item in value]
    elif isinstance(value, str):
        if not value.isascii() or "\x00" in value:
            _text(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _held(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _held(key)
            _held(item)
    return value


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the text holds {value[exc.start]!r}, a lone surrogate, not a character") from None
    if "\x00" in value:  # PostgreSQL refuses it in text (the runner stopped at every start)
        raise ValueError("the text holds a NUL character (\\x00), which is not text")
    return value


class Template:
    """A compiled message template with bounded rendering."""

    __slots__ = ("source", "name", "_tmpl")

    def __init__(self, source: str, name: str = "<text>") -> None:
        self.source = source
        self.name = name
        self._tmpl = ENV.from_string(source)

    def render(self, context: Mapping[str, Any]) -> str:
        token = _iterations.set([0])
        try:
            size = 0
            parts: list[str] = []
            for chunk in self._tmpl.root_render_func(_context(self._tmpl, context)):
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise RenderError(
                        f"template {self.name}: output is over the limit of {MAX_OUTPUT} characters"
                    )
                parts.append(chunk)
            out = "".join(parts)
            return out if out.isascii() and "\x00" not in out else _text(out)
        except RenderError:
            raise
        except RecursionError:  # before FAILURES: a RuntimeError too
            raise RenderError(f"template {self.name}: a macro calls itself too deeply") from None
        except FAILURES as exc:
            raise RenderError(f"template {self.name}: {describe_failure(exc)}") from exc
        finally:
            _iterations.reset(token)


@lru_cache(maxsize=8192)
def compile_expression(source: str) -> Expression:
    return Expression(source)


@lru_cache(maxsize=4096)
def compile_template(source: str, name: str = "<text>") -> Template:
    return Template(source, name)
