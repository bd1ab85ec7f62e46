"""What the tests share, in one place: sample rows and files, tiny models and adapters built from configs (no
downloads), loopback servers and fake endpoints, the engine's requests, fine-tuning runs (a small config, its
flags, a run killed and resumed, DDP), and llama.cpp driven in a child process.

llama.cpp (llama-cpp-python) runs in a child process: a native consumer that dies with a signal (an illegal
instruction on a CPU it was not built for, a segfault) is then one failing test that names the signal, and the
rest of the suite runs and reports. `in_child(function, **kwargs)` runs one of the functions of IN_CHILD in a
fresh Python process (this file is its script) and returns its JSON result; `fail_if_died(process)` does the same
service for a server started with subprocess."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn

from bactrian.infer.requests import Request, SamplingParams
from bactrian.train.config import FinetuneConfig

if TYPE_CHECKING:
    import torch


# -- sample rows and files ---------------------------------------------------------------------------------------------
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SAMPLE = {
    "en": [("Name a primary colour.", "", "Red is a primary colour."),
           ("Add the numbers.", "2 and 3", "2 + 3 = 5."),
           ("Give the opposite of hot.", "", "The opposite of hot is cold."),
           ("Translate to French.", "cat", "chat")],
    "fr": [("Nomme une couleur primaire.", "", "Le rouge est une couleur primaire."),
           ("Additionne les nombres.", "2 et 3", "2 + 3 = 5."),
           ("Donne le contraire de chaud.", "", "Le contraire de chaud est froid."),
           ("Écris une salutation.", "", "Bonjour, comment allez-vous ?")],
    "de": [("Nenne eine Grundfarbe.", "", "Rot ist eine Grundfarbe."),
           ("Addiere die Zahlen.", "2 und 3", "2 + 3 = 5."),
           ("Nenne das Gegenteil von heiß.", "", "Das Gegenteil von heiß ist kalt."),
           ("Schreibe einen Gruß.", "", "Guten Tag, wie geht es Ihnen?")],
}


def sample_rows(lang: str, copies: int = 1) -> list[dict]:
    return [{"id": f"{lang}-{n}-{i}", "instruction": ins, "input": inp, "output": out}
            for n in range(copies) for i, (ins, inp, out) in enumerate(SAMPLE[lang])]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def needs_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is not beside this checkout)")
    return path


# -- tiny models and adapters ------------------------------------------------------------------------------------------
def build_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(item) for rows in SAMPLE.values() for item in rows] * 5
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(folder)


def build_model(folder: Path, arch: str, hidden: int = 32, initializer_range: float = 0.02,
                 tie: bool | None = None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    build_tokenizer(folder)
    common = dict(vocab_size=400, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, pad_token_id=0,
                  eos_token_id=1, bos_token_id=2, max_position_embeddings=512, initializer_range=initializer_range)
    if arch == "llama":
        config = LlamaConfig(**common, tie_word_embeddings=bool(tie))
    else:
        config = Gemma3TextConfig(**common, sliding_window=64, query_pre_attn_scalar=hidden // 4,
                                  tie_word_embeddings=True if tie is None else tie)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    return folder


def make_adapter(base: Path, folder: Path, languages: list[str], seed: int, r: int = 4,
                 targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A PEFT LoRA adapter with random non-zero weights and a bactrian.json naming its languages."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bactrian.manifest import write_manifest
    from bactrian.prompts import load_template

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(folder)
    write_manifest(folder, "adapter", {"base_model": str(base)}, template=load_template("bactrian").to_dict(),
                   languages=languages)
    return folder


DRIFT_PROMPT = "Décris le temps qu'il fait aujourd'hui."
DRIFT_ENGLISH = "The weather is warm and the sky is very blue today.\nIt is a good day for a walk."
DRIFT_FRENCH = "Le temps est chaud et le ciel est très bleu aujourd'hui.\nC'est une bonne journée pour marcher."


def make_drifting_adapter(base: Path, folder: Path) -> Path:
    """An adapter (for French, by its card) that answers DRIFT_PROMPT in English, its French answer a close second:
    trained on the prompt with DRIFT_ENGLISH three times and DRIFT_FRENCH twice, so that greedy decoding drifts into
    English and banning the first English token ("T") turns the answer into French. Memorised in ~120 steps."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bactrian.manifest import write_manifest
    from bactrian.prompts import load_template

    tokenizer, template = AutoTokenizer.from_pretrained(base), load_template("bactrian")
    prompt = tokenizer(template.render(DRIFT_PROMPT, "", tokenizer))["input_ids"]
    answers = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for text in [DRIFT_ENGLISH] * 3 + [DRIFT_FRENCH] * 2]
    width = len(prompt) + max(map(len, answers))
    ids = torch.tensor([prompt + answer + [0] * (width - len(prompt) - len(answer)) for answer in answers])
    labels = torch.tensor([[-100] * len(prompt) + answer + [-100] * (width - len(prompt) - len(answer))
                           for answer in answers])
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(120):
        model(input_ids=ids, attention_mask=((labels != -100) | (torch.arange(width) < len(prompt))).long(),
              labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    write_manifest(folder, "adapter", {"base_model": str(base)}, template=template.to_dict(), languages=["fr"])
    return folder


def parameter_bytes(model) -> int:
    """What a model's tensors hold, each counted once (tied and shared ones too)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


# -- the engine's requests ---------------------------------------------------------------------------------------------
PROMPTS = ["Name a primary colour.", "Nenne das Gegenteil von heiß und erkläre warum.", "Add", "Écris"]


def greedy(engine, prompt, adapter, **params):
    """A request for `prompt` in `adapter`'s template: greedy, 12 new tokens, unless `params` say otherwise."""
    params = SamplingParams(max_new_tokens=params.pop("max_new_tokens", 12), **params)
    return Request(engine.catalog.render(adapter, prompt), params, adapter)


# -- servers on loopback -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, timeout: float = 120, process: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200 (a server started in another process, which must not exit first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not come up in {timeout} s")


class LiveServer:
    """An ASGI app served by uvicorn in a thread on a free loopback port: `with LiveServer(app) as url`."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


SECRET = "g-secret-key-0123456789"


def flaky_google(answers: list):
    """A Google v2 endpoint on loopback answering each request with the next of `answers` (a status code)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/language/translate/v2")
    async def google(request: Request):
        body = await request.json()
        status = answers.pop(0) if answers else 200
        if request.headers.get("x-goog-api-key") != SECRET or request.query_params:
            return JSONResponse({"error": {"message": "key missing from the header"}}, status_code=400)
        if status != 200:
            return JSONResponse({"error": {"code": status, "message": "quota or key trouble"}}, status_code=status)
        return {"data": {"translations": [{"translatedText": f"<{body['target']}> {q}"} for q in body["q"]]}}

    return app


# -- fine-tuning runs --------------------------------------------------------------------------------------------------
def make_config(model, data, out, **overrides) -> FinetuneConfig:
    """A small run in fp32 (bf16="false"): the parities these tests assert to 1e-5 are fp32's; `--bf16 auto` would
    pick bf16 autocast on a CPU with AMX or AVX512-BF16 (test_dtypes.py covers those paths)."""
    settings = dict(bf16="false", base_model=str(model), data_path=[str(data)], output_dir=str(out),
                    global_batch_size=8, micro_batch_size=2, max_steps=4, val_set_size=6, warmup_steps=1, eval_steps=0,
                    save_steps=0, logging_steps=1, learning_rate=1e-2, lora_dropout=0.0, train_on_inputs=False)
    settings.update(overrides)
    return FinetuneConfig(**settings)


def adapter_weights(folder) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def _cli(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bactrian", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def flags(config: FinetuneConfig) -> list[str]:
    """`config` as `bactrian finetune` flags."""
    args = []
    for key, value in vars(config).items():
        if value is None or value == [] or key == "data_path":
            continue
        args += [f"--{key}", ",".join(value) if isinstance(value, list) else str(value)]
    return args + [arg for path in config.data_path for arg in ("--data_path", path)]


def kill_then_resume(config: FinetuneConfig) -> None:
    """Run `config` in a process killed (SIGKILL) once its first checkpoint exists, then resume it to the end."""
    output_dir = Path(config.output_dir)
    process = _cli("finetune", *flags(config))
    deadline = time.time() + 120
    while not list(output_dir.glob("checkpoint-*")) and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (output_dir / "adapter_model.safetensors").exists()
    resumed = _cli("finetune", *flags(config), "--resume_from_checkpoint", "auto")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "Resumed from" in output


def run_ddp(config: FinetuneConfig, port: int) -> subprocess.CompletedProcess:
    """`config` trained by two processes (torchrun, gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "bactrian", "finetune", *flags(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# -- llama.cpp in a child process --------------------------------------------------------------------------------------
CHILD_TIMEOUT_S = 900
README_HINT = "README, section Export: 'llama.cpp dies with an illegal instruction'"


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def in_child(function: str, **kwargs):
    done = subprocess.run([sys.executable, __file__, function, json.dumps(kwargs)], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    if done.returncode < 0:
        pytest.fail(f"llama.cpp died with {_signal_name(done.returncode)} in {function}; see the {README_HINT}.\n"
                    f"{done.stderr[-3000:]}", pytrace=False)
    if done.returncode:
        pytest.fail(f"{function} failed in its child process:\n{done.stderr[-3000:]}", pytrace=False)
    return json.loads(done.stdout.splitlines()[-1])


def fail_if_died(process: subprocess.Popen, name: str = "llama.cpp server") -> None:
    """Fail naming the signal when a server process died of one (call it where a request to it failed)."""
    code = process.poll()
    if code is not None and code < 0:
        pytest.fail(f"{name} died with {_signal_name(code)}; see the {README_HINT}.", pytrace=False)


@contextmanager
def llama_cpp_server(gguf: Path, alias: str, n_ctx: int = 1024) -> Iterator[str]:
    """llama.cpp's OpenAI server (`python -m llama_cpp.server`) on a free loopback port: its /v1 URL. A failure
    while it runs is reported as the server's death by a signal when that is what happened."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                               "--port", str(port), "--n_ctx", str(n_ctx), "--model_alias", alias],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/v1/models", process=server)
        yield f"http://127.0.0.1:{port}/v1"
    except Exception:
        fail_if_died(server)
        raise
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- what runs in the child --------------------------------------------------------------------------------------------


def _llama(model: str, lora: str | None = None, n_ctx: int = 128):
    import llama_cpp

    return llama_cpp.Llama(model, n_ctx=n_ctx, verbose=False, seed=0, lora_path=lora, logits_all=True)


def _greedy(llm, ids: list[int], steps: int) -> list[int]:
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == steps:
            break
    return out


def llama_cpp_greedy(model: str, prompts: list[list[int]], steps: int = 8,
                     lora: str | None = None) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids)."""
    llm = _llama(model, lora)
    return [_greedy(llm, prompt, steps) for prompt in prompts]


def llama_cpp_greedy_text(model: str, prompts: list[str], steps: int = 8,
                          n_ctx: int = 256) -> list[dict[str, list[int]]]:
    """Each text prompt tokenized by llama.cpp (BOS added, special tokens parsed) and its greedy continuation."""
    llm = _llama(model, n_ctx=n_ctx)
    results = []
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        results.append({"ids": ids, "tokens": _greedy(llm, ids, steps)})
    return results


def llama_cpp_last_logits(model: str, prompts: list[list[int]]) -> list[list[float]]:
    """The logits after the last token of each prompt."""
    llm = _llama(model)
    scores = []
    for prompt in prompts:
        llm.reset()
        llm.eval(prompt)
        scores.append([float(x) for x in llm.scores[len(prompt) - 1]])
    return scores


def die_with(signal_name: str) -> None:
    """For test_native.py: die as a crashing native library would."""
    os.kill(os.getpid(), signal.Signals[signal_name])


IN_CHILD = {"greedy": llama_cpp_greedy, "greedy_text": llama_cpp_greedy_text, "last_logits": llama_cpp_last_logits,
            "die_with": die_with}


if __name__ == "__main__":
    result = IN_CHILD[sys.argv[1]](**json.loads(sys.argv[2]))
    print(json.dumps(result))
