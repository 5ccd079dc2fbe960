"""Pydantic models of the playbook language (SPEC sections 1-4).

Rules:
- Every mapping forbids unknown keys (SPEC 1); the loader turns pydantic's errors
  into playbook-terms messages with a file:line:col (see ``spec.errors``).
- A step and a trigger are told apart by the one kind key they hold (SPEC 3, 4):
  the callable discriminators below return that key, or None when there is no kind
  key or more than one, which ``spec.errors`` reports in words.
- Expressions, durations, times of day, cron strings and timezones are kept as the
  strings the author wrote; their syntax is checked here where it is cheap and local,
  their meaning in ``checks``; the engine compiles them once.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .duration import (
    DURATION_PATTERN,
    FIRST_YEAR,
    LAST_YEAR,
    MAX_DAYS,
    TIME_OF_DAY_PATTERN,
    DurationError,
    parse_duration,
    parse_time_of_day,
)

LANGUAGE_VERSION = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
MODES = ("single", "restart", "queued", "parallel")
STEP_KINDS = (
    "send", "wait", "set", "tag", "untag", "award", "checkin", "choose", "repeat", "emit", "stop",
)
TRIGGER_KINDS = ("event", "cron", "at", "manual")


def _duration(value: str) -> str:
    try:
        parse_duration(value)
    except DurationError as exc:
        raise PydanticCustomError("duration", str(exc)) from None
    return value


def _time_of_day(value: str) -> str:
    try:
        parse_time_of_day(value)
    except DurationError as exc:
        raise PydanticCustomError("time_of_day", str(exc)) from None
    return value


def _as_text(value: Any) -> Any:
    # YAML reads `wait: 3d` as a string but `at: 2026-12-24T20:00` as a timestamp; the
    # loader hands timestamps over as their source text, so nothing to do here but keep
    # numbers from sneaking in where text is expected.
    return value


DurationStr = Annotated[
    str,
    AfterValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "description": "a duration such as 45s, 15m, 2h, 3d, 1w or 1d12h"}),
]
TimeOfDay = Annotated[
    str,
    AfterValidator(_time_of_day),
    WithJsonSchema({"type": "string", "pattern": TIME_OF_DAY_PATTERN, "description": "a time of day, HH:MM"}),
]
Expr = Annotated[str, Field(description="a Jinja2 expression (SPEC 2)")]
Identifier = Annotated[str, Field(pattern=NAME_PATTERN)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False, validate_default=False)


def _also(field: str, *others: dict[str, Any]) -> ConfigDict:
    """A model's config whose JSON Schema also takes ``others`` at ``field``: the forms
    its ``BeforeValidator`` reads (``checkin:`` with nothing, ``tag: vip``), which
    validate takes and editors marked as wrong."""

    def widen(schema: dict[str, Any]) -> None:
        own = schema["properties"][field]
        schema["properties"][field] = {"anyOf": [own, *others]}

    return ConfigDict(extra="forbid", populate_by_name=False, validate_default=False, json_schema_extra=widen)


_NULL: dict[str, Any] = {"type": "null"}
# Member ids such as 1001 are read by YAML as numbers; roles take them (``_role_names``).
_ROLES_SCHEMA: dict[str, Any] = {
    "additionalProperties": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}
}


# --- section 1: playbook-wide settings -------------------------------------------


class Window(Model):
    start: date
    days: int | None = Field(None, ge=1, le=MAX_DAYS)
    end: date | None = None

    @model_validator(mode="after")
    def _one_end(self) -> Window:
        if self.days is not None and self.end is not None:
            raise PydanticCustomError("window", "window takes either days or end, not both")
        if self.end is not None and self.end < self.start:
            raise PydanticCustomError("window", "window end is before its start")
        if not FIRST_YEAR <= self.start.year <= LAST_YEAR or (self.end is not None and self.end.year > LAST_YEAR):
            raise PydanticCustomError("window", f"a window lies between the years {FIRST_YEAR} and {LAST_YEAR}")
        return self

    def last_day(self) -> date | None:
        from datetime import timedelta

        if self.end is not None:
            return self.end
        if self.days is not None:
            return self.start + timedelta(days=self.days - 1)
        return None


class Channel(Model):
    """A named output. ``adapter`` picks the adapter; every other key is one of that
    adapter's settings, checked against the adapter's own Settings model."""

    model_config = ConfigDict(extra="allow")
    adapter: str

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Audience(Model):
    where: Expr


class QuietHours(Model):
    start: TimeOfDay
    end: TimeOfDay


class CatchUp(Model):
    grace: DurationStr = "1h"


class Retry(Model):
    attempts: int = Field(5, ge=1, le=100)
    max_delay: DurationStr = "10m"


class Policies(Model):
    quiet_hours: QuietHours | None = None
    max_per_member_per_day: int | None = Field(None, ge=1)
    catch_up: CatchUp = Field(default_factory=CatchUp)
    retry: Retry = Field(default_factory=Retry)
    max_loop: int = Field(1000, ge=1, le=10_000)  # a run looping longer holds its input up
    in_doubt: Literal["hold", "resend"] = "hold"


class Goal(Model):
    event: str
    within: DurationStr
    where: Expr | None = None


# --- section 3: triggers ------------------------------------------------------------


class TriggerBase(Model):
    kind: ClassVar[str] = ""
    id: Identifier
    flow: str
    where: Expr | None = None
    mode: Literal["single", "restart", "queued", "parallel"] = "single"


class EventTrigger(TriggerBase):
    kind: ClassVar[str] = "event"
    event: str


class CronTrigger(TriggerBase):
    kind: ClassVar[str] = "cron"
    cron: str
    timezone: str | None = None
    for_each: Literal["audience"] | None = None


class AtTrigger(TriggerBase):
    kind: ClassVar[str] = "at"
    at: Annotated[str, BeforeValidator(lambda v: v if isinstance(v, str) else str(v))]
    timezone: str | None = None
    for_each: Literal["audience"] | None = None


class ManualInput(Model):
    type: Literal["string", "integer", "number", "boolean"] = "string"
    default: Any = None
    description: str | None = None

    @model_validator(mode="after")
    def _default_of_its_type(self) -> ManualInput:
        value = self.default
        ok = value is None or {
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
        }[self.type]
        if not ok:
            article = "an" if self.type == "integer" else "a"
            shown = json.dumps(value, ensure_ascii=False, default=str).replace("{", "{{").replace("}", "}}")
            raise PydanticCustomError("manual_default", f"default {shown} is not {article} {self.type}")
        return self


class ManualSpec(Model):
    inputs: dict[str, ManualInput] = Field(default_factory=dict)


class ManualTrigger(TriggerBase):
    model_config = _also("manual", _NULL)
    kind: ClassVar[str] = "manual"
    manual: Annotated[ManualSpec, BeforeValidator(lambda v: {} if v is None else v)]


def _kind_of(kinds: tuple[str, ...]) -> Any:
    def discriminate(value: Any) -> str | None:
        if isinstance(value, dict):
            found = [k for k in kinds if k in value]
            return found[0] if len(found) == 1 else None
        return getattr(value, "kind", None)

    return discriminate


Trigger = Annotated[
    Union[  # noqa: UP007 - one tagged variant a line reads better than an `|` chain
        Annotated[EventTrigger, Tag("event")],
        Annotated[CronTrigger, Tag("cron")],
        Annotated[AtTrigger, Tag("at")],
        Annotated[ManualTrigger, Tag("manual")],
    ],
    Discriminator(
        _kind_of(TRIGGER_KINDS),
        custom_error_type="trigger_kind",
        custom_error_message="a trigger needs exactly one of event, cron, at, manual",
    ),
]


# --- section 4: steps ------------------------------------------------------------------


class StepBase(Model):
    id: Identifier | None = None
    name: str | None = None
    if_: Expr | None = Field(None, alias="if")
    kind: ClassVar[str] = ""


class Variant(Model):
    template: str | None = None
    text: str | None = None
    weight: float = Field(1.0, gt=0, le=1_000_000, allow_inf_nan=False, strict=True)  # a sum of them stays finite


class SendSpec(Model):
    channel: str | None = None
    text: str | None = None
    template: str | None = None
    to: str | list[str] | None = None
    variants: dict[str, Variant] | None = None
    urgent: bool = False

    @model_validator(mode="after")
    def _one_body(self) -> SendSpec:
        given = [k for k in ("text", "template", "variants") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PydanticCustomError(
                "send_body",
                "a send needs exactly one of text, template or variants"
                + (f" (it has {' and '.join(given)})" if given else ""),
            )
        if self.variants is not None and not self.variants:
            raise PydanticCustomError("send_body", "variants needs at least one variant")
        for name, variant in (self.variants or {}).items():
            if (variant.text is None) == (variant.template is None):
                raise PydanticCustomError(
                    "send_body", "variant '{name}' needs exactly one of text or template", {"name": name}
                )
        return self


class SendStep(StepBase):
    kind: ClassVar[str] = "send"
    send: SendSpec


class WaitSpec(Model):
    for_: DurationStr | None = Field(None, alias="for")
    until: TimeOfDay | None = None
    event: str | None = None
    where: Expr | None = None
    timeout: DurationStr | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> WaitSpec:
        given = [k for k, v in (("a duration", self.for_), ("until", self.until), ("event", self.event)) if v]
        if len(given) != 1:
            raise PydanticCustomError(
                "wait_kind", "a wait needs exactly one of a duration, until or event"
            )
        if self.event is None and (self.where is not None or self.timeout is not None):
            raise PydanticCustomError("wait_kind", "where and timeout belong to an event wait")
        return self


def _wait_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        return {"for": value}
    return value


class WaitStep(StepBase):
    kind: ClassVar[str] = "wait"
    wait: Annotated[
        WaitSpec,
        BeforeValidator(_wait_shorthand),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": DURATION_PATTERN},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "for": {"type": "string", "pattern": DURATION_PATTERN},
                            "until": {"type": "string", "pattern": TIME_OF_DAY_PATTERN},
                            "event": {"type": "string"},
                            "where": {"type": "string"},
                            "timeout": {"type": "string", "pattern": DURATION_PATTERN},
                        },
                    },
                ]
            }
        ),
    ]


class SetStep(StepBase):
    """``set: {key: value}``: a string value is an expression, any other value (number,
    boolean, list, mapping) is taken as written."""

    kind: ClassVar[str] = "set"
    set: dict[str, Any]

    @field_validator("set")
    @classmethod
    def _keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
                raise PydanticCustomError("state_key", "'{key}' is not a valid state key", {"key": key})
        return value


def _names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class TagStep(StepBase):
    model_config = _also("tag", {"type": "string"})
    kind: ClassVar[str] = "tag"
    tag: Annotated[list[str], BeforeValidator(_names)]


class UntagStep(StepBase):
    model_config = _also("untag", {"type": "string"})
    kind: ClassVar[str] = "untag"
    untag: Annotated[list[str], BeforeValidator(_names)]


class AwardSpec(Model):
    points: int = 0
    badge: str | None = None


class AwardStep(StepBase):
    kind: ClassVar[str] = "award"
    award: AwardSpec


class CheckinSpec(Model):
    pass


class CheckinStep(StepBase):
    model_config = _also("checkin", _NULL)
    kind: ClassVar[str] = "checkin"
    checkin: Annotated[CheckinSpec, BeforeValidator(lambda v: {} if v is None else v)]


class Branch(Model):
    if_: Expr | None = Field(None, alias="if")
    steps: list[Step] | None = None
    else_: list[Step] | None = Field(None, alias="else")

    @model_validator(mode="after")
    def _shape(self) -> Branch:
        if self.else_ is not None:
            if self.if_ is not None or self.steps is not None:
                raise PydanticCustomError("branch", "an else branch holds only else: [steps]")
        elif self.if_ is None or self.steps is None:
            raise PydanticCustomError("branch", "a branch needs if: and steps:, or else:")
        return self

    def body(self) -> list[Step]:
        return self.else_ if self.else_ is not None else (self.steps or [])


class ChooseStep(StepBase):
    kind: ClassVar[str] = "choose"
    choose: list[Branch] = Field(min_length=1)

    @field_validator("choose")
    @classmethod
    def _else_last(cls, value: list[Branch]) -> list[Branch]:
        for branch in value[:-1]:
            if branch.else_ is not None:
                raise PydanticCustomError("branch", "else must be the last branch of a choose")
        return value


class RepeatSpec(Model):
    times: int | Expr | None = None
    while_: Expr | None = Field(None, alias="while")
    steps: list[Step]

    @model_validator(mode="after")
    def _one(self) -> RepeatSpec:
        if (self.times is None) == (self.while_ is None):
            raise PydanticCustomError("repeat", "a repeat needs exactly one of times or while")
        if isinstance(self.times, int) and not isinstance(self.times, bool) and not 0 <= self.times <= 10_000:
            # policies.max_loop is at most 10,000: a larger count would send that many
            # messages and then fail the run (checked against the playbook's own max_loop too)
            raise PydanticCustomError(
                "repeat", "times must be between 0 and 10000, not {times}", {"times": self.times}
            )
        return self


class RepeatStep(StepBase):
    kind: ClassVar[str] = "repeat"
    repeat: RepeatSpec


class EmitSpec(Model):
    event: str
    data: dict[str, Any] = Field(default_factory=dict)
    member: Expr | None = None


class EmitStep(StepBase):
    kind: ClassVar[str] = "emit"
    emit: EmitSpec


class StopStep(StepBase):
    model_config = _also("stop", _NULL, {"type": "number"}, {"type": "boolean"})
    kind: ClassVar[str] = "stop"
    stop: Annotated[str, BeforeValidator(lambda v: "stopped" if v is None else str(v))]


Step = Annotated[
    Union[  # noqa: UP007 - one tagged variant a line reads better than an `|` chain
        Annotated[SendStep, Tag("send")],
        Annotated[WaitStep, Tag("wait")],
        Annotated[SetStep, Tag("set")],
        Annotated[TagStep, Tag("tag")],
        Annotated[UntagStep, Tag("untag")],
        Annotated[AwardStep, Tag("award")],
        Annotated[CheckinStep, Tag("checkin")],
        Annotated[ChooseStep, Tag("choose")],
        Annotated[RepeatStep, Tag("repeat")],
        Annotated[EmitStep, Tag("emit")],
        Annotated[StopStep, Tag("stop")],
    ],
    Discriminator(
        _kind_of(STEP_KINDS),
        custom_error_type="step_kind",
        custom_error_message="a step needs exactly one kind",
    ),
]

Branch.model_rebuild()
RepeatSpec.model_rebuild()
ChooseStep.model_rebuild()
RepeatStep.model_rebuild()


# --- the playbook ------------------------------------------------------------------------


class Defaults(Model):
    """A folder's ``cmtyflow.yaml``: community-wide settings (SPEC 1)."""

    cmtyflow: int | None = None
    policies: dict[str, Any] = Field(default_factory=dict)
    channels: dict[str, Channel] = Field(default_factory=dict)
    roles: dict[str, list[str]] = Field(default_factory=dict, json_schema_extra=_ROLES_SCHEMA)


def _version(value: Any) -> int:
    if value != LANGUAGE_VERSION or isinstance(value, bool):
        raise PydanticCustomError(
            "version",
            "unsupported language version {value}; this cmtyflow reads version 1",
            {"value": value},
        )
    return int(value)


class Playbook(Model):
    cmtyflow: Annotated[int, BeforeValidator(_version), WithJsonSchema({"const": 1})]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    title: str | None = None
    timezone: str = "UTC"
    locale: str = "en"
    window: Window | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    channels: dict[str, Channel] = Field(default_factory=dict)
    audience: Audience | None = None
    roles: dict[str, list[str]] = Field(default_factory=dict, json_schema_extra=_ROLES_SCHEMA)
    policies: Policies = Field(default_factory=Policies)
    goals: dict[str, Goal] = Field(default_factory=dict)
    triggers: list[Trigger] = Field(default_factory=list)
    flows: dict[str, list[Step]] = Field(default_factory=dict)

    @field_validator("roles", mode="before")
    @classmethod
    def _role_names(cls, value: Any) -> Any:
        # Member ids such as 1001 are read by YAML as numbers; they are ids all the same.
        if isinstance(value, dict):
            return {
                k: [str(m) if isinstance(m, int) and not isinstance(m, bool) else m for m in v] if isinstance(v, list) else v
                for k, v in value.items()
            }
        return value


def walk_steps(steps: list[Any], prefix: str) -> list[tuple[str, Any]]:
    """Every step under ``steps`` depth-first with its position label, e.g.
    ``onboard[2]``, ``onboard[2].choose[0][1]``, ``onboard[3].repeat[0]``."""
    out: list[tuple[str, Any]] = []
    for index, step in enumerate(steps):
        label = f"{prefix}[{index}]"
        out.append((label, step))
        if isinstance(step, ChooseStep):
            for b, branch in enumerate(step.choose):
                out.extend(walk_steps(branch.body(), f"{label}.choose[{b}]"))
        elif isinstance(step, RepeatStep):
            out.extend(walk_steps(step.repeat.steps, f"{label}.repeat"))
    return out
