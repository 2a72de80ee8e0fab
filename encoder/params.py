"""Parameter checks declared once, beside the parameter (scikit-learn's `_parameter_constraints`
habit): a dataclass field names its allowed values in its metadata (`param(..., check=Range(1))`),
`check_fields` checks an instance against all of them, `check_value` one value, and `parse_int`
reads one integer from text (an HTTP parameter) under the same rule. Every message has one
form: "<name> must be <what is allowed>, not <value>"."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .errors import ConfigError


@dataclass(frozen=True)
class Range:
    """A number between `low` and `high` (either may be open-ended); `integer`: whole numbers only
    (bools are not numbers here); `exclusive_low`: `low` itself is not allowed."""
    low: Optional[float] = None
    high: Optional[float] = None
    integer: bool = False
    exclusive_low: bool = False

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.exclusive_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        kind = "an integer " if self.integer else ""
        if self.low is not None and self.high is not None:
            if self.integer:
                return f"{kind}in {self.low:,}..{self.high:,}"
            return f"in {'(' if self.exclusive_low else '['}{self.low}, {self.high}]"
        if self.low is not None:
            if self.exclusive_low:
                return "positive" if self.low == 0 else f"greater than {self.low}"
            return f"at least {self.low}"
        return f"{kind}at most {self.high}" if self.high is not None else f"{kind}a finite number"


@dataclass(frozen=True)
class OneOf:
    choices: tuple

    def allows(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return f"one of {', '.join(map(str, self.choices))}"


Check = Range | OneOf


def param(default: Any, help: str = "", check: Optional[Check] = None, **metadata: Any):
    """A dataclass field with its check and its one-line help (which command-line flags built from
    the dataclass show). A default of None means "decided later" and is never checked."""
    return dataclasses.field(default=default,
                             metadata={"help": help, "check": check, **metadata})


def check_fields(obj: Any, name: Callable[[str], str] = str, error: type = ConfigError) -> None:
    """Raise `error` for the first field of dataclass `obj` whose value its check refuses."""
    for f in dataclasses.fields(obj):
        check_value(name(f.name), getattr(obj, f.name), f.metadata.get("check"), error)


def check_value(name: str, value: Any, check: Optional[Check], error: type = ConfigError) -> Any:
    """`value`, unless `check` refuses it (None is never checked)."""
    if check is not None and value is not None and not check.allows(value):
        raise error(f"{name} must be {check.describe()}, not {value!r}")
    return value


def parse_int(name: str, text: str, check: Range, error: type = ConfigError) -> int:
    """`text` as an integer that `check` allows, written in ASCII digits (Python's `int` also
    reads other scripts' digits, "٣" as 3, and "1_0" as 10)."""
    if not re.fullmatch(r"[-+]?[0-9]+", text.strip()):
        raise error(f"{name} must be {check.describe()}, not {text!r}")
    value = int(text)
    if not check.allows(value):
        raise error(f"{name} must be {check.describe()}, not {value}")
    return value
