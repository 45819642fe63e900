"""A1111's 75-token chunking: BREAK, the 20-token comma backtrack, per-token emphasis weights.

A prompt becomes chunks of BOS + 75 tokens + EOS (padded with EOS), each encoded separately by CLIP and
concatenated. When a chunk fills up and a comma came within its last 20 tokens, the words after that
comma move to the next chunk so a tag is not cut in half. The token count reproduces A1111's counter,
including its quirk that a chunk closed early (by BREAK or the backtrack) counts as a full 75.
"""

from __future__ import annotations

from dataclasses import dataclass

from loracam.prompts.attention import parse_attention

CHUNK = 75
COMMA_BACKTRACK = 20


@dataclass(frozen=True)
class Chunk:
    tokens: tuple[int, ...]  # 77 ids: BOS, 75 prompt/padding tokens, EOS
    weights: tuple[float, ...]  # 77 emphasis weights (1.0 on BOS/EOS/padding)


class Chunker:
    """Turns prompt text into Chunks with a CLIP tokenizer; results are cached per text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.comma = tokenizer.get_vocab().get(",</w>")
        self._cache: dict[str, tuple[list[Chunk], int]] = {}

    def empty_chunk(self) -> Chunk:
        return Chunk((self.bos,) + (self.eos,) * (CHUNK + 1), (1.0,) * (CHUNK + 2))

    def _ids(self, texts: list[str]) -> list[list[int]]:
        # Each emphasis segment is tokenized on its own, as A1111 does; no truncation, no specials.
        out = self.tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)
        return out["input_ids"]

    def chunks(self, text: str) -> tuple[list[Chunk], int]:
        """(chunks, token count) of one prompt text (no AND, no scheduling syntax left in it)."""
        if text not in self._cache:
            self._cache[text] = self._chunk(text)
        return self._cache[text]

    def _chunk(self, text: str) -> tuple[list[Chunk], int]:
        parsed = parse_attention(text)
        ids = self._ids([seg for seg, _ in parsed])
        done: list[Chunk] = []
        toks: list[int] = []
        mults: list[float] = []
        count = 0
        last_comma = -1

        def close(is_last: bool = False) -> None:
            nonlocal toks, mults, count, last_comma
            count += len(toks) if is_last else CHUNK
            pad = CHUNK - len(toks)
            done.append(Chunk(
                tuple([self.bos] + toks + [self.eos] * max(pad, 0) + [self.eos]),
                tuple([1.0] + mults + [1.0] * max(pad, 0) + [1.0]),
            ))
            toks, mults, last_comma = [], [], -1

        for seg_ids, (seg, weight) in zip(ids, parsed):
            if seg == "BREAK" and weight == -1:
                close()
                continue
            for tok in seg_ids:
                if tok == self.comma:
                    last_comma = len(toks)
                elif len(toks) == CHUNK and last_comma != -1 and len(toks) - last_comma <= COMMA_BACKTRACK:
                    cut = last_comma + 1
                    moved_t, moved_m = toks[cut:], mults[cut:]
                    toks, mults = toks[:cut], mults[:cut]
                    close()
                    toks, mults = moved_t, moved_m
                if len(toks) == CHUNK:
                    close()
                toks.append(tok)
                mults.append(weight)
        if toks or not done:
            close(is_last=True)
        return done, count
