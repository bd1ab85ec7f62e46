"""`bactrian eval`: scoring checked against a direct computation and against lm-evaluation-harness, every task
reader, side-by-side models and the reports."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from bactrian.errors import DataError
from bactrian.eval.config import EvalConfig
from bactrian.eval.lm_eval_tasks import write_local_xcopa_tasks
from bactrian.eval.run import evaluate
from bactrian.eval.scoring import encode_pair, loglikelihoods
from bactrian.eval.statistics import wilson_interval
from bactrian.eval.tasks.base import Item
from bactrian.eval.tasks.registry import get_task

from support import needs_shared_data, write_jsonl


def test_loglikelihood_matches_a_direct_computation(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    items = [Item(f"i{n}", "en", (context, context), (" red", " blue colour"), 0, ("red", "blue colour"))
             for n, context in enumerate(["Name a colour:", "The sky is ", "Add 2 and 3 =", "x"])]
    scores = loglikelihoods(model, tokenizer, items, rows_per_batch=2)
    for item, item_scores in zip(items, scores):
        for context, continuation, score in zip(item.contexts, item.continuations, item_scores):
            context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
            ids = torch.tensor([context_ids + continuation_ids])
            with torch.no_grad():
                logprobs = model(ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, 1:]
            direct = logprobs[torch.arange(len(targets)), targets][len(context_ids) - 1:].sum()
            assert score == pytest.approx(float(direct), abs=1e-4)


def test_trailing_space_moves_to_the_continuation(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    context_ids, continuation_ids = encode_pair(tokenizer, "The sky is ", "blue")
    assert context_ids == tokenizer("The sky is")["input_ids"]
    assert context_ids + continuation_ids == tokenizer("The sky is blue")["input_ids"]


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 11, 13, 17, 29, 31, 49, 97])
def test_every_interval_holds_its_value_at_0_and_100_percent(n):
    """The Wilson upper bound of 6 of 6 came out as 0.9999999999999999, below the value: the chart's error bar
    was negative and `bactrian eval` died after writing every answer."""
    for hits in (0, n):
        low, high = wilson_interval(hits, n)
        assert low <= hits / n <= high


def test_the_report_charts_and_prints_rates_of_0_and_100_percent_at_small_n(tmp_path):
    from bactrian.eval.report import write_reports
    from bactrian.eval.tasks.confusion import confusion_summary

    passing = [{"judged": True, "line_pass": True, "word_pass": True}] * 6
    failing = [{"judged": True, "line_pass": False, "word_pass": False}] * 3
    mixed = passing[:5] + [{"judged": True, "line_pass": True, "word_pass": False}]
    summaries = {"ja": confusion_summary(passing), "de": confusion_summary(failing), "fr": confusion_summary(mixed)}
    for summary in summaries.values():
        for key in ("line_pass", "word_pass", "lcpr"):
            if summary[key] is not None:
                low, high = summary[f"{key}_ci95"]
                assert low <= summary[key] <= high, key
    metrics = [["lcpr", "LCPR %", 100.0], ["line_pass", "line-level %", 100.0]]
    results = {"tasks": {"confusion": {"base": summaries, "fr": summaries}}, "metrics": {"confusion": metrics}}
    write_reports(results, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| ja | 100.0 [61.0, 100.0] |" in report and "±" not in report
    assert sorted(path.suffix for path in (tmp_path / "report").iterdir()).count(".png") >= 2


def test_xcopa_accuracy_equals_lm_evaluation_harness(tiny_llama, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    xcopa = needs_shared_data("eval", "xcopa")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    langs = ["et", "id", "zh"]
    tasks_dir = tmp_path / "lm_eval_tasks"
    names = write_local_xcopa_tasks(tasks_dir, xcopa, langs)
    from lm_eval.tasks import TaskManager

    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama},dtype=float32",
                                     tasks=names, device="cpu", batch_size=16,
                                     task_manager=TaskManager(include_path=str(tasks_dir)))["results"]
    ours = evaluate(EvalConfig(base_model=str(tiny_llama), tasks=["xcopa"], data_dir=str(xcopa.parent), lang=langs,
                               dtype="float32", output_dir=str(tmp_path / "report")))["tasks"]["xcopa"]["base"]
    for lang in langs:
        assert abs(ours[lang]["acc"] - theirs[f"local_xcopa_{lang}"]["acc,none"]) <= 0.002, lang


def test_side_by_side_models_and_reports(tiny_llama, tiny_adapters, tmp_path):
    sib = needs_shared_data("eval", "sib-200")
    custom = write_jsonl(tmp_path / "custom.jsonl", [
        {"context": "2 + 2 =", "choices": [" 4", " 5"], "label": 0, "lang": "en"},
        {"context": "Le ciel est", "choices": [" bleu", " vert"], "label": 0, "lang": "fr"}])
    out = tmp_path / "report"
    results = evaluate(EvalConfig(base_model=str(tiny_llama), adapters_dir=str(tiny_adapters["fr"].parent),
                                  tasks=["sib200", str(custom)], data_dir=str(sib.parent), lang=["fr", "de"],
                                  limit=10, output_dir=str(out)))
    assert results["models"] == ["base", "de", "fr"]
    sib_fr = results["tasks"]["sib200"]["fr"]["fr"]
    assert sib_fr["n"] == 10 and sib_fr["acc_ci95"][0] <= sib_fr["acc"] <= sib_fr["acc_ci95"][1]
    assert len(results["examples"]["sib200"]["base"][0]["loglikelihoods"]) == 7
    base_scores = [r["loglikelihoods"] for r in results["examples"]["sib200"]["base"]]
    assert base_scores != [r["loglikelihoods"] for r in results["examples"]["sib200"]["fr"]]
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["tasks"]) == {"sib200", str(custom)}
    assert saved["bactrian_version"] and saved["config"]["tasks"] == ["sib200", str(custom)]
    report = (out / "report.md").read_text()
    assert "| language | base | de | fr |" in report and "| **average** |" in report and "| de |" in report
    assert (out / "sib200.png").stat().st_size > 5000


def test_task_readers_on_published_formats(tiny_llama, tmp_path):
    (tmp_path / "xstorycloze").mkdir()
    header = "InputStoryid\tInputSentence1\tInputSentence2\tInputSentence3\tInputSentence4\t" \
             "RandomFifthSentenceQuiz1\tRandomFifthSentenceQuiz2\tAnswerRightEnding\n"
    (tmp_path / "xstorycloze" / "spring2016.val.ru.tsv.split_20_80_eval.tsv").write_text(
        header + "s1\tА.\tБ.\tВ.\tГ.\tКонец один.\tКонец два.\t2\n", encoding="utf-8")
    story = get_task("xstorycloze").load(tmp_path, ["ru"])["ru"][0]
    assert story.contexts[0] == "А. Б. В. Г." and story.continuations == (" Конец один.", " Конец два.")
    assert story.label == 1
    (tmp_path / "xwinograd").mkdir()
    write_jsonl(tmp_path / "xwinograd" / "fr.jsonl", [
        {"sentence": "Le trophée ne rentre pas dans la valise car _ est trop grand.", "option1": "le trophée",
         "option2": "la valise", "answer": "1"}])
    wino = get_task("xwinograd").load(tmp_path, ["fr"])["fr"][0]
    assert wino.contexts == ("Le trophée ne rentre pas dans la valise car le trophée",
                             "Le trophée ne rentre pas dans la valise car la valise")
    assert wino.continuations == (" est trop grand.", " est trop grand.") and wino.label == 0
    for task, lang in (("xstorycloze", "ru"), ("xwinograd", "fr")):
        scored = evaluate(EvalConfig(base_model=str(tiny_llama), tasks=[task], data_dir=str(tmp_path), lang=[lang],
                                     output_dir=str(tmp_path / f"report-{task}")))["examples"][task]["base"][0]
        assert len(scored["loglikelihoods"]) == 2 and scored["pred"] in (0, 1)
    spec = tmp_path / "mine.yaml"
    spec.write_text(yaml.safe_dump({"items": [{"context": "Q", "choices": [" a", " b", " c"], "label": 2}]}))
    assert get_task(str(spec)).load(None, [])["und"][0].label == 2
    broken = write_jsonl(tmp_path / "broken.jsonl", [{"context": "Q", "choices": [" a"], "label": 0}])
    with pytest.raises(DataError, match="broken.jsonl: item 0: field 'choices'"):
        get_task(str(broken)).load(None, [])


def test_xcopa_prompt_follows_lm_eval():
    xcopa = needs_shared_data("eval", "xcopa")
    item = get_task("xcopa").load(xcopa.parent, ["et"])["et"][0]
    assert item.contexts[0] == "Mees keeras kraani lahti seetõttu"
    assert item.continuations == (" tualett täitus veega.", " tilast voolas vett.") and item.label == 1


def test_hub_fallback_calls_datasets(monkeypatch):
    import datasets

    calls = []

    def fake(path, name, split):
        calls.append((path, name, split))
        return [{"premise": "A.", "choice1": "B", "choice2": "C", "question": "cause", "label": 0}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert len(get_task("xcopa").load(None, ["it"])["it"]) == 1
    assert calls == [("cambridgeltl/xcopa", "it", "validation")]
