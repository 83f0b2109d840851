"""The rules file: every number a business user may change, validated at load."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .run_options import RunOptionError, check_irr_target

Metric = Literal["balance_share", "count_share", "max", "mean", "wavg", "distribution", "batch_balance_share"]
Op = Literal["<", "<=", ">", ">=", "==", "!=", "in"]
FILTER_COLUMNS = {
    "type", "term", "fico", "apr", "lender_price", "orig_balance", "promo_term",
    "dealer_fee", "new_programs", "loan_program", "property_state",
}
SHARE_METRICS = {"balance_share", "count_share", "batch_balance_share"}


class RulesFileError(ValueError):
    """The rules file is malformed; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InboxRules(_Strict):
    tape_lookback_days: int = Field(ge=0)
    header_search_rows: int = Field(ge=1)


class NormalizationRules(_Strict):
    irr_target: float

    @field_validator("irr_target")
    @classmethod
    def _irr_is_a_percentage(cls, value: float) -> float:
        try:
            return check_irr_target(value)
        except RunOptionError as exc:
            raise ValueError(str(exc).removeprefix("run option irr_target: ")) from None
    facility_period_start: dt.date
    fico_min: int
    fico_max: int


class UnderwritingSheets(_Strict):
    sfy_regular: str
    prime_regular: str
    sfy_notes: str
    prime_notes: str


class Sheets(_Strict):
    underwriting: UnderwritingSheets
    notes_comap: str


class ComapEra(_Strict):
    after: dt.date | None
    sheets: list[str] = Field(min_length=1)


class ComapEras(_Strict):
    prime: list[ComapEra] = Field(min_length=1)
    sfy: list[ComapEra] = Field(min_length=1)

    @model_validator(mode="after")
    def _eras_descend(self) -> "ComapEras":
        for platform in ("prime", "sfy"):
            eras = getattr(self, platform)
            if eras[-1].after is not None:
                raise ValueError(f"comap_eras.{platform}: the last era must have after: null")
            dates = [e.after for e in eras[:-1]]
            if any(d is None for d in dates) or dates != sorted(dates, reverse=True):
                raise ValueError(f"comap_eras.{platform}: eras must be listed newest first")
        return self


class Check(_Strict):
    id: str
    description: str
    metric: Metric
    where: list[tuple[str, Op, Any]] = Field(default_factory=list)
    column: str | None = None
    op: Literal["<", "<=", ">", ">="] | None = None
    limit: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Check":
        for column, op, value in self.where:
            if column not in FILTER_COLUMNS:
                raise ValueError(f"{self.id}: unknown filter column {column!r}")
            if op == "in" and not isinstance(value, list):
                raise ValueError(f"{self.id}: 'in' needs a list")
        if self.metric in SHARE_METRICS and not self.where:
            raise ValueError(f"{self.id}: a {self.metric} check needs a where filter")
        if self.metric not in SHARE_METRICS and self.column not in FILTER_COLUMNS:
            raise ValueError(f"{self.id}: a {self.metric} check needs a known column")
        if (self.op is None) != (self.limit is None):
            raise ValueError(f"{self.id}: op and limit go together")
        if self.metric in ("distribution", "batch_balance_share") and self.limit is not None:
            raise ValueError(f"{self.id}: a {self.metric} check is informational and takes no limit")
        return self


class Eligibility(_Strict):
    prime: list[Check]
    sfy: list[Check]


FileKind = Literal["exhibit", "tape", "master", "existing", "grid", "comap"]


class Rules(_Strict):
    version: str
    inbox: InboxRules
    normalization: NormalizationRules
    sheets: Sheets
    comap_eras: ComapEras
    eligibility: Eligibility
    # Other spellings of column headers, per file kind: {kind: {header: [spelling, ...]}}.
    columns: dict[FileKind, dict[str, list[str]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _column_spellings_are_unambiguous(self) -> "Rules":
        from .parsing import alias_problems  # parsing reads Rules: import here, not at the top

        problems = alias_problems(self.columns)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def fingerprint(self) -> str:
        """SHA-256 of the validated content: equal for two files that mean the same rules."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def limit_ids(self) -> set[str]:
        """Ids of the checks that have a limit to breach, as `<platform>_<check id>`."""
        return {
            limit_check_name(platform, check.id)
            for platform, checks in (("prime", self.eligibility.prime), ("sfy", self.eligibility.sfy))
            for check in checks
            if check.limit is not None
        }

    def column_aliases(self, kind: FileKind) -> dict[str, list[str]]:
        """The other spellings the rules file gives for the headers of one file kind."""
        return self.columns.get(kind, {})

    def underwriting_sheet(self, platform: str, kind: str) -> str:
        return getattr(self.sheets.underwriting, f"{platform}_{kind}")

    def comap_sheets(self) -> list[str]:
        names = [self.sheets.notes_comap]
        for eras in (self.comap_eras.prime, self.comap_eras.sfy):
            for era in eras:
                names.extend(era.sheets)
        return list(dict.fromkeys(names))


def limit_check_name(platform: str, check_id: str) -> str:
    return f"{platform}_{check_id}"


def refuse_other_limits(rules: Rules, declared: Collection[str], *, source: str) -> None:
    """A rules file must have exactly the limits the reviewer's screen shows:
    a limit only the file has would be computed but never shown, and a
    declared one the file drops (or makes informational) would stay blank."""
    present = rules.limit_ids()
    added = sorted(present - set(declared))
    removed = sorted(set(declared) - present)
    if not added and not removed:
        return
    parts = []
    if added:
        parts.append("limits the file adds: " + ", ".join(added))
    if removed:
        parts.append("declared limits the file removes or leaves without a limit: " + ", ".join(removed))
    raise RulesFileError(
        f"rules file {source} does not have the limits the code location declares (from its packaged rules.yaml): "
        + "; ".join(parts)
        + ". Limit values may differ; adding or removing a limit needs a new packaged rules.yaml."
    )


def parse_rules(data: dict) -> Rules:
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{key}: {err['msg']}")
        raise RulesFileError("invalid rules file: " + "; ".join(problems)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice in one mapping: plain YAML keeps
    the last one without a word, and an analyst's first entry would vanish."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            if key in seen and key != "<<":
                raise RulesFileError(f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line})")
            seen[key] = line
        except TypeError:
            pass  # an unhashable key: the mapping constructor below names it
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_rules(path: str | Path | None = None) -> Rules:
    """Load and validate the rules file (the packaged one by default). Every
    problem, down to a file that cannot be read, is a RulesFileError naming it."""
    source = "rules.yaml (packaged)" if path is None else str(path)
    try:
        if path is None:
            text = resources.files(__package__).joinpath("rules.yaml").read_text()
        else:
            text = Path(path).read_text()
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        if not isinstance(data, dict):
            raise RulesFileError("invalid rules file: the top level must be a mapping")
        return parse_rules(data)
    except RulesFileError as exc:
        raise RulesFileError(f"rules file {source}: {exc}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RulesFileError(f"rules file {source} cannot be read: {exc}") from None


@lru_cache(maxsize=1)
def default_rules() -> Rules:
    return load_rules()
