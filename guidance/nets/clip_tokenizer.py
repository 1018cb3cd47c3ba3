"""CLIP's byte-level BPE tokenizer, read from a ``tokenizer/`` folder; the ids of ``transformers.CLIPTokenizer``.

Files: ``vocab.json`` (token -> id), ``merges.txt`` (merge rules, best first), ``tokenizer_config.json``
and ``special_tokens_map.json`` (bos/eos/pad/unk tokens, ``model_max_length``; the map wins where they
disagree, as in transformers). Steps, as the installed transformers (tokenizers backend) does them:

1. the special tokens are cut out of the raw text first (leftmost, longest): SD 2.x's pad token "!"
   therefore always becomes its own token;
2. every other piece: Unicode NFC, runs of white space -> one space, lower case (per character);
3. split into words with CLIP's pattern (contractions, letter runs, single digits, other-symbol runs);
4. each word's UTF-8 bytes as GPT-2's printable byte characters, ``</w>`` on the last one, then BPE:
   repeatedly merge the best-ranked adjacent pair; symbols not in the vocabulary become the unk id;
5. ``bos + ids + eos``, truncated to ``model_max_length`` and padded with the pad id.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex
import torch

from guidance.nets.weights import ModelFolderError

__all__ = ["ClipTokenizer", "bytes_to_unicode"]

#: Unicode White_Space (what ``\s`` means to the Rust regex of the tokenizers library).
_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACES = re.compile(f"[{_SPACE}]+")
#: CLIP's word pattern (the special-token alternatives first, as in the reference).
_WORDS = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\p{White_Space}\p{L}\p{N}]+"
)
#: transformers writes ``int(1e30)`` (VERY_LARGE_INTEGER) for a tokenizer saved without a length.
_UNSET_LENGTH = int(1e30)
_DEFAULTS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the other
    68 bytes to U+0100 onwards in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _content(value: Any) -> str | None:
    """A token as written in the configs: a string or an AddedToken dict ``{"content": ...}``."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc})") from None


class ClipTokenizer:
    """``tokenizer(texts)`` -> token ids ``[N, model_max_length]`` int64 (bos, words, eos, padding)."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        special: dict[str, str],
        model_max_length: int = 77,
        added: tuple[str, ...] = (),
    ) -> None:
        """``special``: bos/eos/pad/unk token strings; ``added``: further special tokens cut out of the text."""
        self.vocab = dict(vocab)
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.model_max_length = int(model_max_length)
        self.byte_chars = bytes_to_unicode()
        # Special tokens missing from the vocabulary get the next ids (transformers adds them that way).
        tokens = [special[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")] + list(added)
        for tok in tokens:
            self.vocab.setdefault(tok, len(self.vocab))
        self.bos_token_id, self.eos_token_id, self.unk_token_id, self.pad_token_id = (
            self.vocab[special[k]] for k in ("bos_token", "eos_token", "unk_token", "pad_token")
        )
        # Longest first: at one position the longest special token wins.
        alternatives = sorted(set(tokens), key=len, reverse=True)
        self._special = re.compile("|".join(re.escape(t) for t in alternatives))
        self._bpe = lru_cache(maxsize=65536)(self._bpe_uncached)

    @classmethod
    def from_folder(cls, folder: Path) -> ClipTokenizer:
        """From ``folder/{vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json}``."""
        folder = Path(folder)
        vocab = _read_json(folder / "vocab.json")
        if not vocab or not (folder / "merges.txt").is_file():
            raise ModelFolderError(f"{folder} has no vocab.json + merges.txt (a CLIP tokenizer folder)")
        merges = []
        for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines():
            if line.startswith("#version") or not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ModelFolderError(f"{folder}/merges.txt: bad merge line {line!r}")
            merges.append((parts[0], parts[1]))
        cfg = _read_json(folder / "tokenizer_config.json")
        special = dict(_DEFAULTS)
        for src in (cfg, _read_json(folder / "special_tokens_map.json")):
            special.update({k: _content(src[k]) for k in _DEFAULTS if _content(src.get(k))})
        added = tuple(
            tok["content"]
            for tok in cfg.get("added_tokens_decoder", {}).values()
            if isinstance(tok, dict) and tok.get("special") and tok.get("content")
        )
        max_len = cfg.get("model_max_length", 77)
        if isinstance(max_len, int) and max_len >= _UNSET_LENGTH:
            # transformers' VERY_LARGE_INTEGER: the length was not set; CLIP's context is 77 tokens.
            max_len = 77
        if not isinstance(max_len, int) or not 2 <= max_len <= 10_000:
            raise ModelFolderError(
                f"{folder}/tokenizer_config.json: model_max_length={max_len!r} is not supported"
            )
        return cls(vocab, merges, special, max_len, added)

    # ------------------------------------------------------------------ text -> ids
    def _bpe_uncached(self, word: str) -> tuple[int, ...]:
        """One word (byte characters) -> ids; the last symbol carries ``</w>``."""
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:], strict=False)}
            best = min(pairs, key=lambda p: self.ranks.get(p, len(self.ranks)))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self.vocab.get(s, self.unk_token_id) for s in symbols)

    def _encode_plain(self, text: str) -> list[int]:
        """Ids of text without special tokens (normalise, split into words, BPE)."""
        text = unicodedata.normalize("NFC", text)
        text = "".join(c.lower() for c in _SPACES.sub(" ", text))
        ids: list[int] = []
        for word in _WORDS.findall(text):
            ids.extend(self._bpe("".join(self.byte_chars[b] for b in word.encode("utf-8"))))
        return ids

    def encode(self, text: str) -> list[int]:
        """``text`` -> ids without bos/eos, truncation or padding."""
        ids: list[int] = []
        pos = 0
        for m in self._special.finditer(text):
            ids += self._encode_plain(text[pos : m.start()])
            ids.append(self.vocab[m.group()])
            pos = m.end()
        return ids + self._encode_plain(text[pos:])

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        """Prompts -> int64 ``[N, model_max_length]``: bos, at most ``model_max_length - 2`` ids, eos, pad ids."""
        if isinstance(texts, str):
            texts = [texts]
        n = self.model_max_length
        out = torch.full((len(texts), n), self.pad_token_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.bos_token_id, *self.encode(text)[: n - 2], self.eos_token_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
