"""guidance.nets CLIP text tower, vision hidden states and BPE tokenizer against transformers (fp32, CPU).

The towers are loaded both ways from the tiny random ImageDream folder (and variants written here) and
must agree to 1e-6 (max abs). The tokenizer must give exactly transformers' ids, on the tiny
vocabulary of the test models and on a larger one learned here by a small BPE trainer (all 256 byte
symbols, a few hundred merges), for prompts with punctuation, digits, Unicode, apostrophes, special
tokens, odd white space and more than 77 tokens.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from guidance.nets.clip_text import load_clip_text
from guidance.nets.clip_tokenizer import ClipTokenizer, bytes_to_unicode
from guidance.nets.clip_vision import load_clip_vision

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers")

TOL = 1e-6
F32 = torch.float32

PROMPTS = [
    "",
    "a cat",
    "The CAT sat on the mat.",
    "a photo of a dog, high quality, 4k, 8K!!!",
    "it's the cat's hat; they're here, we'll see, I'm sure, you've won, he'd go",
    "'quoted' \"double\" (paren) [bracket] {brace} <angle> a-b_c/d\\e",
    "3.14159 and 2024-06-01 and 1,000,000",
    "  leading\tand\ttrailing   spaces \n\n newlines\u00a0nbsp\u3000ideographic  ",
    "café naïve façade résumé",
    "cafe\u0301 (decomposed é)",
    "ΣΟΦΙΑΣ and İstanbul and straße",
    "½ ² Ⅻ ٣ numbers",
    "東京タワー 🐱🚀 emoji",
    "hello!world! wow!!",
    "a <|endoftext|> in the middle <|startoftext|>",
    "ctrl\x1cchar\x7fdel",
    "zebra " * 100,
    "unknown ~ ` ^ | symbols @#$%&*",
]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


@pytest.fixture(scope="module")
def tiny_folder() -> Path:
    from testing.random_imagedream import cached_tiny_imagedream

    return cached_tiny_imagedream()


def _ids(seed: int, vocab: int, rows: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, 77), generator=torch.Generator().manual_seed(seed))


def test_text_tower_matches_transformers(tiny_folder):
    folder = tiny_folder / "text_encoder"
    ref = transformers.CLIPTextModel.from_pretrained(folder).eval()
    ours = load_clip_text(folder, F32, "cpu")
    ids = _ids(0, ours.config.vocab_size)
    with torch.no_grad():
        want, got = ref(ids).last_hidden_state, ours(ids)
        short = ours(ids[:, :9])  # fewer tokens than positions: the first positions only
        short_ref = ref(ids[:, :9]).last_hidden_state
    diff = _max_diff(got, want)
    print(f"clip text last_hidden_state max abs diff {diff:.2e}")
    assert diff <= TOL and _max_diff(short, short_ref) <= TOL
    assert want.abs().max() > 0.5  # carries signal


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_text_tower_hub_layout_matches(tmp_path, act):
    """A transformers-4 style file (``text_model.`` prefix, a ``position_ids`` buffer) of a bigger tower."""
    from safetensors.torch import load_file, save_file

    from testing.random_layout import tiny_clip_config

    torch.manual_seed(7)
    kw = dict(tiny_clip_config(act, vocab_size=300, max_position_embeddings=77), num_hidden_layers=3)
    cfg = transformers.CLIPTextConfig(**kw)
    ref = transformers.CLIPTextModel(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():  # larger weights than the default init: every path matters
            p.add_(0.05 * torch.randn_like(p))
    ref.save_pretrained(tmp_path, safe_serialization=True)
    path = tmp_path / "model.safetensors"
    state = load_file(str(path))
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(state, str(path))
    ours = load_clip_text(tmp_path, F32, "cpu")
    ids = _ids(1, 300, rows=2)
    with torch.no_grad():
        diff = _max_diff(ours(ids), ref(ids).last_hidden_state)
    print(f"clip text ({act}, prefixed file) max abs diff {diff:.2e}")
    assert diff <= TOL


def test_vision_hidden_states_match_transformers(tiny_folder):
    """ImageDream's tower (``CLIPVisionModel``, no projection): every ``hidden_states[i]``, incl. -2."""
    folder = tiny_folder / "image_encoder"
    ref = transformers.CLIPVisionModel.from_pretrained(folder).eval()
    ours = load_clip_vision(folder, F32, "cpu", projection=False)
    assert ours.visual_projection is None
    pix = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = ref(pix, output_hidden_states=True)
        diffs = {i: _max_diff(ours.hidden_state(pix, i), out.hidden_states[i]) for i in (-2, -1, 0, 1)}
        diffs["last"] = _max_diff(ours(pix).last_hidden_state, out.last_hidden_state)
    print("clip vision hidden states max abs diff", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= TOL
    assert not torch.allclose(out.hidden_states[-2], out.hidden_states[-1])  # -2 is its own layer
    with pytest.raises(IndexError):
        ours.hidden_state(pix, 5)


# ---------------------------------------------------------------------------------------------- tokenizer
def _train_bpe(words: list[str], merges: int) -> tuple[dict[str, int], list[str]]:
    """A small CLIP-style BPE vocabulary: 256 byte symbols and their ``</w>`` forms, then ``merges`` merges
    of the most frequent adjacent pair (ties: the smallest pair)."""
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    table = bytes_to_unicode()
    seqs = Counter()
    for w in words:
        sym = [table[b] for b in w.encode("utf-8")]
        seqs[tuple(sym[:-1] + [sym[-1] + "</w>"])] += 1
    rules = []
    for _ in range(merges):
        pairs = Counter()
        for seq, n in seqs.items():
            for pair in zip(seq, seq[1:], strict=False):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        rules.append(f"{best[0]} {best[1]}")
        vocab.setdefault(best[0] + best[1], len(vocab))
        new = Counter()
        for seq, n in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            new[tuple(out)] += n
        seqs = new
    return vocab, rules


def _write_tokenizer(folder: Path, vocab: dict[str, int], rules: list[str], pad: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = dict(vocab)
    for tok in ("<|startoftext|>", "<|endoftext|>"):
        vocab[tok] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(rules) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(dict(special, pad_token=pad)))
    # The SD 2.x files disagree on the pad token: special_tokens_map.json wins (as in transformers).
    cfg = dict(special, pad_token="<|endoftext|>", model_max_length=77, tokenizer_class="CLIPTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def learned_vocab() -> tuple[dict[str, int], list[str]]:
    import regex

    from guidance.models.imagedream import NEGATIVE_PROMPT

    text = " ".join([*PROMPTS[:-2], NEGATIVE_PROMPT, "the quick brown fox jumps over the lazy dog"] * 3)
    words = regex.findall(r"\p{L}+|\p{N}|[^\s\p{L}\p{N}]+", text.lower())
    return _train_bpe(words, 400)


def _compare(folder: Path) -> int:
    ref = transformers.CLIPTokenizer.from_pretrained(folder)
    ours = ClipTokenizer.from_folder(folder)
    want = ref(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    got = ours(PROMPTS)
    bad = [p for p, a, b in zip(PROMPTS, got, want, strict=True) if not torch.equal(a, b)]
    assert not bad, bad[:3]
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        ref.bos_token_id,
        ref.eos_token_id,
        ref.pad_token_id,
    )
    return int((want != ref.pad_token_id).sum())


def test_tokenizer_matches_transformers_on_the_tiny_vocab(tiny_folder):
    assert _compare(tiny_folder / "tokenizer") > 100


@pytest.mark.parametrize("pad", ["!", "<|endoftext|>"])
def test_tokenizer_matches_transformers_on_a_learned_vocab(tmp_path, learned_vocab, pad):
    """400 learned merges (multi-level: merges of merges), both pad conventions (SD 2.x "!", SD 1.x eos)."""
    vocab, rules = learned_vocab
    folder = _write_tokenizer(tmp_path / "tok", vocab, rules, pad)
    _compare(folder)
    ours = ClipTokenizer.from_folder(folder)
    # The merges matter: a frequent word is one token, a long prompt is cut to bos + 75 + eos.
    assert len(ours.encode("quality")) == 1 and len(ours.encode("qqqq")) == 4
    long = ours([PROMPTS[-2]])[0]
    assert (
        long[0] == ours.bos_token_id
        and long[-1] == ours.eos_token_id
        and (long[:-1] != ours.pad_token_id).all()
    )


def test_tokenizer_folder_errors(tmp_path):
    from core.errors import UserError

    with pytest.raises(UserError, match="no vocab.json"):
        ClipTokenizer.from_folder(tmp_path)
