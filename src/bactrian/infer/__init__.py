"""Inference: the request types (`requests`), the contracts (`protocols`), one engine (`engine`, many adapters on
one base) decoding continuous batches (`decoding`, driven by `scheduler`), what a server offers before any
weights (`catalog`, `routing`), answering prompts resumably (`answers`), and the verbs chat, generate and serve
(with the server's `batcher` or an `upstream`)."""
