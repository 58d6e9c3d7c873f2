"""Prompt sets: each format and benchmark layout, written by hand in its released layout, its
categories, the set's hash, the options, and every refusal."""

import json
import sys

import pytest

from didr.data.prompt_sets import HPD_STYLES, PromptSet, load_prompt_set
from didr.errors import ConfigError
from didr.models.text import load_prompts

#: PartiPrompts.tsv as released: tab-separated, nothing quoted, an empty Note, a tab before the
#: final newline; one prompt starts with a double quote, one has a trailing space
PARTI = (
    "Prompt\tCategory\tChallenge\tNote\n"
    "bond\tAbstract\tBasic\tBiology-inspired concepts with multiple meanings\n"
    '"G I G G L E" painted in thick colorful lettering as graffiti on a faded red brick wall\tIllustrations\tWriting & Symbols\t\n'
    "a cat sitting on a mat \tAnimals\tBasic\t\n"
    'The logo of a club called "The Wanderers"\tWorld Knowledge\tImagination\t\n'
)
PARTI_PROMPTS = [
    "bond",
    '"G I G G L E" painted in thick colorful lettering as graffiti on a faded red brick wall',
    "a cat sitting on a mat ",
    'The logo of a club called "The Wanderers"',
]

#: DrawBench's CSV: Prompts, Category; prompts with commas are quoted
DRAWBENCH = (
    "Prompts,Category\n"
    "A red colored car.,Colors\n"
    '"A storefront with ""Hello World"" written on it, at night.",Text\n'
    "Two cars on the street.,Counting\n"
    "A black apple and a green backpack.,Colors\n"
)

#: GenEval's prompts/evaluation_metadata.jsonl: tag, include (exclude for counting), prompt
GENEVAL = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "two_object", "include": [{"class": "toilet", "count": 1}, {"class": "bicycle", "count": 1}], "prompt": "a photo of a toilet and a bicycle"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"},
    {"tag": "colors", "include": [{"class": "cow", "count": 1, "color": "pink"}], "prompt": "a photo of a pink cow"},
]

HPD = {
    "anime": ["A hyena fursona sitting in the grass in a savannah at sunset.", "Walter White dressed as a medieval-style king."],
    "concept-art": ["Half-length portrait of the goddess of autumn, by wlop."],
    "paintings": ["A serene meadow with a tree, river, bridge, and mountains.", "A closeup portrait of a gray owl."],
    "photo": ["Large dog looking at television show in living room."],
}


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def write_hpd(folder):
    folder.mkdir()
    for style, prompts in HPD.items():
        write(folder / f"{style}.json", json.dumps(prompts, indent=4))
    write(folder / "drawbench.json", json.dumps(["not a style of the benchmark"]))  # released beside them; not read
    return folder


def write_pickapic_parquet(path, captions):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    n = len(captions)
    table = pa.table({
        "are_different": [True] * n, "best_image_uid": [f"b{i}" for i in range(n)], "caption": captions,
        "image_0_uid": [f"u{i}" for i in range(n)], "jpg_0": [b"\xff\xd8 not read" for _ in range(n)],
        "label_0": [1.0] * n, "ranking_id": list(range(n)), "user_id": [7] * n,
    })
    pq.write_table(table, path)
    return path


def test_partiprompts_tsv_reads_every_character_and_its_categories(tmp_path):
    s = load_prompt_set(write(tmp_path / "PartiPrompts.tsv", PARTI))
    assert (s.layout, s.name) == ("parti", "PartiPrompts.tsv")
    assert s.prompts == PARTI_PROMPTS
    assert s.categories == ["Abstract", "Illustrations", "Animals", "World Knowledge"]


def test_drawbench_csv(tmp_path):
    s = load_prompt_set(write(tmp_path / "drawbench.csv", DRAWBENCH))
    assert s.layout == "drawbench"
    assert s.prompts[1] == 'A storefront with "Hello World" written on it, at night.'
    assert s.categories == ["Colors", "Text", "Counting", "Colors"]
    assert s.category_counts() == {"Colors": 2, "Text": 1, "Counting": 1}


def test_hpdv2_benchmark_folder_in_hpsv2_style_order(tmp_path):
    s = load_prompt_set(write_hpd(tmp_path / "benchmark"))
    assert s.layout == "hpdv2" and s.name == "benchmark"
    assert s.prompts == [p for style in HPD_STYLES for p in HPD[style]]
    assert s.categories == [style for style in HPD_STYLES for _ in HPD[style]]
    one = load_prompt_set(tmp_path / "benchmark" / "paintings.json")
    assert (one.layout, one.prompts, set(one.categories)) == ("hpdv2", HPD["paintings"], {"paintings"})


def test_geneval_metadata_categories_are_tags(tmp_path):
    s = load_prompt_set(write(tmp_path / "evaluation_metadata.jsonl", "\n".join(json.dumps(r) for r in GENEVAL) + "\n"))
    assert s.layout == "geneval"
    assert s.prompts == [r["prompt"] for r in GENEVAL]
    assert s.categories == ["single_object", "two_object", "counting", "colors"]


def test_pickapic_parquet_drops_repeated_captions_keeping_the_first(tmp_path):
    captions = ["a frog in a suit", "a castle", "a frog in a suit", "", "a castle", "a red bicycle"]
    s = load_prompt_set(write_pickapic_parquet(tmp_path / "test_unique-00000-of-00001.parquet", captions))
    assert s.layout == "pickapic"
    assert s.prompts == ["a frog in a suit", "a castle", "a red bicycle"] and s.categories == [None] * 3
    exported = write(tmp_path / "pickapic.csv", "caption,ranking_id\n" + "".join(f"{c},{i}\n" for i, c in enumerate(captions)))
    assert load_prompt_set(exported).prompts == s.prompts
    plain = write(tmp_path / "captions.csv", "caption\na castle\na castle\n")  # no Pick-a-Pic columns: a plain CSV keeps repeats
    assert load_prompt_set(plain).prompts == ["a castle", "a castle"]
    assert load_prompt_set(plain, layout="pickapic").prompts == ["a castle"]


def test_plain_formats_give_the_same_set_and_hash(tmp_path):
    prompts = ["a cat, sleeping", "a dog", "ünïcödé ☃ prompt"]
    files = {
        "p.txt": "\n".join(["", *[f"  {p}  " for p in prompts], ""]),
        "p.jsonl": "\n".join(json.dumps({"caption": p, "id": i}) for i, p in enumerate(prompts)),
        "p.json": json.dumps(prompts),
        "p.csv": "id,text\n" + "".join(f'{i},"{p}"\n' for i, p in enumerate(prompts)),
        "p.tsv": "Prompt\tx\n" + "".join(f"{p}\t1\n" for p in prompts),
    }
    sets = {name: load_prompt_set(write(tmp_path / name, text)) for name, text in files.items()}
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": prompts, "category": ["x", None, "y"]}), tmp_path / "p.parquet")
    sets["p.parquet"] = load_prompt_set(tmp_path / "p.parquet")
    for name, s in sets.items():
        assert s.prompts == prompts, name
        assert s.layout == name.split(".")[1]
    assert len({s.sha256 for s in sets.values()}) == 1
    assert sets["p.parquet"].categories == ["x", None, "y"] and sets["p.txt"].categories == [None] * 3


def test_the_hash_is_of_the_prompt_list_alone():
    a = PromptSet(["a cat", "a dog"], [None, None], "a.txt", "txt")
    # sha256 of the JSON list '["a cat", "a dog"]', pinned: a change of encoding would change every protocol's hash
    assert a.sha256 == "d7b25492757075e9451ecfab1d2c627062f62c9fd8e42a9a2c96bad1f6f5a8cb"
    assert PromptSet(["a cat", "a dog"], ["x", "y"], "b.csv", "csv").sha256 == a.sha256
    assert PromptSet(["a dog", "a cat"], [None, None], "a.txt", "txt").sha256 != a.sha256
    assert PromptSet(["a cat", "a dog "], [None, None], "a.txt", "txt").sha256 != a.sha256
    assert a.describe() == {"name": "a.txt", "layout": "txt", "count": 2, "sha256": a.sha256, "categories": {}}


def test_builtin_set_is_pinned_and_load_prompts_delegates(tmp_path):
    s = load_prompt_set("builtin")
    assert (s.name, s.layout, len(s)) == ("builtin", "builtin", 50)
    # the smoke set's hash: editing the shipped prompts changes every score recorded against it
    assert s.sha256 == "424840a912dee26e48c948acdcd3dc90fb2088b133e17508365ad8eaa18aa4ab"
    assert load_prompts("builtin") == s.prompts
    assert load_prompts(write(tmp_path / "PartiPrompts.tsv", PARTI)) == PARTI_PROMPTS


def test_categories_and_limit(tmp_path):
    parti = write(tmp_path / "PartiPrompts.tsv", PARTI)
    assert load_prompt_set(parti, categories=["Animals", "Abstract"]).prompts == [PARTI_PROMPTS[0], PARTI_PROMPTS[2]]
    assert load_prompt_set(parti, categories="World Knowledge").categories == ["World Knowledge"]
    assert load_prompt_set(parti, limit=2).prompts == PARTI_PROMPTS[:2]
    assert load_prompt_set(parti, limit=99).prompts == PARTI_PROMPTS
    assert load_prompt_set(write_hpd(tmp_path / "hpd"), categories=["photo", "anime"], limit=2).prompts == HPD["anime"]
    captions = ["x", "x", "y", "z"]
    assert load_prompt_set(write_pickapic_parquet(tmp_path / "pick.parquet", captions), limit=2).prompts == ["x", "y"]  # after repeats go


def test_forced_layout_reads_an_unusual_name(tmp_path):
    path = write(tmp_path / "parti_prompts.data", PARTI)
    assert load_prompt_set(path).layout == "txt"  # an unknown extension is plain text, one prompt per line
    forced = load_prompt_set(path, layout="parti")
    assert forced.prompts == PARTI_PROMPTS and forced.layout == "parti"


@pytest.mark.parametrize(
    "name, content, kwargs, message",
    [
        ("missing.txt", None, {}, r"prompt file not found: .*missing\.txt"),
        ("latin1.txt", b"caf\xe9 au lait\n", {}, r"latin1\.txt: not UTF-8 text \(byte 3"),
        ("blank.txt", "\n  \n\n", {}, r"prompt file .*blank\.txt holds no prompts"),
        ("cols.csv", "id,title\n1,a cat\n", {}, r"cols\.csv: no prompt column \(prompt / Prompt / Prompts / caption / text\); columns found: 'id', 'title'"),
        ("short.csv", "id,prompt\n1,a cat\n2\n", {}, r"short\.csv:3: the row ends before column 'prompt'"),
        ("bad.jsonl", '{"prompt": "ok"}\n\n{"prompt": \n', {}, r"bad\.jsonl:3: not valid JSON"),
        ("field.jsonl", '{"prompt": "ok"}\n{"title": "no prompt"}\n', {}, r"field\.jsonl:2: no string field prompt / caption / text"),
        ("obj.json", '{"a.png": "a cat"}', {}, r"obj\.json: expected a JSON list of prompts"),
        ("broken.json", '[\n"a cat",\n', {}, r"broken\.json:3: not valid JSON"),
        ("photo.json", '["a cat", 3]', {"layout": "hpdv2"}, r"photo\.json entry 1: expected a prompt string, got int"),
        ("anime.json", '["a cat", 3]', {}, r"anime\.json entry 1: no string field prompt / caption / text"),
        ("p.txt", "a cat\n", {"layout": "midjourney"}, r"unknown prompt set layout 'midjourney'; known: builtin, txt"),
        ("p2.txt", "a cat\n", {"layout": "builtin"}, r"layout 'builtin' takes the source 'builtin'"),
        ("p3.json", '["a cat"]', {"layout": "hpdv2"}, r"p3\.json: not one of HPDv2's style files"),
        ("p4.txt", "a cat\n", {"limit": 0}, r"limit must be a positive integer, got 0"),
        ("p5.txt", "a cat\n", {"categories": ["Animals"]}, r"its txt layout has no categories"),
        ("PartiPrompts.tsv", PARTI, {"categories": ["Animals", "Food"]}, r"no category 'Food'; its categories: Abstract, Illustrations, Animals"),
        ("notparquet.parquet", "prompt\na cat\n", {}, r"notparquet\.parquet: cannot read it as parquet"),
    ],
)
def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        write(path, content)
    with pytest.raises(ConfigError, match=message) as err:
        load_prompt_set(path, **kwargs)
    assert "\n" not in str(err.value)


def test_folder_refusals(tmp_path):
    (tmp_path / "hpd").mkdir()
    write(tmp_path / "hpd" / "anime.json", "[]")
    with pytest.raises(ConfigError, match=r"hpd: not HPDv2's benchmark folder, no concept-art\.json, paintings\.json, photo\.json"):
        load_prompt_set(tmp_path / "hpd")
    for style in HPD_STYLES:
        write(tmp_path / "hpd" / f"{style}.json", "[]")
    with pytest.raises(ConfigError, match=r"prompt folder .*hpd holds no prompts"):
        load_prompt_set(tmp_path / "hpd")
    with pytest.raises(ConfigError, match=r"is a folder; only the hpdv2 layout reads a folder"):
        load_prompt_set(tmp_path / "hpd", layout="txt")


def test_parquet_without_pyarrow_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # what an environment without pyarrow imports
    with pytest.raises(ConfigError, match=r"p\.parquet: reading \.parquet needs pyarrow: pip install pyarrow"):
        load_prompt_set(write(tmp_path / "p.parquet", "x"))


def test_a_prompt_set_keeps_its_lengths_aligned():
    with pytest.raises(ValueError, match="2 prompts but 1 categories"):
        PromptSet(["a", "b"], [None], "x", "txt")
