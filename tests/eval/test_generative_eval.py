"""Generative evaluation: the metrics against independent implementations (lm-evaluation-harness's MGSM filters
and metric, torchmetrics' SQuAD, the official MLQA script as lm-eval ships it, sacrebleu), language confusion on
real text, the published formats, and `bactrian eval` end to end: answers through the engine, resumed, scored,
reported."""

import json
import re
from pathlib import Path

import pytest

from bactrian.errors import ConfigError, DataError
from bactrian.eval import metrics
from bactrian.eval.config import EvalConfig
from bactrian.eval.run import evaluate
from bactrian.eval.tasks.base import Prompt
from bactrian.eval.tasks.mgsm import MGSM
from bactrian.eval.tasks.registry import get_task
from bactrian.eval.tasks.translation import ntrex_files

from support import needs_shared_data, write_jsonl

MGSM_ANSWERS = ["18", " 18 ", "18 Dollar.", "Sie verdient $18.", "1,000 Eier", "Es sind -5 und dann 7.", "keine Zahl",
                "Die Antwort lautet 42.", "Die Antwort lautet 3,5 und nicht 4", "$1,234.50", "12.", ""]


def test_mgsm_extraction_matches_lm_evaluation_harness():
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter, WhitespaceFilter

    flexible = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    strict_cot = RegexFilter(regex_pattern=r"Die Antwort lautet (\-?[0-9\.\,]+)")
    cot = get_task("mgsm_cot").score
    direct = get_task("mgsm_direct").score
    for reference in ("18", "1000", "42", "7"):
        prompt = Prompt("p", "de", "q", reference=reference)
        for answer in MGSM_ANSWERS:
            theirs_flexible = flexible.apply([[answer]], [{}])[0][0]
            theirs_direct = WhitespaceFilter().apply([[answer]], [{}])[0][0]
            theirs_cot = strict_cot.apply([[answer]], [{}])[0][0]
            ours_direct, ours_cot = direct(prompt, answer), cot(prompt, answer)
            assert ours_direct["flexible"] == theirs_flexible and ours_cot["strict"] == theirs_cot, answer
            assert ours_direct["strict"] == theirs_direct, answer
            for ours, theirs, key in ((ours_direct, theirs_flexible, "flexible_match"),
                                      (ours_direct, theirs_direct, "strict_match"),
                                      (ours_cot, theirs_cot, "strict_match")):
                expected = exact_match_hf_evaluate([theirs], [reference], ignore_case=True,
                                                   ignore_punctuation=True)["exact_match"]
                assert ours[key] == bool(expected), (answer, reference, key)


def test_mgsm_direct_end_to_end_equals_lm_evaluation_harness(tiny_llama, tmp_path):
    """The same model answers the same files: lm-eval's answers, extracted values and scores equal ours. (The
    tiny model emits stray bytes: decoded all at once (lm-eval) or token by token (our stream), an invalid
    UTF-8 run becomes a different number of U+FFFD, so those are left out of the comparison of texts.)"""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from bactrian.eval.lm_eval_tasks import write_local_mgsm_tasks

    mgsm = needs_shared_data("eval", "mgsm")
    langs = ["de", "en"]  # prompts within the tiny model's 512 positions (lm-eval would cut longer ones)
    names = write_local_mgsm_tasks(tmp_path / "tasks", mgsm, langs)
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama},dtype=float32,add_bos_token=True",
                                     tasks=names, device="cpu", batch_size=4, limit=6, log_samples=True,
                                     gen_kwargs="max_gen_toks=12",
                                     task_manager=TaskManager(include_path=str(tmp_path / "tasks")))
    ours = evaluate(EvalConfig(base_model=str(tiny_llama), tasks=["mgsm_direct"], data_dir=str(mgsm), lang=langs,
                               limit=6, prompt_template_name="raw", max_new_tokens=12, decode_batch_size=4,
                               dtype="float32", output_dir=str(tmp_path / "ours")))
    rows = {row["id"]: row for row in ours["examples"]["mgsm_direct"]["base"]}
    for lang in langs:
        for sample in theirs["samples"][f"local_mgsm_direct_{lang}"]:
            row = rows[f"mgsm-{lang}-{sample['doc_id']}"]
            assert row["answer"].replace("\ufffd", "") == sample["resps"][0][0].replace("\ufffd", "")
            key = "flexible" if sample["filter"] == "flexible-extract" else "strict"
            assert row[key] == sample["filtered_resps"][0]
        result = theirs["results"][f"local_mgsm_direct_{lang}"]
        summary = ours["tasks"]["mgsm_direct"]["base"][lang]
        assert summary["flexible_match"] == pytest.approx(result["exact_match,flexible-extract"])
        assert summary["strict_match"] == pytest.approx(result["exact_match,remove_whitespace"])


def _variants(answer: str) -> list[str]:
    return [answer, f"The {answer}.", f"«{answer}»", answer.upper(), answer.split()[0] if answer.split() else "",
            f"{answer} und noch etwas mehr", "völlig falsch", ""]


def test_xquad_scores_equal_torchmetrics_squad():
    from torchmetrics.functional.text import squad

    xquad = needs_shared_data("eval", "xquad")
    prompts = [p for lang in ("en", "de", "zh", "ar") for p in get_task("xquad").read(xquad, [lang], "")[:20]]
    for number, prompt in enumerate(prompts):
        for prediction in _variants(prompt.reference[0]):
            ours = metrics.qa_scores(prediction, prompt.reference, prompt.lang)
            theirs = squad([{"prediction_text": prediction, "id": str(number)}],
                           [{"answers": {"answer_start": [0] * len(prompt.reference), "text": prompt.reference},
                             "id": str(number)}])
            assert 100 * ours["em"] == pytest.approx(float(theirs["exact_match"])), prediction
            assert 100 * ours["f1"] == pytest.approx(float(theirs["f1"])), prediction


def test_mlqa_scores_equal_the_official_script():
    """lm-evaluation-harness ships the official MLQA script's functions (Arabic aside: its copy changed the
    article rule; we keep the official one)."""
    from lm_eval.tasks.mlqa import utils as official

    xquad = needs_shared_data("eval", "xquad")
    for lang in ("en", "de", "es", "vi", "zh", "hi"):
        for prompt in get_task("xquad").read(xquad, [lang], "")[:15]:
            for prediction in _variants(prompt.reference[0]):
                ours = metrics.qa_scores(prediction, prompt.reference, lang, mlqa=True)
                em = official.metric_max_over_ground_truths(official.exact_match_score, prediction, prompt.reference,
                                                            lang)
                f1 = official.metric_max_over_ground_truths(official.f1_score, prediction, prompt.reference, lang)
                assert (ours["em"], ours["f1"]) == pytest.approx((float(em), float(f1))), (lang, prediction)


def test_translation_scores_are_sacrebleus():
    from sacrebleu.metrics import BLEU, CHRF

    ntrex = needs_shared_data("translation", "ntrex-128")
    source, references = ntrex_files(ntrex)
    english = source.read_text(encoding="utf-8").splitlines()[:30]
    german = references["de"].read_text(encoding="utf-8").splitlines()[:30]
    perfect = metrics.translation_scores(german, german, "de", bootstrap=100)
    assert perfect["chrf++"] == pytest.approx(100) and perfect["bleu"] == pytest.approx(100)
    scores = metrics.translation_scores(english, german, "de", bootstrap=200)
    assert scores["chrf++"] == pytest.approx(CHRF(word_order=2).corpus_score(english, [german]).score)
    assert scores["bleu"] == pytest.approx(BLEU().corpus_score(english, [german]).score)
    assert scores["chrf++_ci95"][0] <= scores["chrf++"] <= scores["chrf++_ci95"][1]
    assert "nw:2" in scores["chrf++_signature"] and "tok:13a" in scores["bleu_signature"]
    chinese = references["zh"].read_text(encoding="utf-8").splitlines()[:5]
    assert "tok:zh" in metrics.translation_scores(chinese, chinese, "zh", bootstrap=10)["bleu_signature"]


def test_language_confusion_on_real_text():
    ntrex = needs_shared_data("translation", "ntrex-128")
    _, references = ntrex_files(ntrex)
    english = (ntrex / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()
    for lang in ("de", "es", "pt", "gl", "hr", "ar", "hi", "ja", "zh", "ru", "ko", "tr"):
        lines = references[lang].read_text(encoding="utf-8").splitlines()[:40]
        answers = ["\n".join(lines[i:i + 3]) for i in range(0, 40, 3)]  # answers of three lines each
        verdicts = [metrics.language_confusion(answer, lang) for answer in answers]
        judged = [v for v in verdicts if v["judged"]]
        assert sum(v["line_pass"] for v in judged) >= 0.9 * len(judged), lang
        assert sum(bool(v["word_pass"]) for v in judged) >= 0.9 * len(judged), lang
        wrong = metrics.language_confusion("\n".join(english[:3]), lang)  # answered in English
        assert wrong["line_pass"] is False and wrong["failed"] in english[:3], lang
    german = references["de"].read_text(encoding="utf-8").splitlines()[5]
    english_run = "and then we went to the market to buy some bread"
    mixed = metrics.language_confusion(f"{german} {english_run}", "de")
    assert mixed["line_pass"] is True and mixed["word_pass"] is False and mixed["failed"] in english_run
    japanese = references["ja"].read_text(encoding="utf-8").splitlines()[5]
    mixed = metrics.language_confusion(f"{japanese} this is because the weather", "ja")
    assert mixed["word_pass"] is False and mixed["failed"] == "this"
    assert metrics.language_confusion(f"{japanese} Tokyo NASA", "ja")["word_pass"] is True  # names pass
    assert metrics.language_confusion("Ja, gut.", "de") == {"judged": False, "line_pass": None, "word_pass": None}
    for short in ("1. 1. 1. 1. 1. 1. 1. 1.", "### Explanation:", "6. CRISPR-Cas9遺伝子"):  # no 5 words with letters
        assert metrics.language_confusion(short, "ja")["judged"] is False, short


def test_confusion_summary_is_the_papers():
    rows = [{"judged": True, "line_pass": True, "word_pass": True}] * 6 + \
           [{"judged": True, "line_pass": True, "word_pass": False}] * 2 + \
           [{"judged": True, "line_pass": False, "word_pass": None}] * 2 + \
           [{"judged": False, "line_pass": None, "word_pass": None}] * 5
    summary = get_task("confusion").summarise(rows)
    assert summary["line_pass"] == 0.8 and summary["word_pass"] == 0.75 and summary["n"] == 15
    assert summary["lcpr"] == pytest.approx(2 * 0.8 * 0.75 / 1.55)
    assert summary["lcpr_ci95"][0] <= summary["lcpr"] <= summary["lcpr_ci95"][1]


def test_published_formats_and_their_errors(tmp_path):
    """MGSM TSV, SQuAD JSON (XQuAD; MLQA's file names), FLORES-200 files, Vicuna folders and instruction files,
    Belebele JSONL; a bad row is named by file and line."""
    (tmp_path / "mgsm").mkdir()
    (tmp_path / "mgsm" / "mgsm_de.tsv").write_text('Wie viel ist "zwei" plus 2?\t4\nUnd 3 mal 3?\t9\n')
    prompts = get_task("mgsm_cot").read(tmp_path, [], "")
    assert [p.reference for p in prompts] == ["4", "9"] and prompts[0].lang == "de"
    assert prompts[0].instruction == 'Frage: Wie viel ist "zwei" plus 2?\nSchritt-für-Schritt-Antwort:'
    (tmp_path / "mgsm" / "mgsm_de.tsv").write_text("Und 3 mal 3?\t9\nkaputt\n")
    with pytest.raises(DataError, match=r"mgsm_de.tsv: line 2: expected question<TAB>answer"):
        get_task("mgsm_direct").read(tmp_path, ["de"], "")
    with pytest.raises(ConfigError, match="mgsm has no language 'xx'|no language"):
        get_task("mgsm_direct").read(tmp_path, ["ko"], "")

    squad = {"data": [{"paragraphs": [{"context": "Paris ist die Hauptstadt.", "qas": [
        {"id": "q1", "question": "Was ist die Hauptstadt?", "answers": [{"text": "Paris", "answer_start": 0}]}]}]}]}
    (tmp_path / "mlqa").mkdir()
    (tmp_path / "mlqa" / "test-context-de-question-de.json").write_text(json.dumps(squad))
    [prompt] = get_task("mlqa").read(tmp_path, [], "")
    assert prompt.reference == ["Paris"] and prompt.instruction.startswith("Kontext: Paris") and \
        prompt.instruction.endswith("Antwort:")
    squad["data"][0]["paragraphs"][0]["qas"][0].pop("answers")
    (tmp_path / "mlqa" / "test-context-de-question-de.json").write_text(json.dumps(squad))
    with pytest.raises(DataError, match="test-context-de-question-de.json: article 0, question q1"):
        get_task("mlqa").read(tmp_path, [], "")

    flores = tmp_path / "flores200_dataset" / "devtest"
    flores.mkdir(parents=True)
    (flores / "eng_Latn.devtest").write_text("Hello.\nGood night.\n")
    (flores / "fra_Latn.devtest").write_text("Bonjour.\nBonne nuit.\n")
    prompts = get_task("flores").read(tmp_path, [], "")
    assert {p.group for p in prompts} == {"en-fr", "fr-en"} and len(prompts) == 4
    assert prompts[0].instruction == "Translate the following text from English into French." and \
        prompts[0].input == "Hello." and prompts[0].reference == "Bonjour."
    (flores / "fra_Latn.devtest").write_text("Bonjour.\n")
    with pytest.raises(DataError, match="fra_Latn.devtest: 1 lines, but .*eng_Latn.devtest has 2"):
        get_task("flores").read(tmp_path, [], "")

    own = write_jsonl(tmp_path / "own.jsonl", [{"instruction": "Wie spät ist es?", "lang": "de", "id": "a"},
                                               {"instruction": "Quelle heure est-il ?", "lang": "fr", "id": "b"}])
    assert [(p.id, p.lang) for p in get_task("confusion").read(None, ["fr"], str(own))] == [("b", "fr")]
    write_jsonl(tmp_path / "nolang.jsonl", [{"instruction": "Hi", "id": "a"}])
    with pytest.raises(DataError, match="nolang.jsonl: row a: field 'lang'"):
        get_task("confusion").read(None, [], str(tmp_path / "nolang.jsonl"))

    (tmp_path / "belebele").mkdir()
    row = {"flores_passage": "Le chat dort.", "question": "Qui dort ? ", "mc_answer1": "le chien",
           "mc_answer2": "le chat", "mc_answer3": "la souris", "mc_answer4": "personne", "correct_answer_num": "2"}
    write_jsonl(tmp_path / "belebele" / "fra_Latn.jsonl", [row, {**row, "correct_answer_num": "5"}])
    with pytest.raises(DataError, match="fra_Latn.jsonl: line 2: field 'correct_answer_num'"):
        get_task("belebele").load(tmp_path, ["fr"])
    write_jsonl(tmp_path / "belebele" / "fra_Latn.jsonl", [row])
    [item] = get_task("belebele").load(tmp_path, ["fr"])["fr"]
    assert item.label == 1 and item.continuations == (" A", " B", " C", " D")
    assert item.contexts[0] == ("P: Le chat dort.\nQ: Qui dort ?\nA: le chien\nB: le chat\nC: la souris\n"
                                "D: personne\nAnswer:")


def test_belebele_accuracy_equals_lm_evaluation_harness(tiny_llama, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    rows = [{"flores_passage": f"Passage {i} about cats and dogs.", "question": f"Question {i}?",
             **{f"mc_answer{k}": f"answer {k} {i}" for k in range(1, 5)}, "correct_answer_num": str(1 + i % 4)}
            for i in range(12)]
    (tmp_path / "belebele").mkdir()
    write_jsonl(tmp_path / "belebele" / "fra_Latn.jsonl", rows)
    template = Path(lm_eval.__file__).parent / "tasks" / "belebele" / "_default_template_yaml"
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local_belebele.yaml").write_text(
        f"include: {template}\ntask: local_belebele\ndataset_path: json\ndataset_name: null\ndataset_kwargs:\n"
        f"  data_files:\n    test: {tmp_path / 'belebele' / 'fra_Latn.jsonl'}\ntest_split: test\n")
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama},dtype=float32",
                                     tasks=["local_belebele"], device="cpu", batch_size=8,
                                     task_manager=TaskManager(include_path=str(tmp_path / "tasks")))
    ours = evaluate(EvalConfig(base_model=str(tiny_llama), tasks=["belebele"], data_dir=str(tmp_path), lang=["fr"],
                               dtype="float32", output_dir=str(tmp_path / "ours")))["tasks"]["belebele"]["base"]["fr"]
    assert ours["acc"] == pytest.approx(theirs["results"]["local_belebele"]["acc,none"])


def test_generative_eval_end_to_end_resumes_and_reports(tiny_llama, tiny_adapters, tmp_path, monkeypatch):
    data = needs_shared_data()
    out = tmp_path / "report"
    config = EvalConfig(base_model=str(tiny_llama), adapters_dir=str(tiny_adapters["fr"].parent),
                        tasks=["confusion", "mgsm_direct", "ntrex", "xquad"], data_dir=str(data), lang=["de", "zh"],
                        limit=2, max_new_tokens=8, output_dir=str(out))
    results = evaluate(config)
    assert results["models"] == ["base", "de", "fr"]
    assert set(results["tasks"]["ntrex"]["fr"]) == {"en-de", "de-en", "en-zh", "zh-en"}
    for task, groups in (("confusion", {"de", "zh"}), ("mgsm_direct", {"de", "zh"}), ("xquad", {"de", "zh"})):
        assert set(results["tasks"][task]["de"]) == groups, task
    saved = json.loads((out / "results.json").read_text())
    examples = saved["examples"]["xquad"]["fr"]
    assert len(examples) == 4 and {"answer", "prediction", "em", "f1"} <= set(examples[0])
    assert len(saved["examples"]["ntrex"]["base"]) == 8 and "sentence_chrf++" in saved["examples"]["ntrex"]["base"][0]
    report = (out / "report.md").read_text()
    for heading in ("## confusion: language confusion pass rate", "## mgsm_direct: exact match % (flexible",
                    "## ntrex: chrF++", "## xquad: F1 %"):
        assert heading in report, heading
    assert "| en-zh |" in report and "| **average** |" in report
    failed = [(model, row) for model, rows in saved["examples"]["confusion"].items() for row in rows
              if row.get("failed")]
    assert f"### confusion: the {len(failed)} answers that failed" in report if failed else "failed" not in report
    assert (out / "ntrex-heatmap.png").stat().st_size > 5000
    answers = (out / "answers" / "ntrex.jsonl").read_text().splitlines()
    assert len(answers) == 8 * 3 and all(json.loads(line)["model"] in ("base", "de", "fr") for line in answers)

    from bactrian.infer.engine import Engine

    monkeypatch.setattr(Engine, "generate", lambda *args: pytest.fail("a rerun must reuse the answers"))
    again = evaluate(config)
    assert again["tasks"]["ntrex"] == results["tasks"]["ntrex"]
    config.max_new_tokens = 9
    config.tasks = ["ntrex"]
    with pytest.raises(ConfigError, match=re.escape(str(out / "answers" / "ntrex.jsonl"))):
        evaluate(config)


def test_mgsm_prompts_are_lm_evaluations():
    """Our table of prompt words is lm-evaluation-harness's (its tasks/mgsm/utils.py)."""
    from lm_eval.tasks.mgsm import utils

    for lang, (question, direct, step_by_step, answer) in MGSM.items():
        theirs = utils.LANGUAGES[lang]
        assert (question, direct, step_by_step) == (theirs["QUESTION"], theirs["DIRECT"], theirs["ANSWER"]), lang
        assert theirs["REGEX"] in (answer, f"{answer} (\\-?[0-9\\.\\,]+)"), lang


def test_hub_fallbacks_call_datasets(monkeypatch):
    import datasets

    calls = []
    rows = {"juletxara/mgsm": [{"question": "1 + 1?", "answer_number": 2}],
            "google/xquad": [{"id": "q", "context": "Paris.", "question": "Wo?", "answers": {"text": ["Paris"]}}]}

    def fake(path, name, split):
        calls.append((path, name, split))
        return rows[path]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    [mgsm] = get_task("mgsm_direct").read(None, ["de"], "")
    [xquad] = get_task("xquad").read(None, ["de"], "")
    assert mgsm.reference == "2" and mgsm.instruction == "Frage: 1 + 1?\nAntwort:"
    assert xquad.reference == ["Paris"] and xquad.instruction.startswith("Kontext: Paris.")
    assert calls == [("juletxara/mgsm", "de", "test"), ("google/xquad", "xquad.de", "validation")]
