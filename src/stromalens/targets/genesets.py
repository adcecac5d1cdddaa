"""Gene sets: read them from a dict, a GMT file, a YAML file or a long ``source, target`` table.

Every reader returns an ordered ``dict[str, list[str]]`` (set name → unique gene symbols, in the
order first given). Matching to an expression matrix and size filtering happen in
:func:`match_gene_sets`, which reports which sets it dropped and why — never silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

GeneSetsLike = Mapping[str, Sequence[str]] | str | Path | pd.DataFrame


def _unique(genes) -> list[str]:
    seen: dict[str, None] = {}
    for g in genes:
        g = str(g).strip()
        if g:
            seen.setdefault(g, None)
    return list(seen)


def read_gmt(path: Path | str) -> dict[str, list[str]]:
    """Read a GMT file: ``name <tab> description <tab> gene <tab> gene ...`` per line."""
    sets: dict[str, list[str]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 3:
            raise ValueError(
                f"{path}, line {number}: a GMT line needs a name, a description "
                "and at least one gene, separated by tabs"
            )
        if fields[0] in sets:
            raise ValueError(f"{path}, line {number}: gene set '{fields[0]}' appears twice")
        sets[fields[0]] = _unique(fields[2:])
    return sets


def read_yaml_sets(path: Path | str) -> dict[str, list[str]]:
    """Read gene sets from YAML.

    Accepts either ``{set: [genes]}`` or the curated layout of
    ``stromalens/targets/resources/ers_caf.yaml`` (``gene_sets: {set: {modules: {module:
    {genes: [{symbol: ...}, ...]}}}}``), whose modules are merged into one set.
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if "gene_sets" in data:
        data = data["gene_sets"]
    sets = {}
    for name, spec in data.items():
        if isinstance(spec, Mapping) and "modules" in spec:
            genes = [
                gene["symbol"] if isinstance(gene, Mapping) else gene
                for module in spec["modules"].values()
                for gene in module["genes"]
            ]
        elif isinstance(spec, Mapping) and "genes" in spec:
            genes = spec["genes"]
        elif isinstance(spec, Sequence) and not isinstance(spec, str):
            genes = spec
        else:
            raise ValueError(
                f"{path}: gene set '{name}' is neither a list of genes nor a "
                "mapping with 'genes' or 'modules'"
            )
        sets[str(name)] = _unique(genes)
    return sets


def as_gene_sets(gene_sets: GeneSetsLike) -> dict[str, list[str]]:
    """Normalise any accepted gene-set input into ``dict[name, list[gene]]``."""
    if isinstance(gene_sets, str | Path):
        path = Path(gene_sets)
        if not path.exists():
            raise ValueError(f"gene-set file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".gmt":
            return read_gmt(path)
        if suffix in {".yaml", ".yml"}:
            return read_yaml_sets(path)
        if suffix in {".tsv", ".csv", ".txt"}:
            return as_gene_sets(pd.read_csv(path, sep="\t" if suffix != ".csv" else ","))
        raise ValueError(
            f"{path}: unknown gene-set format (use .gmt, .yaml or a source/target table)"
        )
    if isinstance(gene_sets, pd.DataFrame):
        missing = {"source", "target"} - set(gene_sets.columns)
        if missing:
            raise ValueError(
                f"a long gene-set table needs columns 'source' and 'target' "
                f"(missing: {', '.join(sorted(missing))})"
            )
        return {
            str(name): _unique(group["target"])
            for name, group in gene_sets.groupby("source", sort=False)
        }
    if isinstance(gene_sets, Mapping):
        out = {}
        for name, genes in gene_sets.items():
            if isinstance(genes, str):
                raise ValueError(f"gene set '{name}' must be a list of genes, not a string")
            out[str(name)] = _unique(genes)
        return out
    raise TypeError(f"gene sets must be a dict, a path or a DataFrame, not {type(gene_sets)}")


@dataclass
class MatchedGeneSets:
    """Gene sets mapped to the rows of an expression matrix.

    ``indices[name]`` are 0-based gene positions; ``dropped[name]`` says why a set was removed;
    ``coverage`` gives, per set, genes found / genes in the set.
    """

    indices: dict[str, list[int]]
    coverage: pd.DataFrame
    dropped: dict[str, str] = field(default_factory=dict)


def match_gene_sets(
    gene_sets: GeneSetsLike,
    genes: Sequence[str],
    *,
    min_size: int = 1,
    max_size: float = float("inf"),
    min_coverage: float = 0.0,
) -> MatchedGeneSets:
    """Map gene sets to ``genes``; drop (and say why) sets outside the size/coverage limits.

    Sizes count the genes found in the data, as GSVA's ``min.sz``/``max.sz`` do.
    """
    sets = as_gene_sets(gene_sets)
    position = {g: i for i, g in enumerate(genes)}
    indices, dropped, rows = {}, {}, []
    for name, members in sets.items():
        found = [position[g] for g in members if g in position]
        coverage = len(found) / len(members) if members else 0.0
        rows.append({"set": name, "genes": len(members), "found": len(found), "coverage": coverage})
        if len(found) < max(1, min_size):
            dropped[name] = f"{len(found)} genes found in the data, fewer than min_size={min_size}"
        elif len(found) > max_size:
            dropped[name] = f"{len(found)} genes found in the data, more than max_size={max_size}"
        elif coverage < min_coverage:
            dropped[name] = (
                f"only {len(found)} of {len(members)} genes found "
                f"({coverage:.0%} < {min_coverage:.0%})"
            )
        else:
            indices[name] = found
    coverage = pd.DataFrame(rows).set_index("set") if rows else pd.DataFrame()
    return MatchedGeneSets(indices=indices, coverage=coverage, dropped=dropped)
