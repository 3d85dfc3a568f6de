"""Text to token ids without fastai: fastai's default rules, spaCy's blank English tokenizer with
fastai's special tokens, and the vocabulary from the manifest.

This is what fastai's `learn.predict` / `test_dl` do: the rules (`text_proc_rules`), then spaCy; they
skip the post-rule `replace_space` that training's `tokenize_df` applies (it only touches tokens with
embedded spaces, which spaCy does not produce from ordinary text). The rules are fastai's own, copied:
this package cannot import fastai.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache

import numpy as np

from services.manifest import TextPreprocessing

UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ = "xxunk xxpad xxbos xxeos xxfld xxrep xxwrep xxup xxmaj".split()
SPECIAL_TOKENS = [UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ]

_re_spec = re.compile(r"([/#\\])")
_re_space = re.compile(" {2,}")
_re_rep = re.compile(r"(\S)(\1{2,})")
_re_wrep = re.compile(r"(?:\s|^)(\w+)\s+((?:\1\s+)+)\1(\s|\W|$)")
_re_all_caps = re.compile(r"(\s|^)([A-Z]+[^a-z\s]*)(?=(\s|$))")
_re_maj = re.compile(r"(\s|^)([A-Z][^A-Z\s]*)(?=(\s|$))")


def fix_html(x: str) -> str:
    x = x.replace("#39;", "'").replace("amp;", "&").replace("#146;", "'").replace("nbsp;", " ").replace(
        "#36;", "$").replace("\\n", "\n").replace("quot;", "'").replace("<br />", "\n").replace(
        '\\"', '"').replace("<unk>", UNK).replace(" @.@ ", ".").replace(" @-@ ", "-").replace("...", " …")
    return html.unescape(x)


def replace_rep(t: str) -> str:
    return _re_rep.sub(lambda m: f" {TK_REP} {len(m.group(2)) + 1} {m.group(1)} ", t)


def replace_wrep(t: str) -> str:
    def _replace(m):
        c, cc, e = m.groups()
        return f" {TK_WREP} {len(cc.split()) + 2} {c} {e}"

    return _re_wrep.sub(_replace, t)


def spec_add_spaces(t: str) -> str:
    return _re_spec.sub(r" \1 ", t)


def rm_useless_spaces(t: str) -> str:
    return _re_space.sub(" ", t)


def replace_all_caps(t: str) -> str:
    def _replace(m):
        tok = f"{TK_UP} " if len(m.groups()[1]) > 1 else ""
        return f"{m.groups()[0]}{tok}{m.groups()[1].lower()}"

    return _re_all_caps.sub(_replace, t)


def replace_maj(t: str) -> str:
    def _replace(m):
        tok = f"{TK_MAJ} " if len(m.groups()[1]) > 1 else ""
        return f"{m.groups()[0]}{tok}{m.groups()[1].lower()}"

    return _re_maj.sub(_replace, t)


def lowercase(t: str) -> str:
    return f"{BOS} " + t.lower().strip()


RULES = {f.__name__: f for f in (fix_html, replace_rep, replace_wrep, spec_add_spaces, rm_useless_spaces,
                                  replace_all_caps, replace_maj, lowercase)}


@lru_cache(maxsize=4)
def spacy_tokenizer(lang: str):
    import spacy
    from spacy.symbols import ORTH

    nlp = spacy.blank(lang)
    for token in SPECIAL_TOKENS:
        nlp.tokenizer.add_special_case(token, [{ORTH: token}])
    return nlp.tokenizer


def tokenize(text: str, spec: TextPreprocessing) -> list[str]:
    for name in spec.rules:
        text = RULES[name](text)
    return [token.text for token in spacy_tokenizer(spec.language)(text)]


class Numericalizer:
    def __init__(self, spec: TextPreprocessing):
        self.lookup = {token: index for index, token in enumerate(spec.vocab)}
        self.unknown = self.lookup[UNK]

    def __call__(self, tokens: list[str]) -> list[int]:
        return [self.lookup.get(token, self.unknown) for token in tokens]


def batch_ids(id_lists: list[list[int]], pad_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (tokens, lengths), as the exported model takes them."""
    lengths = np.array([len(ids) for ids in id_lists], dtype=np.int64)
    tokens = np.full((len(id_lists), int(lengths.max())), pad_index, dtype=np.int64)
    for row, ids in enumerate(id_lists):
        tokens[row, : len(ids)] = ids
    return tokens, lengths
