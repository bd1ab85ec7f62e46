"""`bactrian chat`: the original generate.py Gradio app (same controls and defaults), plus an adapter picker
with `auto` (showing the detected language) and a multi-turn chat tab. Concurrent users share the batcher."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from .batcher import Batcher
from .config import ChatConfig
from .engine import Engine, build_engine
from .requests import GUARD_RETRIES, Delta, Request, SamplingParams
from .routing import AUTO, BASE, guard_for

log = logging.getLogger(__name__)

# The page samples and streams by default; the original's defaults (beam search, 4 beams) are one click away.
ORIGINAL_SETTINGS = (0.1, 0.75, 40, 4, 128, True)  # temperature, top p, top k, beams, max tokens, stream
BEAMS_NOTE = ("Beams above 1 search beams: Temperature, Top p and Top k have no effect, and the answer appears "
              "whole instead of streaming.")


def _params(temperature: float, top_p: float, top_k: int, beams: int, max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                          num_beams=int(beams), max_new_tokens=int(max_tokens))


def _guard_note(on: bool, request: Request, delta: Delta) -> str:
    """What the guard did, for the note under the answer."""
    if not on:
        return ""
    if request.guard is None:
        return " Language guard: the language could not be told, so the answer was not checked."
    if request.params.num_beams > 1:
        return " Language guard: off for beam search (beams decode whole answers)."
    report = delta.guard or {}
    return (f" Language guard ({report.get('lang')}): {report.get('checked', 0)} pieces checked, "
            f"{report.get('retried', 0)} decoded again, {report.get('unfixed', 0)} still in another language.")


def _raise_error(delta: Delta) -> None:
    if delta.error:
        import gradio as gr

        raise gr.Error(delta.error)


def _plain_text(content: Any) -> str:
    """Gradio 6 keeps a chat message's content as a list of parts; the engine wants its text."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def build_app(engine: Engine, batcher: Batcher | None = None, language_guard: bool = False,
              guard_retries: int = GUARD_RETRIES) -> Any:
    import gradio as gr

    batcher = batcher or Batcher(engine)
    choices = [AUTO, *engine.catalog.adapters, BASE] if engine.catalog.adapters else [BASE]

    async def answer(instruction: str, input: str, temperature: float, top_p: float, top_k: int, beams: int,
                     max_tokens: int, stream: bool, adapter: str, guarded: bool) -> AsyncIterator[tuple[str, str]]:
        route = engine.catalog.resolve_adapter(adapter, f"{instruction}\n{input}")
        params = _params(temperature, top_p, top_k, beams, max_tokens)
        request = Request(engine.catalog.render(route.adapter, instruction, input), params, route.adapter,
                          guard=guard_for([f"{instruction}\n{input}"], guard_retries)
                          if guarded and params.num_beams == 1 else None)
        text = ""
        async for delta in batcher.stream(request):
            _raise_error(delta)
            text += delta.text
            if stream:
                yield text, route.note()
        yield text, route.note() + _guard_note(guarded, request, delta)

    async def converse(message: str, history: list[dict[str, str]], adapter: str, temperature: float,
                       max_tokens: int, guarded: bool) -> AsyncIterator[tuple[list[dict[str, str]], str, str]]:
        messages = [{"role": m["role"], "content": _plain_text(m["content"])} for m in history] + [
            {"role": "user", "content": message}]
        users = [m["content"] for m in messages if m["role"] == "user"]
        route = engine.catalog.resolve_adapter(adapter, users)
        request = Request(engine.catalog.encode_chat(route.adapter, messages),
                          _params(temperature, 1.0, 0, 1, max_tokens),
                          route.adapter, guard=guard_for(users, guard_retries) if guarded else None)
        reply = ""
        async for delta in batcher.stream(request):
            _raise_error(delta)
            reply += delta.text
            note = route.note() + (_guard_note(guarded, request, delta) if delta.finish_reason else "")
            yield messages + [{"role": "assistant", "content": reply}], "", note

    with gr.Blocks(title="bactrian") as app:
        mode = ", ".join(f"{key} {value}" for key, value in engine.mode.items())
        gr.Markdown(f"# bactrian\nBase model: `{engine.loaded.source.spec}`; adapters: "
                    f"{', '.join(engine.catalog.adapters) or 'none'}; decoding: {mode}.")
        adapter = gr.Dropdown(choices, value=choices[0], label="Adapter (auto picks by the input's language)")
        guarded = gr.Checkbox(label="Keep the answer in my language (language guard)", value=language_guard,
                              elem_id="language_guard")
        with gr.Tab("Instruction"):
            instruction = gr.Textbox(lines=2, label="Instruction", placeholder="Tell me about alpacas.",
                                     elem_id="instruction")
            input_box = gr.Textbox(lines=2, label="Input", placeholder="none", elem_id="input")
            temperature = gr.Slider(0, 1, value=0.1, label="Temperature")
            top_p = gr.Slider(0, 1, value=0.75, label="Top p")
            top_k = gr.Slider(0, 100, step=1, value=40, label="Top k")
            beams = gr.Slider(1, 4, step=1, value=1, label="Beams (above 1: beam search, no streaming)")
            beams_note = gr.Markdown(BEAMS_NOTE, visible=False, elem_id="beams_note")
            max_tokens = gr.Slider(1, 2000, step=1, value=128, label="Max tokens")
            stream = gr.Checkbox(label="Stream output", value=True)
            original = gr.Button("The original generate.py settings (Beams 4)", size="sm", elem_id="original")
            beams.change(lambda width: gr.update(visible=width > 1), beams, beams_note)
            original.click(lambda: ORIGINAL_SETTINGS, None, [temperature, top_p, top_k, beams, max_tokens, stream])
            submit = gr.Button("Submit", variant="primary", elem_id="submit")
            output = gr.Textbox(lines=5, label="Output", elem_id="output")
            routed = gr.Markdown(elem_id="routed")
            submit.click(answer, [instruction, input_box, temperature, top_p, top_k, beams, max_tokens, stream,
                                  adapter, guarded], [output, routed], api_name="answer",
                         concurrency_limit=None)  # the batcher, not Gradio's queue, decides what runs together
        with gr.Tab("Chat"):
            chatbot = gr.Chatbot(label="Conversation")
            message = gr.Textbox(label="Message", elem_id="message")
            chat_temperature = gr.Slider(0, 1, value=0.0, label="Temperature")
            chat_tokens = gr.Slider(1, 2000, step=1, value=128, label="Max tokens")
            chat_routed = gr.Markdown(elem_id="chat_routed")
            message.submit(converse, [message, chatbot, adapter, chat_temperature, chat_tokens, guarded],
                           [chatbot, message, chat_routed], api_name="chat",
                           concurrency_limit=None)
    return app


def chat(config: ChatConfig) -> None:
    engine = build_engine(config)
    app = build_app(engine, language_guard=config.language_guard, guard_retries=config.guard_retries)
    log.info("Chat UI on http://%s:%d", config.server_name, config.server_port)
    app.queue().launch(server_name=config.server_name, server_port=config.server_port, share=config.share_gradio)
