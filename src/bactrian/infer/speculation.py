"""Prompt lookup decoding (Saxena 2023; transformers' `prompt_lookup_num_tokens`, vLLM's `ngram` speculation): a
greedy row guesses its next tokens by finding its last few tokens earlier in its context (the prompt and the answer
so far) and proposing what followed them there. One forward pass over the guesses checks them all; the row keeps
the longest prefix of them that the model chooses itself, then the model's own next token, so a greedy answer is
the one plain decoding gives, token for token. A step that guesses right gives several tokens for about the price
of one when a row decodes alone: its step is bound by reading the weights, which a few more positions read once.

Only a lone greedy row guesses (`DecodeBatch._draft`): a batch of several rows already reads the weights once for
all of them, and a sampled token cannot be checked this way."""

from __future__ import annotations

LONGEST_NGRAM = 3  # the longest run of last tokens looked up, tried first
SHORTEST_NGRAM = 2  # a single token recurs too often to predict what follows it
FIRST_GUESSES = 4
MOST_GUESSES = 8  # a step of 9 positions of Gemma 3 270M costs about 1.4 of one (benchmarks/speculation.py)


class Drafter:
    """One row's guesses: where each n-gram of its context last occurred with a token after it, kept up to date
    as the context grows (a step costs the tokens it added, not the context's length), and how many tokens to
    guess, grown while guesses are taken whole and shrunk when one is refused."""

    def __init__(self) -> None:
        self.followers: dict[tuple[int, ...], int] = {}  # an n-gram -> where the token after its latest occurrence is
        self.indexed = 0  # context tokens whose n-grams are in `followers`
        self.guesses = FIRST_GUESSES  # 0: guess no more (a step with guesses ran out of memory)
        self.guessed = self.kept = 0  # tokens guessed, and those the model agreed with, over the whole answer

    def propose(self, context: list[int], most: int) -> list[int]:
        """Up to `most` tokens guessed to follow `context`: what followed the latest earlier occurrence of its
        longest matching last n-gram, and where that runs into the present, the same run again (a loop of period
        `repeat` goes on); none when nothing matches."""
        if len(context) < self.indexed:  # the context was cut (a rewound answer): index it anew
            self.followers, self.indexed = {}, 0
        for follower in range(max(self.indexed, SHORTEST_NGRAM), len(context)):
            for n in range(SHORTEST_NGRAM, min(LONGEST_NGRAM, follower) + 1):
                self.followers[tuple(context[follower - n:follower])] = follower
        self.indexed = len(context)
        wanted = min(self.guesses, most)
        if wanted <= 0:
            return []
        for n in range(LONGEST_NGRAM, SHORTEST_NGRAM - 1, -1):
            follower = self.followers.get(tuple(context[-n:])) if len(context) > n else None
            if follower is not None:
                repeat = len(context) - follower
                return [context[follower + i % repeat] for i in range(wanted)]
        return []

    def taken(self, guessed: int, agreed: int) -> None:
        """How many of the `guessed` tokens the model agreed with: the next guess is longer or shorter."""
        self.guessed, self.kept = self.guessed + guessed, self.kept + agreed
        self.guesses = min(MOST_GUESSES, self.guesses + 2) if agreed == guessed else max(1, agreed + 1)

    def report(self) -> dict[str, int]:
        return {"guessed": self.guessed, "kept": self.kept}
