"""Evaluation tasks, one file per family, each registering its tasks by name in `registry` when imported.

`base` says what a task is: a multiple-choice task (items scored by log-likelihood) or a generative task (prompts
answered by each model, then scored). `sources` finds the files tasks are published in, or their hub datasets.
Multiple choice: `xcopa`, `xstorycloze`, `xwinograd`, `sib200`, `belebele`, and `task_file` (a .jsonl/.yaml file
of items). Generative: `confusion` (language confusion), `mgsm`, `translation` (NTREX-128, FLORES-200), `qa`
(XQuAD, MLQA). A new task is a new file here that calls `registry.register`."""
