"""Translation sets: ordered rules that turn a dialled number into E.164 digits.

Switches send destinations as callers dialled them: "+44 20 7946 0000",
"0044 20 7946 0000", "020 7946 0000". A plan's translation set rewrites them
before the prefix match, so all three rate the same. Each rule is a regular
expression and its replacement (Python ``re`` syntax, ``\\1`` for groups),
applied in order, each to the result of the one before, to every match (anchor
a pattern with ``^`` to change only the start); a rule that does not match
changes nothing. With no rules, a number is only stripped of a leading
'+'. The result must be digits, or the call is refused naming the destination.
"""

import json
import re
from dataclasses import dataclass, field

from ocs.errors import invalid

MAX_RULES = 32
MAX_PATTERN = 200


@dataclass(frozen=True, slots=True)
class Rule:
    """One translation rule: a regular expression and its replacement."""

    match: str
    replace: str


@dataclass(frozen=True)
class TranslationSet:
    """Number translation rules, applied in order to a dialled number."""

    rules: tuple[Rule, ...] = ()
    _compiled: tuple[tuple[re.Pattern[str], str], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Compiled once per snapshot; patterns are admin input, validated on the way in.
        object.__setattr__(
            self, "_compiled", tuple((re.compile(rule.match), rule.replace) for rule in self.rules)
        )

    def apply(self, number: str) -> str:
        """The number after every rule, in order, has rewritten it."""
        for pattern, replacement in self._compiled:
            number = pattern.sub(replacement, number)
        return number

    def to_json(self) -> str:
        """The rules as the JSON stored with a plan or NAS client."""
        return json.dumps([{"match": r.match, "replace": r.replace} for r in self.rules])


def translation_from_json(text: str | None) -> TranslationSet:
    """The rules stored as JSON; no rules when nothing is stored."""
    if not text:
        return TranslationSet()
    return TranslationSet(tuple(Rule(r["match"], r["replace"]) for r in json.loads(text)))


def validate_rules(raw: object) -> TranslationSet:
    """Rules from an API body, refused with the field named when any is unusable."""
    if not isinstance(raw, list) or len(raw) > MAX_RULES:
        raise invalid("rules", f"expected a list of at most {MAX_RULES} rules")
    rules = []
    for n, item in enumerate(raw):
        field = f"rules[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("match"), str):
            raise invalid(field, 'expected {"match": "<regex>", "replace": "<text>"}')
        replace = item.get("replace", "")
        if not isinstance(replace, str):
            raise invalid(f"{field}.replace", "expected a string")
        if not 1 <= len(item["match"]) <= MAX_PATTERN:
            raise invalid(f"{field}.match", f"expected 1 to {MAX_PATTERN} characters")
        try:
            re.compile(item["match"]).sub(replace, "0")
        except (re.error, IndexError) as exc:
            raise invalid(field, f"not a usable regular expression: {exc}") from None
        rules.append(Rule(item["match"], replace))
    return TranslationSet(tuple(rules))
