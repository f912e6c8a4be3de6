"""Translation under simulated arithmetic: sentence-pair data (a tab-separated
file, or a synthetic offline task), the encoder-decoder ``Translator`` whose
every GEMM (cross-attention included) is approximate, greedy and beam
decoding, token accuracy and BLEU (sacrebleu). See the implementation's
docstring for the data forms and the metrics' definitions."""

from approxjax._src.runner.translation import (
    BOS,
    EOS,
    PAD,
    UNK,
    TranslationData,
    Translator,
    Vocabulary,
    beam_search,
    bleu,
    greedy_decode,
    load_pairs,
    make_decoder,
    read_pairs,
    sequence_loss,
    synthetic_pairs,
    tokenize,
)

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "UNK",
    "TranslationData",
    "Translator",
    "Vocabulary",
    "beam_search",
    "bleu",
    "greedy_decode",
    "load_pairs",
    "make_decoder",
    "read_pairs",
    "sequence_loss",
    "synthetic_pairs",
    "tokenize",
]
