"""What `moe-harness check` prints and writes: a terminal table (class, verdict, evidence, source)
and, with --report FILE, the same as Markdown (FILE.md) and JSON (FILE.json), each written whole
or not at all."""

from __future__ import annotations

from dataclasses import asdict
import json
from pathlib import Path
import shutil
import textwrap

from harness.check.base import Result
from harness.tables import write_text_atomic


def summary(target: str, results: list[Result]) -> str:
    counts = {v: sum(r.verdict == v for r in results) for v in ("pass", "fail", "n/a")}
    return f"{target}: {counts['pass']} pass, {counts['fail']} fail, {counts['n/a']} n/a of {len(results)} classes"


def table(target: str, results: list[Result], width: int | None = None) -> str:
    """The terminal table, its evidence column wrapped to the terminal's width."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    name_w = max(len("class"), *(len(r.name) for r in results))
    source_w = max(len("source"), *(len(r.source) for r in results))
    evidence_w = max(30, width - name_w - source_w - 6 - 6)
    lines = [f"{'class':<{name_w}}  verdict  {'evidence':<{evidence_w}}  source", "-" * min(width, 200)]
    for r in results:
        wrapped = textwrap.wrap(r.evidence, evidence_w) or [""]
        lines.append(f"{r.name:<{name_w}}  {r.verdict:<7}  {wrapped[0]:<{evidence_w}}  {r.source}")
        lines += [f"{'':<{name_w}}  {'':<7}  {more}" for more in wrapped[1:]]
    return "\n".join(lines + ["", summary(target, results)])


def markdown(target: str, results: list[Result]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = [f"| {r.name} | {r.verdict} | {cell(r.evidence)} | {cell(r.source)} |" for r in results]
    return "\n".join([f"# moe-harness check {target}", "", summary(target, results) + ".", "",
                      "| class | verdict | evidence | source |", "|---|---|---|---|", *rows, ""])


def report_paths(path: str) -> tuple[Path, Path]:
    """(FILE.md, FILE.json) of --report FILE (a .md or .json suffix dropped); ValueError before any
    check runs where its folder is missing."""
    stem = Path(path)
    stem = stem.with_suffix("") if stem.suffix in (".md", ".json") else stem
    if not stem.parent.is_dir():
        raise ValueError(f"--report {path}: no folder {str(stem.parent)!r} to write it in")
    return stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".json")


def write_report(paths: tuple[Path, Path], target: str, results: list[Result], dtype: str) -> None:
    md, js = paths
    payload = {"target": target, "dtype": dtype, "results": [asdict(r) for r in results],
               "failed": [r.name for r in results if r.verdict == "fail"]}
    write_text_atomic(md, markdown(target, results))
    write_text_atomic(js, json.dumps(payload, indent=2) + "\n")
