"""Translation: sentence-pair files, the synthetic task, the encoder-decoder
under a multiplier, greedy and beam decoding, token accuracy and BLEU (each
checked against an independent computation on hand-made cases), and the
runner's translator sweeps."""

import collections
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import approxjax as ax
from approxjax import datasets
from approxjax import translation as tr
from approxjax._src.runner import sweep
from approxjax._src.runner import translation as tr_impl
from approxjax._src.runner.config import ConfigError, SweepConfig
from approxjax._src.runner.steps import under
from approxjax.datasets import DatasetError

PAIRS = [
    ("the cat sleeps .", "le chat dort ."),
    ("the dog sleeps .", "le chien dort ."),
    ("a cat eats .", "un chat mange ."),
    ("a dog eats .", "un chien mange ."),
    ("the cat eats fish .", "le chat mange du poisson ."),
    ("the dog eats meat .", "le chien mange de la viande ."),
    ("I don't know .", "je ne sais pas ."),
    ("the bird sings .", "l'oiseau chante ."),
] * 3


def _write(tmp_path, lines, name="pairs.tsv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_pair_files_in_the_usual_forms(tmp_path):
    path = _write(
        tmp_path,
        [
            "Hello.\tBonjour.",
            "",
            "Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272",  # manythings
            "1276\tLet's try something.\t1553\tEssayons quelque chose.",  # Tatoeba
        ],
    )
    assert tr.read_pairs(path) == [
        ("Hello.", "Bonjour."),
        ("Go.", "Va !"),
        ("Let's try something.", "Essayons quelque chose."),
    ]
    assert tr.tokenize("I don't know, she said.") == ["I", "don't", "know", ",", "she", "said", "."]


@pytest.mark.parametrize(
    "lines,message",
    [
        (["a\tb", "no tab here"], "pairs.tsv:2: no tab in this line"),
        (["a\tb", "", "c\t "], "pairs.tsv:3: the target sentence is empty"),
        (["\tb"], "pairs.tsv:1: the source sentence is empty"),
        (["a\tb\tc\td\te"], "pairs.tsv:1: 5 tab-separated columns"),
        ([""], "holds no sentence pairs"),
    ],
)
def test_malformed_pair_files_name_the_file_and_line(tmp_path, lines, message):
    path = _write(tmp_path, lines)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        tr.read_pairs(path)


def test_packing_vocabularies_and_the_synthetic_label(tmp_path):
    data = tr.load_pairs(_write(tmp_path, [f"{s}\t{t}" for s, t in PAIRS]), seed=1)
    assert not data.synthetic and data.name == "pairs:pairs.tsv"
    assert len(data.x_train) + len(data.x_test) == len(PAIRS)
    assert data.source_len == 5 and data.target_len == 8  # longest target: 7 tokens + <eos>
    for x, y in zip(data.x_train, data.y_train, strict=True):
        src, tgt_in = x[: data.source_len], x[data.source_len :]
        n = int(np.sum(y != tr.PAD))
        assert tgt_in[0] == tr.BOS and y[n - 1] == tr.EOS
        np.testing.assert_array_equal(tgt_in[1:n], y[: n - 1])  # teacher forcing: shifted
        assert np.all(tgt_in[n:] == tr.PAD) and np.all(src[src != tr.PAD] > tr.UNK)
    # The references are the raw sentences; decoding the labels gives them back tokenized.
    for y, ref in zip(data.y_test, data.test_references, strict=True):
        assert data.target_vocab.decode(y) == " ".join(tr.tokenize(ref))
    synthetic = tr.load_pairs(None, seed=0)
    assert synthetic.synthetic and synthetic.name == "synthetic-pairs"
    assert (len(synthetic.x_train), len(synthetic.x_test)) == (2970, 330)
    sources = [s for s, _ in tr.synthetic_pairs(3300, seed=0)]
    assert len(set(sources)) == 3300  # distinct sentences: no test sentence is trained on


def test_token_loss_and_accuracy_against_hand_computation():
    labels = jnp.array([[5, 2, 0, 0], [4, 6, 2, 0]])  # 5 target tokens, 3 pads
    logits = jnp.log(
        jnp.array(
            [
                [
                    [0.1, 0.1, 0.1, 0.1, 0.1, 0.5, 0.1],
                    [0.1, 0.1, 0.6, 0.1, 0.1, 0.1, 0.1],
                    [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
                    [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9],
                ],
                [
                    [0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.1],
                    [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.7],
                    [0.1, 0.1, 0.1, 0.1, 0.1, 0.5, 0.1],
                    [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
                ],
            ]
        )  # fmt: skip
    )
    loss, metrics = tr.sequence_loss(logits, labels)
    # Predicted: 5 ok, 2 ok | 5 (want 4) wrong, 6 ok, 5 (want 2) wrong -> 3 of 5.
    assert float(metrics["accuracy"]) == pytest.approx(3 / 5)
    assert float(metrics["count"]) == 5
    probs = [(0.5, 1.1), (0.6, 1.2), (0.2, 1.0), (0.7, 1.3), (0.1, 1.1)]
    expected = -sum(math.log(p / z) for p, z in probs) / 5
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def _bleu_by_hand(hyps, refs):
    """BLEU-4 (Papineni et al. 2002), uniform weights, no smoothing, on
    whitespace tokens: the definition, written independently of sacrebleu."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs, strict=True):
        h, r = h.split(), r.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            hc = collections.Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            rc = collections.Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


def test_bleu_against_the_definition():
    refs = ["the cat sat on the mat today", "a quick brown fox jumps over the lazy dog"]
    hyps = ["the cat sat on a mat today", "a quick brown fox jumped over the dog"]
    assert tr.bleu(hyps, refs) == pytest.approx(_bleu_by_hand(hyps, refs), rel=1e-9)
    assert tr.bleu(refs, refs) == pytest.approx(100.0)
    short = ["the cat sat on the mat", "a quick brown fox jumps over the lazy"]  # brevity penalty
    assert tr.bleu(short, refs) == pytest.approx(_bleu_by_hand(short, refs), rel=1e-9)
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        tr.bleu(hyps, refs[:1])


def _tiny_model(vocab=6, source_len=3, target_len=3, seed=0):
    model = tr.Translator(vocab, vocab, source_len, target_len, dim=16, heads=2, layers=1)
    x = jnp.zeros((1, source_len + target_len), jnp.int32)
    params = model.init(jax.random.key(seed), x)
    # Larger weights make the next-token distributions peaked and distinct.
    params = jax.tree_util.tree_map(lambda p: 4 * p, params)
    return model, params


def _next_logp(model, params, source, prefix, multiplier=None):
    """log p(next token | prefix) by one full forward pass on a packed row."""
    row = np.zeros((1, model.source_len + model.target_len), np.int32)
    row[0, : model.source_len] = source
    row[0, model.source_len : model.source_len + len(prefix) + 1] = [tr.BOS, *prefix]
    logits = _forward(model)(params, jnp.asarray(row), multiplier)[0, len(prefix)]
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)), np.float64)
    logp[[tr.PAD, tr.BOS]] = -np.inf
    return logp


@functools.cache
def _forward(model):
    return jax.jit(lambda p, x, m: under()(model.apply, m)(p, x))


def test_greedy_decoding_is_the_argmax_chain_under_a_multiplier():
    model, params = _tiny_model(vocab=8, target_len=5)
    sources = np.array([[4, 5, 6], [7, 4, 0], [5, 0, 0]], np.int32)
    mult = ax.mitchell(5)
    decode = jax.jit(tr.make_decoder(model, 1, under()))
    ids = np.asarray(decode(params, jnp.asarray(sources), mult))
    for source, got in zip(sources, ids, strict=True):
        prefix = []
        while len(prefix) < model.target_len and (not prefix or prefix[-1] != tr.EOS):
            prefix.append(int(np.argmax(_next_logp(model, params, source, prefix, mult))))
        expected = prefix + [tr.PAD] * (model.target_len - len(prefix))
        np.testing.assert_array_equal(got, expected)


def test_beam_search_finds_the_most_likely_sequence_exhaustively():
    model, params = _tiny_model(vocab=6, target_len=3, seed=3)
    allowed = [tr.EOS, 4, 5, tr.UNK]  # every token decoding may emit
    beam = jax.jit(functools.partial(tr.beam_search, model, beam=16, length_penalty=0.0))
    for source in ([4, 5, 0], [5, 5, 4], [4, 0, 0]):
        best, best_seq = -np.inf, None
        logp = functools.cache(lambda prefix, s=source: _next_logp(model, params, s, prefix))
        for seq in np.ndindex(*(len(allowed),) * model.target_len):
            tokens, score = [allowed[i] for i in seq], 0.0
            if tr.EOS in tokens and any(t != tr.EOS for t in tokens[tokens.index(tr.EOS) :]):
                continue  # only <eos> may follow <eos> (it stands for the padding)
            for t in range(model.target_len):
                score += logp(tuple(tokens[:t]))[tokens[t]]
                if tokens[t] == tr.EOS:
                    tokens = tokens[: t + 1]
                    break
            if score > best:
                best, best_seq = score, tokens
        src = jnp.asarray([source], jnp.int32)
        got = np.asarray(beam(params, src))[0]
        expected = best_seq + [tr.PAD] * (model.target_len - len(best_seq))
        np.testing.assert_array_equal(got, expected)
        greedy = np.asarray(tr.greedy_decode(model, params, src))
        np.testing.assert_array_equal(tr.beam_search(model, params, src, beam=1), greedy)


def test_cross_attention_goes_through_the_multiplier():
    model, params = _tiny_model(vocab=8, target_len=4)
    x = jnp.asarray([[4, 5, 6, tr.BOS, 4, 5, 0]], jnp.int32)
    cross = r"decoder_0/MultiHeadDotProductAttention_1"
    with ax.using(ax.Policy(None, rules=[(cross, ax.truncated(2))])):
        approx = model.apply(params, x)
    assert not np.allclose(approx, model.apply(params, x), atol=1e-3)


def test_runner_translator_sweep(tmp_path, monkeypatch):
    """The default (synthetic) task, two multipliers in one vmapped stack,
    beam search: BLEU per epoch in results.json/csv, synthetic labels."""
    from approxjax._src.runner.outputs import format_results

    monkeypatch.setattr(tr_impl, "SYNTHETIC_PAIRS", 200)  # 180 train, 20 test: quick
    cfg = SweepConfig(
        model="translator", dataset="pairs", epochs=2, batch_size=32, beam=2,
        multipliers=["mitchell5", "truncated5"], out_dir=str(tmp_path / "out"),
    )  # fmt: skip
    logs = []
    results = sweep.run_sweep(cfg, log=logs.append, show_progress=False)
    assert {r["group"] for r in results["runs"].values()} == {"float32", "m5"}  # one stack
    for name in ("float32", "mitchell5", "truncated5"):
        run = results["runs"][name]
        assert len(run["bleu_curve"]) == 2 and 0.0 <= run["test_bleu"] <= 100.0
        assert run["test_bleu"] == run["bleu_curve"][-1] and 0.0 <= run["test_accuracy"] <= 1.0
    assert results["data"]["synthetic"] is True and "(synthetic)" in logs[0]
    assert "SYNTHETIC" in format_results(results)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["runs"]["mitchell5"]["test_bleu"] == results["runs"]["mitchell5"]["test_bleu"]
    head, row = (tmp_path / "out" / "results.csv").read_text().splitlines()[:2]
    assert "test_bleu" in head.split(",") and head.endswith("synthetic_data")
    assert row.endswith("True")


def test_runner_reads_a_pair_file_and_checks_its_settings(tmp_path):
    path = _write(tmp_path, [f"{s}\t{t}" for s, t in PAIRS])
    data = datasets.load("pairs", data_file=str(path))
    assert isinstance(data, tr.TranslationData) and not data.synthetic
    bad = _write(tmp_path, ["a\tb", "c d"], name="bad.tsv")
    with pytest.raises(DatasetError, match="bad.tsv:2: no tab"):
        sweep.run_sweep(
            SweepConfig(model="translator", dataset="pairs", data_file=str(bad), out_dir=""),
            log=lambda _: None,
        )
    with pytest.raises(ConfigError, match="--model translator goes with --dataset pairs"):
        sweep.run_sweep(SweepConfig(model="translator", out_dir=""), log=lambda _: None)
    with pytest.raises(ConfigError, match="--beam must be an integer >= 1; got 0"):
        sweep.run_sweep(
            SweepConfig(model="translator", dataset="pairs", beam=0, out_dir=""),
            log=lambda _: None,
        )
    with pytest.raises(ConfigError, match="--data-file .* is not a file"):
        sweep.run_sweep(
            SweepConfig(model="translator", dataset="pairs", data_file=str(tmp_path), out_dir=""),
            log=lambda _: None,
        )


@pytest.mark.parametrize("mode", ["train", "inference", "finetune"])
def test_results_table_shows_bleu_in_every_mode(mode):
    from approxjax._src.runner.outputs import format_results

    run = {"test_accuracy": 0.5, "test_loss": 1.0, "step_seconds": None, "test_bleu": 12.345,
           "before_accuracy": 0.4}  # fmt: skip
    results = {
        "config": {"mode": mode, "epochs": 1, "finetune_epochs": 1, "init_params": None, "beam": 3},
        "runs": {"float32": run, "mitchell5": {**run, "test_bleu": 10.0}},
        "data": {"name": "synthetic-pairs", "synthetic": True},
    }
    table = format_results(results)
    assert "BLEU" in table.splitlines()[0] and "12.35" in table and "10.00" in table
    assert "decoded by beam search" in table and "SYNTHETIC" in table
