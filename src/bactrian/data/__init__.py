"""Making instruction data: the `bactrian data` verbs (translate, generate, filter, build, stats, prefs), their
options (`config`), what translate and generate share (`jobs`) and the local engines they can use (`local`)."""
