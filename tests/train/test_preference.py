"""Preference tuning: DPO and ORPO losses and gradients equal TRL's on the same batch, preference records in
every format, `finetune --method dpo|orpo` with SFT's guarantees, and `bactrian data prefs`."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from bactrian.data.prefs import PrefsConfig, echoes, prefs, rejection
from bactrian.errors import DataError
from bactrian.records import load_records
from bactrian.train import dataset as ds
from bactrian.train import preference
from bactrian.train.finetune import finetune

from support import (
    SAMPLE,
    LiveServer,
    adapter_weights,
    kill_then_resume,
    make_adapter,
    make_config,
    max_difference,
    run_ddp,
    write_jsonl,
)

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
ROWS = [{"prompt": f"### Input:\nQuestion {i}?\n\n### Output:\n", "chosen": f"Answer number {i} is good.",
         "rejected": f"No {i * 7}"} for i in range(6)]


def _perturb(model, seed: int) -> None:
    """Random LoRA B (of the trained adapter), so the policy differs from its reference."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.default" in name:
                param.normal_(0, 0.1)


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}


def _our_model(tiny_llama, init_from=None):
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(**LORA))
    if init_from is not None:  # the trained adapter starts as `init_from`, and a frozen copy is the reference
        _perturb(model, init_from)
        model.add_adapter(preference.REFERENCE, LoraConfig(**LORA))
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, param in params.items():
                if f".{preference.REFERENCE}." in name:
                    param.copy_(params[name.replace(f".{preference.REFERENCE}.", ".default.")])
    return model


@pytest.mark.parametrize("init_adapter", [False, True], ids=["reference=base", "reference=init_adapter"])
def test_dpo_loss_and_gradients_equal_trl(tiny_llama, tmp_path, init_adapter):
    """TRL's DPOTrainer takes the base as reference for a new adapter and a frozen copy for an existing one, as
    we do; same batch (ours packed), same loss and LoRA gradients."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    args = DPOConfig(output_dir=str(tmp_path), beta=0.2, per_device_train_batch_size=6, report_to="none",
                     use_cpu=True)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    if init_adapter:
        model = get_peft_model(base, LoraConfig(**LORA))
        _perturb(model, 1)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
    else:
        trainer = DPOTrainer(model=base, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer,
                             peft_config=LoraConfig(**LORA))
    theirs = trainer.model
    _perturb(theirs, 2)
    batch = next(iter(trainer.get_train_dataloader()))
    theirs.train()
    their_loss = trainer.compute_loss(theirs, batch)
    their_loss.backward()

    count = batch["input_ids"].shape[0] // 2
    pairs = [ds.Pair(str(i), "en", tuple(batch["input_ids"][i][batch["attention_mask"][i] == 1].tolist()),
                     tuple(batch["input_ids"][count + i][batch["attention_mask"][count + i] == 1].tolist()),
                     int(batch["completion_mask"][i].nonzero()[0])) for i in range(count)]
    ours = _our_model(tiny_llama, 1 if init_adapter else None)
    if not init_adapter:  # TRL's new adapter drew its own A matrices
        with torch.no_grad():
            for (name, param), (_, their_param) in zip(ours.named_parameters(), theirs.named_parameters()):
                if "lora_A.default" in name:
                    param.copy_(their_param)
    _perturb(ours, 2)
    ours.train()
    micro, slots, starts = preference.pair_batch(pairs, tokenizer.pad_token_id, packing=True, row_tokens=80)
    assert micro.input_ids.shape[0] < 2 * count  # packed: rows hold several sequences
    policy = preference.forward_pairs(ours, micro, slots, starts, count)
    with preference.reference_model(ours, init_adapter):
        reference = preference.forward_pairs(ours, micro, slots, starts, count)
    losses, _, _ = preference.dpo_losses(policy, reference, 0.2)
    our_loss = losses.sum() / count
    our_loss.backward()
    assert float(our_loss) == pytest.approx(float(their_loss), abs=1e-5)
    assert abs(float(their_loss) - 0.6931) > 1e-3  # the policy really differs from the reference
    theirs_grads, our_grads = _grads(theirs), _grads(ours)
    assert theirs_grads.keys() == our_grads.keys()
    assert max_difference(theirs_grads, our_grads) <= 1e-6


def test_orpo_loss_and_gradients_equal_trl(tiny_llama, tmp_path):
    """TRL's ORPOTrainer: NLL over the chosen prompt and answer (our --train_on_inputs, the default) plus
    beta x the odds-ratio term on mean answer log-probabilities."""
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = _our_model(tiny_llama)
    _perturb(model, 1)
    trainer = ORPOTrainer(model=model, args=ORPOConfig(output_dir=str(tmp_path), beta=0.3, max_length=128,
                                                       per_device_train_batch_size=6, report_to="none",
                                                       use_cpu=True),
                          train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
    theirs = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    theirs.train()
    their_loss, _ = trainer.get_batch_loss_metrics(theirs, batch, "train")
    their_loss.backward()

    count = batch["chosen_input_ids"].shape[0]
    pairs = [ds.Pair(str(i), "en",
                     tuple(batch["chosen_input_ids"][i][batch["chosen_attention_mask"][i] == 1].tolist()),
                     tuple(batch["rejected_input_ids"][i][batch["rejected_attention_mask"][i] == 1].tolist()),
                     int((batch["chosen_labels"][i] != -100).nonzero()[0])) for i in range(count)]
    ours = _our_model(tiny_llama)
    _perturb(ours, 1)
    ours.train()
    micro, slots, starts = preference.pair_batch(pairs, tokenizer.pad_token_id, False, 256, learn_prompt=True)
    policy = preference.forward_pairs(ours, micro, slots, starts, count)
    losses, _, _ = preference.orpo_losses(policy, 0.3)
    our_loss = losses.sum() / count + policy.nll_sum / sum(preference.nll_tokens(p, True) for p in pairs)
    our_loss.backward()
    assert float(our_loss) == pytest.approx(float(their_loss), abs=1e-5)
    assert max_difference(_grads(theirs), _grads(ours)) <= 1e-6


def test_preference_records_in_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ours = write_jsonl(tmp_path / "fr.jsonl", [{"instruction": "Salue.", "input": "", "chosen": "Bonjour !",
                                                "rejected": "Hello!", "id": "a"}])
    trl_plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "Greet.", "chosen": "Hi!", "rejected": "Bye.",
                                                        "lang": "en"}])
    conversational = write_jsonl(tmp_path / "chat.jsonl", [{
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße."}],
        "chosen": [{"role": "assistant", "content": "Hallo!"}],
        "rejected": [{"role": "assistant", "content": "Hello!"}], "lang": "de"}])
    pq.write_table(pa.table({"prompt": ["Greet."], "chosen": ["Hi!"], "rejected": ["Bye."], "lang": ["en"]}),
                   tmp_path / "prefs.parquet")
    records = load_records([str(ours), str(trl_plain), str(conversational), str(tmp_path / "prefs.parquet")])
    assert [(r.lang, r.instruction, r.output, r.rejected) for r in records] == [
        ("fr", "Salue.", "Bonjour !", "Hello!"), ("en", "Greet.", "Hi!", "Bye."),
        ("de", "Be brief.\n\nGrüße.", "Hallo!", "Hello!"), ("en", "Greet.", "Hi!", "Bye.")]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Greet.", "chosen": "Hi!", "rejected": "Bye.", "lang": "en"},
                                               {"prompt": "Greet.", "chosen": "Hi!", "lang": "en"}])
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: field 'rejected' is missing"):
        load_records([str(bad)])
    no_reply = write_jsonl(tmp_path / "noreply.jsonl", [{"prompt": [{"role": "user", "content": "Hi"}],
                                                         "chosen": [{"role": "user", "content": "?"}],
                                                         "rejected": "x", "lang": "en"}])
    with pytest.raises(DataError, match=r"noreply.jsonl: line 1: field 'chosen' has no assistant message"):
        load_records([str(no_reply)])


def _preference_folder(tmp_path, copies: int = 3):
    """Per language: the answer chosen, the same question's answer in another language rejected."""
    folder = tmp_path / "prefs"
    folder.mkdir()
    for lang, rows in SAMPLE.items():
        other = SAMPLE["en" if lang != "en" else "fr"]
        write_jsonl(folder / f"{lang}.jsonl", [
            {"instruction": instruction, "input": text, "chosen": answer, "rejected": wrong, "id": f"{lang}-{n}"}
            for n, ((instruction, text, answer), (_, _, wrong)) in enumerate(zip(rows * copies, other * copies))])
    return folder


def test_dpo_finetune_is_independent_of_micro_batching_and_saves_a_peft_adapter(tiny_llama, tmp_path):
    from peft import PeftModel

    data = _preference_folder(tmp_path)
    one = finetune(make_config(tiny_llama, data, tmp_path / "mb1", method="dpo", micro_batch_size=1))
    four = finetune(make_config(tiny_llama, data, tmp_path / "mb4", method="dpo", micro_batch_size=4, packing=True))
    assert one["train_loss"] == pytest.approx(four["train_loss"], abs=1e-5)
    assert max_difference(adapter_weights(tmp_path / "mb1"), adapter_weights(tmp_path / "mb4")) < 1e-5
    manifest = json.loads((tmp_path / "mb1" / "bactrian.json").read_text())
    assert manifest["config"]["method"] == "dpo" and manifest["languages"] == ["de", "en", "fr"]
    assert set(manifest["metrics"]["eval_rewards_per_lang"]) == {"de", "en", "fr"}
    assert set(manifest["metrics"]["eval_loss_per_lang"]) == {"de", "en", "fr"}  # of the chosen answers
    history = json.loads((tmp_path / "mb1" / "trainer_state.json").read_text())["log_history"]
    assert history[0]["train_loss"] == pytest.approx(0.693147, abs=1e-5)  # policy = reference at the start
    assert {"rewards/margin", "rewards/accuracy", "rewards_per_lang"} <= set(history[-1])
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "mb1")
    assert list(tuned.peft_config) == ["default"]


def test_orpo_and_dpo_from_an_sft_adapter(tiny_llama, tmp_path):
    """--init_adapter: training continues from the adapter's weights and, for DPO, a frozen copy of it is the
    reference (so the first step's loss is log 2); only the trained adapter is saved."""
    data = _preference_folder(tmp_path)
    sft = make_adapter(tiny_llama, tmp_path / "sft", ["de", "en", "fr"], seed=3, r=4)
    finetune(make_config(tiny_llama, data, tmp_path / "dpo", method="dpo", init_adapter=str(sft)))
    history = json.loads((tmp_path / "dpo" / "trainer_state.json").read_text())["log_history"]
    assert history[0]["train_loss"] == pytest.approx(0.693147, abs=1e-5)
    trained, start = adapter_weights(tmp_path / "dpo"), adapter_weights(sft)
    assert trained.keys() == start.keys() and 0 < max_difference(trained, start)
    orpo = finetune(make_config(tiny_llama, data, tmp_path / "orpo", method="orpo", beta=0.5))
    assert orpo["train_loss"] > 0 and "eval_rewards/accuracy" in orpo
    with pytest.raises(DataError, match="field 'rejected' is missing; --method dpo"):
        plain = tmp_path / "plain"
        plain.mkdir()
        write_jsonl(plain / "fr.jsonl", [{"instruction": "Salue.", "output": "Bonjour", "id": "x"}] * 12)
        finetune(make_config(tiny_llama, plain, tmp_path / "none", method="dpo", val_set_size=0))


@pytest.mark.slow
def test_dpo_resumes_exactly_after_sigkill(tiny_llama, tmp_path):
    data = _preference_folder(tmp_path, copies=6)
    common = dict(method="dpo", max_steps=40, global_batch_size=4, micro_batch_size=2, lora_dropout=0.1,
                  learning_rate=3e-3, val_set_size=0)
    finetune(make_config(tiny_llama, data, tmp_path / "straight", **common))
    kill_then_resume(make_config(tiny_llama, data, tmp_path / "killed", save_steps=3, **common))
    assert max_difference(adapter_weights(tmp_path / "straight"), adapter_weights(tmp_path / "killed")) <= 1e-6


@pytest.mark.slow
def test_dpo_two_process_ddp_matches_single_process(tiny_llama, tmp_path):
    data = _preference_folder(tmp_path)
    settings = dict(method="dpo", max_steps=3, global_batch_size=8, micro_batch_size=2, val_set_size=4,
                    learning_rate=1e-2)
    single = make_config(tiny_llama, data, tmp_path / "single", **settings)
    finetune(single)
    run_ddp(make_config(tiny_llama, data, tmp_path / "ddp", **settings), 29541)
    assert max_difference(adapter_weights(tmp_path / "single"), adapter_weights(tmp_path / "ddp")) <= 1e-5
    metrics = [json.loads((tmp_path / name / "bactrian.json").read_text())["metrics"] for name in ("single", "ddp")]
    assert metrics[0]["eval_rewards/accuracy"] == metrics[1]["eval_rewards/accuracy"]
    assert metrics[0]["eval_rewards/margin"] == pytest.approx(metrics[1]["eval_rewards/margin"], abs=1e-5)


def test_rejection_rules():
    row = {"lang": "de", "instruction": "Nenne das Gegenteil von heiß.", "input": "", "output": "Kalt."}
    ok = "Das Gegenteil von heiß ist kalt, und das weiß jedes Kind hier."
    assert rejection(row, {"output": ok, "finish_reason": "stop"}) is None
    assert rejection(row, {"output": ok, "finish_reason": "length"}) == "cut_off"
    assert rejection(row, {"output": " ", "finish_reason": "stop"}) == "empty"
    english = "The opposite of hot is cold, as every child knows."
    assert rejection(row, {"output": english, "finish_reason": "stop"}) == "language_confusion"
    echo = "Nenne das Gegenteil von heiß. ### Input: Nenne das Gegenteil von heiß."
    assert rejection(row, {"output": echo, "finish_reason": "stop"}) == "echo"
    assert echoes("Gegenteil von heiß", row["instruction"]) and not echoes("kalt", row["instruction"])
    classify = {"lang": "de", "instruction": "Ist der Satz positiv oder negativ?", "input": "", "output": "Positiv."}
    assert rejection(classify, {"output": "Positiv.", "finish_reason": "stop"}) is None  # the teacher's answer
    assert rejection(classify, {"output": "Negativ.", "finish_reason": "stop"}) == "echo"  # lifted from the prompt


def judge_app(teacher_marker: str):
    """A judge that scores the answer holding `teacher_marker` 9 and the other 2, whatever their order."""
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "judge", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        prompt = (await request.json())["messages"][-1]["content"]
        first = prompt.split("[The Start of Assistant 1's Answer]\n", 1)[1].split("[The End", 1)[0]
        scores = "9 2" if teacher_marker in first else "2 9"
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": scores},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}
    return app


def test_data_prefs_builds_pairs_resumes_and_trains(tiny_llama, tiny_adapters, lang_folder, tmp_path, monkeypatch):
    """The tiny model's answers are cut off at 6 tokens: each row becomes a cut_off pair; with a judge and room
    to finish, the teacher (marked) wins both orders. The Parquet files load with datasets and train DPO."""
    import datasets

    out = tmp_path / "pairs"
    config = PrefsConfig(base_model=str(tiny_llama), lora_weights=[f"fr={tiny_adapters['fr']}"],
                         data_path=[str(lang_folder)], lang=["fr", "de"], rows_per_lang=8, max_new_tokens=6,
                         output_dir=str(out))
    report = prefs(config)
    assert report["answered"] == 16 and report["pairs"] == 16
    assert report["languages"]["fr"]["cut_off"] + report["languages"]["fr"]["echo"] + \
        report["languages"]["fr"]["language_confusion"] + report["languages"]["fr"]["empty"] == 8
    loaded = datasets.load_dataset("parquet", data_files=str(out / "fr.parquet"), split="train")
    assert loaded.column_names[:7] == ["id", "lang", "instruction", "input", "chosen", "rejected", "kind"]
    assert "| fr | 8 | 8 |" in (out / "report.md").read_text()

    from bactrian.infer.engine import Engine

    monkeypatch.setattr(Engine, "generate", lambda *args: pytest.fail("answers must be reused"))
    assert prefs(config)["pairs"] == 16
    monkeypatch.undo()

    marked = tmp_path / "marked"
    marked.mkdir()
    write_jsonl(marked / "fr.jsonl", [{"instruction": f"Question {n} ?", "output": f"TEACHER réponse {n}",
                                       "id": str(n)} for n in range(4)])
    judged_dir = tmp_path / "judged"  # answers no rule rejects, as a previous run would have left them
    (judged_dir / "work").mkdir(parents=True)
    write_jsonl(judged_dir / "work" / "answers.jsonl", [
        {"id": f"fr/{n}", "model": "base", "finish_reason": "stop",
         "output": "Voici une réponse complète en français, claire et sans détour."} for n in range(4)])
    with LiveServer(judge_app("TEACHER")) as url:
        judged = prefs(PrefsConfig(base_model=str(tiny_llama), data_path=[str(marked)], output_dir=str(judged_dir),
                                   judge_base_url=f"{url}/v1", judge_model="judge"))
    assert judged["languages"]["fr"]["judge"] == 4 and judged["judge"] == {"teacher": 4}
    pairs = datasets.load_dataset("parquet", data_files=str(judged_dir / "fr.parquet"), split="train")
    assert all(row["chosen"].startswith("TEACHER") and row["kind"] == "judge" for row in pairs)
    finetune(make_config(tiny_llama, out, tmp_path / "dpo", method="dpo", val_set_size=0, max_steps=2))
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()


def test_dpo_per_language(tiny_llama, tmp_path):
    data = _preference_folder(tmp_path)
    results = finetune(make_config(tiny_llama, data, tmp_path / "adapters", method="dpo", lang=["fr", "de"],
                                   per_language=True, max_steps=2, val_set_size=2))
    assert set(results["languages"]) == {"fr", "de"}
    for lang in ("fr", "de"):
        manifest = json.loads((tmp_path / "adapters" / lang / "bactrian.json").read_text())
        assert manifest["languages"] == [lang] and manifest["config"]["method"] == "dpo"
        assert list(manifest["metrics"]["eval_rewards_per_lang"]) == [lang]
        assert "dpo" in (tmp_path / "adapters" / lang / "README.md").read_text().lower()


def test_the_reference_is_deterministic_under_lora_dropout(tiny_llama):
    """The reference pass runs in eval mode: the frozen adapter's dropout does not make its log-probs noisy."""
    torch.manual_seed(0)
    dropping = {**LORA, "lora_dropout": 0.5}
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(**dropping))
    _perturb(model, 1)
    model.add_adapter(preference.REFERENCE, LoraConfig(**dropping))
    model.train()
    pairs = [ds.Pair("0", "en", (2, 10, 11, 12, 13, 1), (2, 10, 11, 14, 1), 3)]
    micro, slots, starts = preference.pair_batch(pairs, 0, False, 64)
    runs = []
    for _ in range(2):
        with preference.reference_model(model, True):
            runs.append(preference.forward_pairs(model, micro, slots, starts, 1).chosen_logps)
    assert torch.equal(runs[0], runs[1]) and model.training
    assert [n for n, p in model.named_parameters() if p.requires_grad and ".reference." in n] == []
