"""Descriptions and summaries: ROUGE-L on Korean words and sacrebleu's BLEU."""

import functools
import re
import unicodedata
from collections.abc import Sequence

from chartwiz.errors import ChartWizValueError
from chartwiz.extras import require

from .corpus import check_lengths, mean_percent


DEFAULT_BLEU_TOKENIZE = "intl"
_WORD = re.compile(r"\w+")


def korean_words(text: str) -> list[str]:
    """Lowercased runs of letters and digits of any script (Hangul included), punctuation dropped."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


class KoreanWordTokenizer:
    """
    `rouge_score` tokenizer that keeps Hangul. Its default one lowercases and then replaces everything but `a-z0-9`
    with spaces, so a Korean text has no tokens left and scores 0. (`RougeScorer` only calls `tokenize`, so this
    need not subclass `rouge_score.tokenizers.Tokenizer`, and importing this module needs no `rouge_score`.)
    """

    def tokenize(self, text: str) -> list[str]:
        return korean_words(text)


@functools.cache
def _rouge_scorer():
    rouge_scorer = require("rouge_score.rouge_scorer", "ROUGE-L")
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=KoreanWordTokenizer())


def rouge_l(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure in percent (`rouge_score`, on `korean_words` tokens: words as spaces and punctuation
    delimit them, so a particle is part of its word)."""
    check_lengths(references, predictions)
    return mean_percent(
        [
            _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure
            for reference, prediction in zip(references, predictions)
        ]
    )


def bleu(
    references: Sequence[str], predictions: Sequence[str], tokenize: str = DEFAULT_BLEU_TOKENIZE
) -> tuple[float, str]:
    """
    Corpus BLEU (sacrebleu, one reference each) and its signature. The default tokenizer, `intl`, splits Unicode
    punctuation and symbols off and keeps Hangul words whole; `ko-mecab` (morphemes, `pip install "sacrebleu[ko]"`)
    is the other Korean choice.
    """
    check_lengths(references, predictions)
    metric = _bleu_metric(tokenize)
    score = metric.corpus_score(list(predictions), [list(references)])
    return score.score, str(metric.get_signature())


def bleu_signature(tokenize: str = DEFAULT_BLEU_TOKENIZE) -> str:
    """
    sacrebleu's signature of `bleu` with this tokenizer (one reference per prediction), for reports; raises
    `ValueError` for a tokenizer that sacrebleu does not have or that is not installed.
    """
    metric = _bleu_metric(tokenize)
    metric.corpus_score(["-"], [["-"]])  # sacrebleu completes the signature (the reference count) once it has scored
    return str(metric.get_signature())


def _bleu_metric(tokenize: str):
    BLEU = require("sacrebleu.metrics", "BLEU").BLEU
    if tokenize not in BLEU.TOKENIZERS:
        raise ChartWizValueError(f"Unknown BLEU tokenizer {tokenize!r}; sacrebleu has {', '.join(BLEU.TOKENIZERS)}.")
    try:
        return BLEU(tokenize=tokenize)
    except RuntimeError as error:  # sacrebleu's word for a tokenizer whose extra packages are missing
        raise ChartWizValueError(
            f"The BLEU tokenizer {tokenize!r} is not installed: {' '.join(str(error).split())}"
        ) from None


__all__ = ["DEFAULT_BLEU_TOKENIZE", "KoreanWordTokenizer", "bleu", "bleu_signature", "korean_words", "rouge_l"]
