"""Prompt sets: the one way training, scoring and evaluation read prompts.

:func:`load_prompt_set` reads a file the user has (or the built-in set) into a :class:`PromptSet`:
the prompts in file order, a category per prompt where the format has one, and the set's
``sha256``, the hash that decides scores and goes into protocol blocks.

Formats, detected from the extension and the columns or keys (``layout=`` forces one):

- ``builtin``: 50 prompts written for didr (objects, animals, people, scenes, food, styles), shipped
  in the package, for smoke runs;
- ``txt``: one prompt per line, blank lines skipped, each line stripped (any unknown extension too);
- ``jsonl``: a ``prompt``, ``caption`` or ``text`` string field per line, ``category`` if present;
- ``json``: a list of prompt strings, or of records as in ``jsonl``;
- ``csv`` / ``tsv`` / ``parquet``: the first of the columns ``prompt``, ``Prompt``, ``Prompts``,
  ``caption``, ``text``, and ``category`` / ``Category`` if present (parquet needs pyarrow).

The released layouts of the common benchmarks, as files the user has:

- ``parti``: PartiPrompts' ``PartiPrompts.tsv`` (google-research/parti): tab-separated, no quoting
  (prompts hold bare double quotes), columns ``Prompt``, ``Category``, ``Challenge``, ``Note``;
- ``drawbench``: DrawBench's CSV, columns ``Prompts`` and ``Category``;
- ``hpdv2``: HPDv2's ``benchmark/`` folder (the HPSv2 benchmark): ``anime.json``,
  ``concept-art.json``, ``paintings.json``, ``photo.json``, each a JSON list of prompt strings,
  read in that order; the category is the style (a single style file works too);
- ``geneval``: GenEval's ``prompts/evaluation_metadata.jsonl``, one object per line with ``tag``,
  ``include`` (and ``exclude``) and ``prompt``; the category is the tag;
- ``pickapic``: Pick-a-Pic's parquet (or a CSV export) with a ``caption`` column and its pair
  columns (``ranking_id``, ``image_0_uid``, ...); captions repeat once per image pair, so repeats
  are dropped, keeping the first.

Structured formats keep each prompt exactly as stored (PartiPrompts has prompts with leading or
trailing spaces, and the hash must match the published set); blank prompts are skipped everywhere.
Every bad input is a one-line :class:`~didr.errors.ConfigError` naming the file, and the line or
column where one applies.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from didr.errors import ConfigError

BUILTIN = "builtin"
#: prompt fields of a JSONL record, in the order they are looked for
PROMPT_FIELDS = ("prompt", "caption", "text")
#: prompt columns of a table (CSV, TSV, parquet), in the order they are looked for
PROMPT_COLUMNS = ("prompt", "Prompt", "Prompts", "caption", "text")
CATEGORY_COLUMNS = ("category", "Category")
#: HPDv2's benchmark prompt files, in hpsv2's order (``hps_prompt_files`` in hpsv2/utils.py)
HPD_STYLES = ("anime", "concept-art", "paintings", "photo")
PARTI_COLUMNS = ("Prompt", "Category", "Challenge", "Note")
#: columns of Pick-a-Pic's released tables besides ``caption``; any one of them marks the layout
PICKAPIC_COLUMNS = ("ranking_id", "best_image_uid", "image_0_uid", "image_1_uid", "label_0", "jpg_0", "are_different")

LAYOUTS = (BUILTIN, "txt", "jsonl", "json", "csv", "tsv", "parquet", "parti", "drawbench", "hpdv2", "geneval", "pickapic")
SUFFIX_LAYOUTS = {".txt": "txt", ".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


@dataclass(frozen=True)
class PromptSet:
    """Prompts in file order, each with its category (None where the format has none)."""

    prompts: list[str]
    categories: list[str | None]
    name: str
    layout: str

    def __post_init__(self):
        if len(self.prompts) != len(self.categories):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.categories)} categories")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def sha256(self) -> str:
        """sha256 of ``json.dumps(prompts)`` (default separators, ASCII escapes): what decides scores."""
        return hashlib.sha256(json.dumps(self.prompts).encode()).hexdigest()

    def category_counts(self) -> dict[str, int]:
        """Prompts per category, in order of first appearance (empty when the set has none)."""
        counts: dict[str, int] = {}
        for c in self.categories:
            if c is not None:
                counts[c] = counts.get(c, 0) + 1
        return counts

    def describe(self) -> dict[str, Any]:
        """What a protocol block records of the set."""
        return {"name": self.name, "layout": self.layout, "count": len(self.prompts), "sha256": self.sha256, "categories": self.category_counts()}


def builtin_prompts() -> list[str]:
    """The built-in set: 50 prompts written for didr, one per line in ``didr/data/prompts/builtin.txt``."""
    return [line for line in resources.files("didr.data").joinpath("prompts", "builtin.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def load_prompt_set(source: str | Path, layout: str | None = None, *, limit: int | None = None,
                    categories: Sequence[str] | None = None) -> PromptSet:
    """Read a prompt set (see the module docstring for the formats).

    ``layout``: force a format instead of detecting it; ``categories``: keep only prompts of these
    categories; ``limit``: keep the first ``limit`` prompts, after repeats are dropped and
    categories filtered.
    """
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"unknown prompt set layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"prompt set limit must be a positive integer, got {limit!r}")
    if str(source) == BUILTIN or layout == BUILTIN:
        if str(source) != BUILTIN:
            raise ConfigError(f"layout 'builtin' takes the source 'builtin', got {str(source)!r}")
        found = PromptSet(builtin_prompts(), [None] * len(builtin_prompts()), BUILTIN, BUILTIN)
    else:
        found = _read(Path(source).expanduser(), layout)
    return _select(found, categories, limit, source)


def _read(path: Path, layout: str | None) -> PromptSet:
    if path.is_dir():
        if layout not in (None, "hpdv2"):
            raise ConfigError(f"prompt source {path} is a folder; only the hpdv2 layout reads a folder (its {', '.join(f'{s}.json' for s in HPD_STYLES)})")
        return _hpd_folder(path)
    if not path.is_file():
        raise ConfigError(f"prompt file not found: {path} (expected a .txt, .jsonl, .json, .csv, .tsv or .parquet file, or builtin)")
    fmt = _file_format(path, layout)
    columns, records = _parquet_records(path) if fmt == "parquet" else _text_records(path, fmt)
    layout = layout or _detect(path, fmt, columns, records)
    rows = _rows(path, fmt, columns, records, layout)
    if layout == "pickapic":
        rows = list(dict.fromkeys(rows))  # first occurrence of each caption (its category is always None)
    if not rows:
        raise ConfigError(f"prompt file {path} holds no prompts")
    return PromptSet([p for p, _ in rows], [c for _, c in rows], path.name, layout)


#: the reader each layout needs (pickapic: parquet or CSV, by extension)
LAYOUT_FORMATS = {"txt": "txt", "jsonl": "jsonl", "json": "json", "csv": "csv", "tsv": "tsv", "parquet": "parquet",
                  "parti": "tsv", "drawbench": "csv", "geneval": "jsonl", "hpdv2": "json"}


def _file_format(path: Path, layout: str | None) -> str:
    """The reader a file needs: its layout's, else its extension's (plain text when unknown)."""
    if layout == "pickapic":
        return "parquet" if path.suffix.lower() == ".parquet" else "csv"
    if layout is not None:
        return LAYOUT_FORMATS[layout]
    return SUFFIX_LAYOUTS.get(path.suffix.lower(), "txt")


def _detect(path: Path, fmt: str, columns: list[str], records: list[tuple[str, Any]]) -> str:
    """The benchmark layout a file's columns or keys show, else its format's name."""
    if fmt in ("csv", "tsv", "parquet"):
        if set(PARTI_COLUMNS) <= set(columns):
            return "parti"
        if "Prompts" in columns and "Category" in columns:
            return "drawbench"
        if "caption" in columns and any(c in columns for c in PICKAPIC_COLUMNS):
            return "pickapic"
    if fmt == "jsonl" and records and isinstance(records[0][1], dict) and {"tag", "include", "prompt"} <= set(records[0][1]):
        return "geneval"
    if fmt == "json" and path.stem in HPD_STYLES and all(isinstance(r, str) for _, r in records):
        return "hpdv2"
    return fmt


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a byte-order mark (spreadsheet exports) is not part of the first prompt
    except UnicodeDecodeError as err:
        raise ConfigError(f"prompt file {path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from None


def _text_records(path: Path, fmt: str) -> tuple[list[str], list[tuple[str, Any]]]:
    """(columns, [(location, record)]) of a text file; a location is ``file:line``."""
    text = _read_text(path)
    if fmt in ("csv", "tsv"):
        return _table_records(path, text, fmt)
    if fmt == "json":
        return [], _json_records(path, text)
    lines = [(f"{path}:{i + 1}", line.strip()) for i, line in enumerate(text.splitlines()) if line.strip()]
    if fmt == "txt":
        return ["prompt"], [(where, {"prompt": line}) for where, line in lines]
    records = []
    for where, line in lines:
        try:
            records.append((where, json.loads(line)))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from None
    return [], records


def _json_records(path: Path, text: str) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(data, list):
        raise ConfigError(f"prompt file {path}: expected a JSON list of prompts (or of records with a {' / '.join(PROMPT_FIELDS)} field), "
                          f"got a {type(data).__name__}")
    return [(f"{path} entry {i}", item) for i, item in enumerate(data)]


def _table_records(path: Path, text: str, fmt: str) -> tuple[list[str], list[tuple[str, Any]]]:
    # PartiPrompts.tsv quotes nothing and has prompts that start with a double quote: TSV reads
    # every character as it is; CSV follows the usual quoting
    options: dict[str, Any] = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else {}
    reader = csv.reader(io.StringIO(text, newline=""), **options)  # quoted cells may span lines
    try:
        header = next(reader, [])
        rows = [(f"{path}:{reader.line_num}", row) for row in reader]
    except csv.Error as err:
        raise ConfigError(f"{path}:{reader.line_num}: not valid {fmt.upper()} ({err})") from None
    records = [(where, dict(zip(header, row))) for where, row in rows if any(cell.strip() for cell in row)]
    return header, records


def _parquet_records(path: Path) -> tuple[list[str], list[tuple[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"prompt file {path}: reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        columns = list(pq.read_schema(path).names)
        wanted = [c for c in (*PROMPT_COLUMNS, *CATEGORY_COLUMNS) if c in columns]
        table = pq.read_table(path, columns=wanted).to_pydict() if wanted else {}  # Pick-a-Pic's image columns are never read
    except Exception as err:  # not a parquet file, or a damaged one
        raise ConfigError(f"prompt file {path}: cannot read it as parquet ({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
    n = len(next(iter(table.values()))) if table else 0
    return columns, [(f"{path} row {i}", {k: v[i] for k, v in table.items()}) for i in range(n)]  # rows and entries count from 0


def _rows(path: Path, fmt: str, columns: list[str], records: list[tuple[str, Any]], layout: str) -> list[tuple[str, str | None]]:
    """(prompt, category) per non-blank prompt."""
    if layout == "hpdv2":
        rows = _hpd_style(path, records)
    elif fmt in ("jsonl", "json"):
        category_keys = ("tag",) if layout == "geneval" else CATEGORY_COLUMNS
        rows = [_record_row(where, record, category_keys) for where, record in records]
    else:
        prompt_column, category_column = _table_columns(path, columns, layout)
        rows = [_cell_row(where, record, prompt_column, category_column) for where, record in records]
    return [(p, c) for p, c in rows if p.strip()]


def _record_row(where: str, record: Any, category_keys: Sequence[str]) -> tuple[str, str | None]:
    if isinstance(record, str):
        return record, None
    for key in PROMPT_FIELDS:
        if isinstance(record, dict) and isinstance(record.get(key), str):
            return record[key], _category(record, category_keys)
    raise ConfigError(f"{where}: no string field {' / '.join(PROMPT_FIELDS)}")


def _category(record: dict, keys: Iterable[str]) -> str | None:
    for key in keys:
        value = record.get(key)
        if value is not None and str(value).strip():
            return str(value)
    return None


def _table_columns(path: Path, columns: list[str], layout: str | None) -> tuple[str, str | None]:
    wanted = {"parti": ("Prompt",), "drawbench": ("Prompts",), "pickapic": ("caption",)}.get(layout or "", PROMPT_COLUMNS)
    prompt = next((c for c in wanted if c in columns), None)
    if prompt is None:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise ConfigError(f"prompt file {path}: no prompt column ({' / '.join(wanted)}); columns found: {found}")
    category = next((c for c in CATEGORY_COLUMNS if c in columns), None) if layout != "pickapic" else None
    return prompt, category


def _cell_row(where: str, record: dict, prompt_column: str, category_column: str | None) -> tuple[str, str | None]:
    value = record.get(prompt_column)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: column {prompt_column!r} holds {type(value).__name__} {value!r}, not text")
    if value is None and prompt_column in record:  # parquet null: a missing prompt, skipped like a blank one
        value = ""
    if value is None:
        raise ConfigError(f"{where}: the row ends before column {prompt_column!r}")
    return value, _category(record, [category_column] if category_column else [])


def _hpd_folder(path: Path) -> PromptSet:
    missing = [f"{s}.json" for s in HPD_STYLES if not (path / f"{s}.json").is_file()]
    if missing:
        raise ConfigError(f"prompt folder {path}: not HPDv2's benchmark folder, no {', '.join(missing)} "
                          f"(expected {', '.join(f'{s}.json' for s in HPD_STYLES)})")
    rows = []
    for style in HPD_STYLES:
        file = path / f"{style}.json"
        rows += [(p, c) for p, c in _hpd_style(file, _json_records(file, _read_text(file))) if p.strip()]
    if not rows:
        raise ConfigError(f"prompt folder {path} holds no prompts")
    return PromptSet([p for p, _ in rows], [c for _, c in rows], path.name, "hpdv2")


def _hpd_style(file: Path, records: list[tuple[str, Any]]) -> list[tuple[str, str | None]]:
    """One HPDv2 style file: a JSON list of prompt strings, the style named by the file."""
    if file.stem not in HPD_STYLES:
        raise ConfigError(f"prompt file {file}: not one of HPDv2's style files ({', '.join(f'{s}.json' for s in HPD_STYLES)})")
    for where, item in records:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: expected a prompt string, got {type(item).__name__}")
    return [(item, file.stem) for _, item in records]


def _select(found: PromptSet, categories: Sequence[str] | None, limit: int | None, source: Any) -> PromptSet:
    keep = list(range(len(found.prompts)))
    if categories is not None:
        if isinstance(categories, str):
            categories = [categories]
        known = found.category_counts()
        if not known:
            raise ConfigError(f"prompt set {source}: its {found.layout} layout has no categories to select from")
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise ConfigError(f"prompt set {source}: no category {', '.join(map(repr, unknown))}; its categories: {', '.join(known)}")
        wanted = set(categories)
        keep = [i for i in keep if found.categories[i] in wanted]
    keep = keep[:limit] if limit is not None else keep
    if len(keep) == len(found.prompts):
        return found
    return PromptSet([found.prompts[i] for i in keep], [found.categories[i] for i in keep], found.name, found.layout)
