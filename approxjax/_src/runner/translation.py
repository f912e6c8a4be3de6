"""Translation under simulated arithmetic: sentence pairs, an encoder-decoder
transformer, greedy and beam decoding, BLEU.

Data. :func:`read_pairs` reads a parallel corpus as a tab-separated file, one
pair per line, in the forms the usual exports take: ``source<TAB>target``,
``source<TAB>target<TAB>attribution`` (manythings.org / Anki) and
``id<TAB>source<TAB>id<TAB>target`` (Tatoeba's sentence-pair export). Blank
lines are skipped; a line without a tab or with an empty side is an error
naming the file and line. Without a file, :func:`synthetic_pairs` generates a
small offline task (labelled synthetic everywhere it is reported): English-like
subject-verb-object sentences from a fixed grammar (an optional adverb and
place), translated word by word into an invented language with
subject-object-verb order, adjectives after their nouns, postpositions and
the place first, so the model must learn a dictionary and a reordering.

Tokens are words and punctuation marks (``\\w+('\\w+)*`` or one other
character); each side has its own vocabulary (the most frequent training
tokens, up to ``max_vocab``; others are ``<unk>``). A pair is packed into one
int32 row, ``[source (S) | <bos> target (T)]``, with the labels ``target
<eos>`` padded with 0 (``<pad>``, masked out of the loss and the token
accuracy), so the runner's steps, sweeps and checkpoints treat it as any
other dataset.

Metrics: the token accuracy (teacher-forced: the share of target tokens,
``<eos>`` included, that the model predicts), and corpus BLEU of the decoded
test set against the raw reference sentences, computed by sacrebleu (its
default 13a tokenization; hypotheses are the decoded tokens joined by
spaces).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from approxjax._src.flax.modules import Dense, MultiHeadDotProductAttention
from approxjax._src.runner.datasets import Dataset, DatasetError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
MAX_TOKENS = 64  # per side; longer pairs are left out (and counted)
SYNTHETIC_PAIRS = 3300  # the synthetic task's size (90% train, 10% test)
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Words (with inner apostrophes) and single punctuation marks."""
    return _TOKEN.findall(text)


# ----------------------------------------------------------------- data


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """The (source, target) sentence pairs of a tab-separated file (see the
    module docstring for the accepted column layouts).

    Raises:
      DatasetError: the file cannot be read, a line has no tab, an empty side
        or an unknown number of columns (naming the file and line), or it
        holds no pairs.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"pairs: cannot read {path}: {e}") from e
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) == 1:
            raise DatasetError(
                f"{path}:{number}: no tab in this line; expected source<TAB>target: {line[:60]!r}"
            )
        if len(cols) == 4 and cols[0].strip().isdigit() and cols[2].strip().isdigit():
            cols = [cols[1], cols[3]]  # Tatoeba: id, source, id, target
        elif len(cols) > 3:
            raise DatasetError(
                f"{path}:{number}: {len(cols)} tab-separated columns; expected 2 (source, "
                "target), 3 (source, target, attribution) or 4 (id, source, id, target)"
            )
        source, target = cols[0].strip(), cols[1].strip()
        if not source or not target:
            side = "source" if not source else "target"
            raise DatasetError(f"{path}:{number}: the {side} sentence is empty")
        pairs.append((source, target))
    if not pairs:
        raise DatasetError(f"pairs: {path} holds no sentence pairs")
    return pairs


_SUBJECTS = ["dog", "cat", "bird", "horse", "child", "teacher", "farmer", "doctor",
             "king", "girl", "boy", "woman", "man", "fox", "wolf", "bear"]  # fmt: skip
_OBJECTS = ["apple", "book", "ball", "house", "river", "tree", "stone", "letter",
            "song", "bread", "door", "ship", "road", "flower", "cup", "box"]  # fmt: skip
_ADJECTIVES = ["big", "small", "old", "young", "red", "green", "happy", "quiet", "dark"]
_VERBS = ["sees", "likes", "finds", "takes", "paints", "carries", "wants", "hears", "opens",
          "follows"]  # fmt: skip
_ADVERBS = ["today", "slowly", "again", "often"]
_PREPOSITIONS = ["in", "near", "behind", "under"]
_PLACES = ["garden", "forest", "city", "village", "kitchen", "market", "field", "valley"]
_DETERMINERS = ["the", "a"]


def _invented(words: Sequence[str], seed: int) -> dict[str, str]:
    """A fixed dictionary from ``words`` into distinct invented words."""
    rng = np.random.default_rng(seed)
    onsets = list("bdfgklmnprstvz")
    vowels = list("aeiou")
    out, used = {}, set()
    for w in words:
        while True:
            syllables = rng.integers(2, 4)
            word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
            if word not in used:
                used.add(word)
                out[w] = word
                break
    return out


def synthetic_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` distinct pairs of the synthetic task (module docstring)."""
    words = _SUBJECTS + _OBJECTS + _ADJECTIVES + _VERBS + _ADVERBS + _PREPOSITIONS + _PLACES
    lexicon = _invented(words, 1234) | {"the": "lo", "a": "un", ".": "."}
    rng = np.random.default_rng(seed)

    def phrase(nouns):
        det, noun = rng.choice(_DETERMINERS), rng.choice(nouns)
        adj = rng.choice(_ADJECTIVES) if rng.random() < 0.5 else None
        src = [det, adj, noun] if adj else [det, noun]
        tgt = [det, noun, adj] if adj else [det, noun]
        return src, tgt

    pairs, seen = [], set()
    while len(pairs) < count:
        (s1, t1), (s2, t2) = phrase(_SUBJECTS), phrase(_OBJECTS)
        verb = rng.choice(_VERBS)
        adv = [rng.choice(_ADVERBS)] if rng.random() < 0.3 else []
        src, tgt = s1 + [verb] + s2 + adv, t1 + t2 + adv + [verb]
        if rng.random() < 0.4:  # a place: last in the source, first in the target
            prep, (s3, t3) = rng.choice(_PREPOSITIONS), phrase(_PLACES)
            src, tgt = src + [prep] + s3, t3 + [prep] + tgt
        src, tgt = src + ["."], tgt + ["."]
        sentence = " ".join(src)
        if sentence in seen:
            continue
        seen.add(sentence)
        pairs.append((sentence, " ".join(lexicon[w] for w in tgt)))
    return pairs


@dataclasses.dataclass
class Vocabulary:
    tokens: list[str]

    @classmethod
    def build(cls, sentences: Sequence[list[str]], max_size: int) -> Vocabulary:
        counts = Counter(t for s in sentences for t in s)
        common = sorted(counts, key=lambda t: (-counts[t], t))[: max_size - len(SPECIALS)]
        return cls(list(SPECIALS) + common)

    def __len__(self) -> int:
        return len(self.tokens)

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self._index.get(t, UNK) for t in tokens]

    def decode(self, ids: Sequence[int]) -> str:
        """The tokens up to the first ``<eos>`` joined by spaces (no specials)."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i >= UNK:
                out.append(self.tokens[i])
        return " ".join(out)


@dataclasses.dataclass
class TranslationData(Dataset):
    """Sentence pairs packed for the runner (module docstring), with what
    decoding and BLEU need: both vocabularies, the source length, and the
    test set's reference sentences."""

    source_vocab: Vocabulary | None = None
    target_vocab: Vocabulary | None = None
    source_len: int = 0
    test_references: list[str] = dataclasses.field(default_factory=list)
    synthetic: bool = False
    note: str = ""

    @property
    def target_len(self) -> int:
        return self.x_train.shape[1] - self.source_len


def load_pairs(
    data_file: str | Path | None = None, seed: int = 0, max_vocab: int = 8000
) -> TranslationData:
    """A translation dataset: ``data_file``'s pairs, or the synthetic task
    (``SYNTHETIC_PAIRS``: 2,970 training and 330 test pairs) without one. The pairs are shuffled
    with ``seed``; 10% (at most 2,000) are the test set."""
    if data_file is None:
        pairs, name, synthetic = synthetic_pairs(SYNTHETIC_PAIRS, seed), "synthetic-pairs", True
    else:
        pairs, name, synthetic = read_pairs(data_file), f"pairs:{Path(data_file).name}", False
    tokens = [(tokenize(s), tokenize(t)) for s, t in pairs]
    keep = [i for i, (s, t) in enumerate(tokens) if len(s) <= MAX_TOKENS and len(t) < MAX_TOKENS]
    dropped = len(pairs) - len(keep)
    if len(keep) < 2:
        raise DatasetError(
            f"{name}: {len(keep)} usable pair(s) (need 2 or more; pairs longer than "
            f"{MAX_TOKENS} tokens are left out)"
        )
    order = np.random.default_rng(seed).permutation(keep)
    n_test = max(1, min(len(order) // 10, 2000))
    test, train = order[:n_test], order[n_test:]
    src_vocab = Vocabulary.build([tokens[i][0] for i in train], max_vocab)
    tgt_vocab = Vocabulary.build([tokens[i][1] for i in train], max_vocab)
    s_len = max(len(tokens[i][0]) for i in order)
    t_len = max(len(tokens[i][1]) for i in order) + 1

    def pack(indices):
        x = np.zeros((len(indices), s_len + t_len), np.int32)
        y = np.zeros((len(indices), t_len), np.int32)
        for row, i in enumerate(indices):
            src = src_vocab.encode(tokens[i][0])
            tgt = tgt_vocab.encode(tokens[i][1])
            x[row, : len(src)] = src
            x[row, s_len : s_len + len(tgt) + 1] = [BOS, *tgt]
            y[row, : len(tgt) + 1] = [*tgt, EOS]
        return x, y

    (x_train, y_train), (x_test, y_test) = pack(train), pack(test)
    note = f"{dropped} pair(s) over {MAX_TOKENS} tokens left out" if dropped else ""
    return TranslationData(
        name, x_train, y_train, x_test, y_test, len(tgt_vocab),
        source_vocab=src_vocab, target_vocab=tgt_vocab, source_len=s_len,
        test_references=[pairs[i][1] for i in test],
        synthetic=synthetic, note=note,
    )  # fmt: skip


# ---------------------------------------------------------------- model


class _EncoderLayer(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, x, mask):
        x = x + MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x), mask=mask)
        return x + Dense(self.dim)(nn.gelu(Dense(2 * self.dim)(nn.LayerNorm()(x))))


class _DecoderLayer(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, y, memory, self_mask, cross_mask):
        y = y + MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(y), mask=self_mask)
        y = y + MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(y), memory, mask=cross_mask)
        return y + Dense(self.dim)(nn.gelu(Dense(2 * self.dim)(nn.LayerNorm()(y))))


class Translator(nn.Module):
    """An encoder-decoder transformer (Vaswani et al. 2017, pre-norm) whose
    projections, self-attention, cross-attention and feed-forward GEMMs all go
    through approxjax's modules (the multiplier of :func:`approxjax.using`).

    ``__call__(x)`` takes packed rows ``[source (source_len) | <bos> target]``
    and returns the next-token logits of every target position;
    :meth:`encode` and :meth:`decode` are the two halves, as decoding uses them.
    """

    source_vocab: int
    target_vocab: int
    source_len: int
    target_len: int
    dim: int = 64
    heads: int = 4
    layers: int = 2

    def setup(self):
        self.source_embed = nn.Embed(self.source_vocab, self.dim)
        self.target_embed = nn.Embed(self.target_vocab, self.dim)
        init = nn.initializers.normal(0.02)
        self.source_pos = self.param("source_pos", init, (self.source_len, self.dim))
        self.target_pos = self.param("target_pos", init, (self.target_len, self.dim))
        self.encoder = [_EncoderLayer(self.dim, self.heads) for _ in range(self.layers)]
        self.encoder_norm = nn.LayerNorm()
        self.decoder = [_DecoderLayer(self.dim, self.heads) for _ in range(self.layers)]
        self.decoder_norm = nn.LayerNorm()
        self.head = Dense(self.target_vocab)

    def encode(self, source):
        keep = source != PAD
        x = self.source_embed(source) + self.source_pos[: source.shape[1]]
        mask = nn.make_attention_mask(keep, keep)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def decode(self, memory, source, target_in):
        y = self.target_embed(target_in) + self.target_pos[: target_in.shape[1]]
        self_mask = nn.combine_masks(
            nn.make_causal_mask(target_in),
            nn.make_attention_mask(jnp.ones_like(target_in), target_in != PAD),
        )
        cross_mask = nn.make_attention_mask(jnp.ones_like(target_in), source != PAD)
        for layer in self.decoder:
            y = layer(y, memory, self_mask, cross_mask)
        return self.head(self.decoder_norm(y))

    def __call__(self, x):
        source, target_in = x[:, : self.source_len], x[:, self.source_len :]
        return self.decode(self.encode(source), source, target_in)


def sequence_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Cross-entropy and token accuracy over the labels that are not
    ``<pad>``; ``count`` (the number of such labels) weighs batches when the
    runner averages them."""
    import optax

    keep = (labels != PAD).astype(jnp.float32)
    count = jnp.maximum(keep.sum(), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels) * keep
    return (ce * keep).sum() / count, {"accuracy": correct.sum() / count, "count": keep.sum()}


# ------------------------------------------------------------- decoding


def _step_logits(model: Translator, params, memory, source, tokens, t):
    """Log-probabilities of the next token after position ``t`` (``<pad>`` and
    ``<bos>`` never come next)."""
    logits = model.apply(params, memory, source, tokens, method=Translator.decode)[:, t]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return logp.at[:, PAD].set(-jnp.inf).at[:, BOS].set(-jnp.inf)


def greedy_decode(model: Translator, params, source: jax.Array) -> jax.Array:
    """The most likely next token at every step, ``(batch, target_len)``
    token ids (``<eos>`` then ``<pad>`` after the end)."""
    memory = model.apply(params, source, method=Translator.encode)
    b, t_len = source.shape[0], model.target_len
    tokens = jnp.zeros((b, t_len), jnp.int32).at[:, 0].set(BOS)
    positions = jnp.arange(t_len)

    def body(t, carry):
        tokens, out, done = carry
        tok = jnp.argmax(_step_logits(model, params, memory, source, tokens, t), -1)
        tok = jnp.where(done, PAD, tok).astype(jnp.int32)
        out = out.at[:, t].set(tok)
        tokens = jnp.where(positions == t + 1, tok[:, None], tokens)
        return tokens, out, done | (tok == EOS)

    init = (tokens, jnp.zeros((b, t_len), jnp.int32), jnp.zeros((b,), bool))
    return jax.lax.fori_loop(0, t_len, body, init)[1]


def beam_search(
    model: Translator, params, source: jax.Array, beam: int = 4, length_penalty: float = 0.6
) -> jax.Array:
    """Beam search (``beam`` hypotheses per sentence ranked by their summed
    log-probability; a finished one keeps its score). The result is the
    finished hypothesis of the best score / ``((5 + length) / 6) **
    length_penalty`` (Wu et al. 2016); ``(batch, target_len)`` token ids.
    ``beam=1`` is greedy decoding."""
    b, t_len, k = source.shape[0], model.target_len, beam
    memory = model.apply(params, source, method=Translator.encode)
    memory = jnp.repeat(memory, k, axis=0)
    src = jnp.repeat(source, k, axis=0)
    tokens = jnp.zeros((b, k, t_len), jnp.int32).at[:, :, 0].set(BOS)
    out = jnp.zeros((b, k, t_len), jnp.int32)
    scores = jnp.full((b, k), -jnp.inf).at[:, 0].set(0.0)
    positions = jnp.arange(t_len)

    def body(t, carry):
        tokens, out, scores, done = carry
        logp = _step_logits(model, params, memory, src, tokens.reshape(b * k, t_len), t)
        v = logp.shape[-1]
        logp = logp.reshape(b, k, v)
        # A finished hypothesis extends only by <pad>, at no cost.
        ended = jnp.full((v,), -jnp.inf).at[PAD].set(0.0)
        logp = jnp.where(done[..., None], ended, logp)
        total = (scores[..., None] + logp).reshape(b, k * v)
        scores, flat = jax.lax.top_k(total, k)
        parent, tok = flat // v, (flat % v).astype(jnp.int32)
        pick = lambda a: jnp.take_along_axis(a, parent[..., None], axis=1)  # noqa: E731
        tokens, out = pick(tokens), pick(out)
        done = jnp.take_along_axis(done, parent, axis=1) | (tok == EOS)
        out = jnp.where(positions == t, tok[..., None], out)
        tokens = jnp.where(positions == t + 1, tok[..., None], tokens)
        return tokens, out, scores, done

    init = (tokens, out, scores, jnp.zeros((b, k), bool))
    _, out, scores, _ = jax.lax.fori_loop(0, t_len, body, init)
    length = jnp.sum((out != PAD) & (out != EOS), -1) + 1
    ranked = scores / ((5.0 + length) / 6.0) ** length_penalty
    best = jnp.argmax(ranked, -1)
    return jnp.take_along_axis(out, best[:, None, None], axis=1)[:, 0]


def make_decoder(
    model: Translator, beam: int, under: Callable[[Callable, object], Callable]
) -> Callable:
    """``decode(params, source, multiplier) -> token ids``: greedy
    (``beam=1``) or beam search, traced under the multiplier by ``under``
    (the runner's route: ``using`` or ``approximate``)."""

    def run(params, source):
        if beam == 1:
            return greedy_decode(model, params, source)
        return beam_search(model, params, source, beam)

    def decode(params, source, multiplier):
        return under(run, multiplier)(params, source)

    return decode


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) by sacrebleu, one reference per sentence."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    # force: the hypotheses are tokens joined by spaces, on purpose (13a
    # tokenizes both sides alike); sacrebleu would warn about it.
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], force=True).score)
