"""Phase 1: the sites agree on one schema (a pure function over the schemas they report).

Only schemas travel (column names, types, declared settings): no statistics, so this costs no
privacy budget. Inferred schemas carry no observed bounds or category lists by design.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from fedtab.errors import SchemaError
from fedtab.schema import ColumnSpec, TableSchema

# Types that may meet across sites, and what they become. A column with only 0/1 at one site is
# inferred boolean there but is categorical where more codes occur; int and float meet as float.
_COMPATIBLE = {
    frozenset({"boolean", "categorical"}): "categorical",
}


def name_sites(sites, *, shown: int = 5) -> str:
    """Site names for a message: all of a few, else the first ``shown`` and how many more (with 1,000
    sites one disagreement printed 50 KB)."""
    sites = [str(s) for s in sites]
    head = ", ".join(f"'{s}'" for s in sites[:shown])
    more = len(sites) - shown
    label = "site" if len(sites) == 1 else "sites"
    return f"{len(sites)} {label} ({head}{f' and {more} more' if more > 0 else ''})"


def leave_out(reasons: Mapping[str, str], *, going_on: int, of: int, min_sites: int, where: str,
              progress=None) -> list[str]:
    """One policy for every screen of what sites send: the sites in ``reasons`` (site -> why) are named and
    left out when ``going_on`` sites (of ``of``) still reach ``min_sites``; otherwise the run stops with a
    ``FederationError`` naming them. ``where``: the step (a message's prefix). Returns the sites left out."""
    from fedtab.errors import FederationError

    named = sorted(reasons)
    if not named:
        return []
    text = "; ".join(f"site '{s}': {reasons[s]}" for s in named[:5])
    if going_on < min_sites:
        raise FederationError(f"{where}: {name_sites(named)} cannot go on ({text}); {going_on} of {of} site(s) "
                              f"left but 'training.min_sites' is {min_sites} (default: every site).")
    if progress is not None:
        progress("phase", {"name": f"{where}: left out {name_sites(named)}; going on with {going_on} of {of} "
                                   f"(training.min_sites = {min_sites}): {text}", "dropped": named})
    return named


def agree_schemas(site_schemas: Mapping[str, TableSchema]) -> TableSchema:
    """One schema for all sites, or a SchemaError listing every mismatch by site and column."""
    if not site_schemas:
        raise SchemaError("no site reported a schema")
    sites = list(site_schemas)
    ref_site = sites[0]
    ref = site_schemas[ref_site]
    problems: list[str] = []
    lacking: dict[str, list[str]] = {}
    extra: dict[str, list[str]] = {}
    for site in sites[1:]:
        names = site_schemas[site].names
        for c in ref.names:
            if c not in names:
                lacking.setdefault(c, []).append(site)
        for c in names:
            if c not in ref:
                extra.setdefault(c, []).append(site)
    problems += [f"column '{c}' of site '{ref_site}' is missing at {name_sites(ss)}" for c, ss in lacking.items()]
    problems += [f"column '{c}' at {name_sites(ss)} is not a column of site '{ref_site}'" for c, ss in extra.items()]
    merged: list[ColumnSpec] = []
    for col in ref.columns:
        specs = {s: site_schemas[s][col.name] for s in sites if col.name in site_schemas[s]}
        spec, col_problems = _merge_column(col.name, specs)
        problems += col_problems
        merged.append(spec)
    if problems:
        raise SchemaError(
            f"the sites' schemas do not agree ({len(problems)} problem(s)):\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nFix: give every site the same schema file (fedtab schema infer at one site, then "
            "edit and share it), or rename/retype the columns at the sites named."
        )
    return TableSchema(columns=tuple(merged), name=ref.name)


def _merge_column(name: str, specs: Mapping[str, ColumnSpec]) -> tuple[ColumnSpec, list[str]]:
    problems: list[str] = []
    types = {s: c.type for s, c in specs.items()}
    distinct = set(types.values())
    first = next(iter(specs.values()))
    if len(distinct) == 1:
        ctype = first.type
    elif frozenset(distinct) in _COMPATIBLE:
        ctype = _COMPATIBLE[frozenset(distinct)]
    else:
        by_type: dict[str, list[str]] = {}
        for site, t in types.items():
            by_type.setdefault(t, []).append(site)
        seen = "; ".join(f"{t} at {name_sites(sites_)}" for t, sites_ in sorted(by_type.items(), key=lambda kv: -len(kv[1])))
        problems.append(f"column '{name}' has different types at the sites ({seen}); declare its type in a shared "
                        "schema (a site with very few rows, or with only missing values in this column, infers "
                        "'categorical' from what it sees)")
        ctype = first.type
    subtype = None
    if ctype == "numerical":
        subs = {c.subtype for c in specs.values()}
        subtype = "float" if "float" in subs else "int"
    lowers = [c.lower for c in specs.values() if c.lower is not None]
    uppers = [c.upper for c in specs.values() if c.upper is not None]
    declared = [c.categories for c in specs.values() if c.categories is not None]
    categories = None
    if declared:
        categories = tuple(dict.fromkeys(v for cats in declared for v in cats))
    markers = tuple(dict.fromkeys(m for c in specs.values() for m in c.missing_markers))
    precisions = [c.precision for c in specs.values() if c.precision is not None]
    dtypes = {c.dtype for c in specs.values()}
    spec = replace(
        first,
        type=ctype,
        subtype=subtype,
        nullable=any(c.nullable for c in specs.values()),
        lower=min(lowers) if lowers else None,
        upper=max(uppers) if uppers else None,
        categories=categories if ctype in ("categorical", "boolean") else None,
        missing_markers=markers,
        precision=max(precisions) if precisions else None,
        dtype=_merge_dtype(dtypes),
    )
    return spec, problems


def _merge_dtype(dtypes: set) -> str | None:
    """One input representation for the sites' (``ColumnSpec.dtype``): theirs if they agree; integers with
    and without missing values: ``Int64``; integers and reals: ``float64``; bool and boolean: ``boolean``;
    else none (the schema contract's own dtypes)."""
    from fedtab.schema import FLOAT_DTYPES, INT_DTYPES, NULLABLE_INT_DTYPES

    if len(dtypes) == 1:
        return next(iter(dtypes))
    if None in dtypes:
        return None
    if dtypes <= set(INT_DTYPES + NULLABLE_INT_DTYPES):
        return "Int64"
    if dtypes <= set(INT_DTYPES + NULLABLE_INT_DTYPES + FLOAT_DTYPES):
        return "float64"
    if dtypes <= {"bool", "boolean"}:
        return "boolean"
    return None
