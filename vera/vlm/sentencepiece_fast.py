"""A fast (``tokenizers``) tokenizer that encodes exactly like a SentencePiece BPE model.

InternVL2's language models (InternLM2, Phi-3) ship a SentencePiece
``tokenizer.model`` and a *slow* tokenizer: the text is first cut at the
tokens listed in ``tokenizer_config.json`` (``<|im_start|>``, ``<img>``, …),
and every piece in between goes through ``SentencePieceProcessor.encode`` on
its own (so each piece gets SentencePiece's dummy ``▁`` prefix when the model
asks for one). This module rebuilds that as a ``tokenizers`` pipeline:

- the cut at the listed tokens: non-normalized added tokens, matched first;
- SentencePiece's normalisation of each piece, in its order: the precompiled
  character map, removal of extra spaces, the dummy prefix, spaces as ``▁``;
- BPE with the model's pieces as vocabulary and one merge per way of writing a
  piece as two pieces, ranked by the piece's score (SentencePiece merges the
  adjacent pair whose concatenation scores highest), with byte fallback.

The model file is a protocol buffer; the few fields needed are read here from
the wire format (field numbers of ``sentencepiece_model.proto``), so neither
``sentencepiece`` nor ``protobuf`` is needed at run time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
from tokenizers.models import BPE

from vera.errors import VeraError

# sentencepiece_model.proto: ModelProto.SentencePiece.Type and TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE_MODEL = 2
SPACE = "▁"


@dataclass
class SentencePieceModel:
    """The fields of a ``tokenizer.model`` that decide how text is encoded (proto defaults applied)."""

    pieces: list[tuple[str, float, int]] = field(default_factory=list)  # (piece, score, type)
    model_type: int = 1
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    unk_piece: str = "<unk>"
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _fields(data: bytes):
    """Yield ``(field number, wire type, value)`` of one protobuf message (varints, 32-bit, bytes)."""
    position = 0

    def varint() -> int:
        nonlocal position
        result = shift = 0
        while True:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while position < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 1:
            yield number, wire, data[position:position + 8]
            position += 8
        elif wire == 2:
            length = varint()
            yield number, wire, data[position:position + length]
            position += length
        elif wire == 5:
            yield number, wire, data[position:position + 4]
            position += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def read_sentencepiece_model(path: Path) -> SentencePieceModel:
    """Parse ``tokenizer.model``; a file that is not a SentencePiece model is a one-line error."""
    path = Path(path)
    model = SentencePieceModel()
    try:
        for number, _, value in _fields(path.read_bytes()):
            if number == 1:  # pieces
                piece, score, kind = "", 0.0, NORMAL
                for sub, _, item in _fields(value):
                    if sub == 1:
                        piece = item.decode("utf-8")
                    elif sub == 2:
                        score = struct.unpack("<f", item)[0]
                    elif sub == 3:
                        kind = item
                model.pieces.append((piece, score, kind))
            elif number == 2:  # trainer_spec
                for sub, _, item in _fields(value):
                    if sub == 3:
                        model.model_type = item
                    elif sub == 24:
                        model.treat_whitespace_as_suffix = bool(item)
                    elif sub == 35:
                        model.byte_fallback = bool(item)
                    elif sub == 45:
                        model.unk_piece = item.decode("utf-8")
            elif number == 3:  # normalizer_spec
                for sub, _, item in _fields(value):
                    if sub == 2:
                        model.precompiled_charsmap = bytes(item)
                    elif sub == 3:
                        model.add_dummy_prefix = bool(item)
                    elif sub == 4:
                        model.remove_extra_whitespaces = bool(item)
                    elif sub == 5:
                        model.escape_whitespaces = bool(item)
    except (OSError, ValueError, IndexError, struct.error, UnicodeDecodeError) as error:
        raise VeraError(f"cannot read SentencePiece model {path}: {error}") from None
    if not model.pieces:
        raise VeraError(f"{path} is not a SentencePiece model (no pieces)")
    return model


def _check_supported(model: SentencePieceModel, path: Path) -> None:
    if model.model_type != BPE_MODEL:
        raise VeraError(f"{path}: only SentencePiece BPE models are supported (model type {model.model_type})")
    if model.treat_whitespace_as_suffix or not model.escape_whitespaces:
        raise VeraError(f"{path}: SentencePiece models that do not escape spaces as a '▁' prefix are not supported")


def _normalizer(model: SentencePieceModel) -> normalizers.Normalizer:
    steps: list[normalizers.Normalizer] = []
    if model.precompiled_charsmap:
        steps.append(normalizers.Precompiled(model.precompiled_charsmap))
    if model.remove_extra_whitespaces:
        # SentencePiece drops leading and trailing spaces and keeps one of each run (U+0020 only).
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if model.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    steps.append(normalizers.Replace(" ", SPACE))
    return normalizers.Sequence(steps)


def _merges(vocab: dict[str, int], pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two vocabulary pieces, highest-scoring result first."""
    ranked = []
    for index, (piece, score, kind) in enumerate(pieces):
        if kind != NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, index, vocab[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_fast_tokenizer(model_file: Path, added_tokens: dict[int, dict]) -> Tokenizer:
    """The ``tokenizers`` pipeline for ``model_file`` with the slow tokenizer's ``added_tokens`` (id → spec).

    An added token whose id is a SentencePiece id renames that piece (InternLM2
    keeps its chat tokens in reserved pieces); the others are appended at
    their ids, which must follow the pieces without gaps.
    """
    model = read_sentencepiece_model(model_file)
    _check_supported(model, Path(model_file))
    names = [piece for piece, _, _ in model.pieces]
    for index in sorted(added_tokens):
        if index < len(names):
            names[index] = added_tokens[index]["content"]
        elif index != len(names):
            raise VeraError(f"added token {added_tokens[index]['content']!r} has id {index}, "
                            f"but the vocabulary ends at {len(names) - 1}")
        else:
            names.append(added_tokens[index]["content"])
    vocab: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in vocab:
            raise VeraError(f"{model_file}: token {name!r} appears twice (ids {vocab[name]} and {index})")
        vocab[name] = index
    renamed = {index for index in added_tokens if index < len(model.pieces)}
    # A renamed piece is an added token now: no merge may produce it.
    merge_pieces = [(names[index], score, CONTROL if index in renamed else kind)
                    for index, (_, score, kind) in enumerate(model.pieces)]
    tokenizer = Tokenizer(BPE(vocab, _merges(vocab, merge_pieces), unk_token=model.unk_piece, fuse_unk=True,
                              byte_fallback=model.byte_fallback))
    tokenizer.normalizer = _normalizer(model)
    tokenizer.pre_tokenizer = None
    decode_steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if model.add_dummy_prefix:
        decode_steps.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(decode_steps)
    # The slow tokenizer cuts the text at its added tokens before SentencePiece sees it.
    for _, spec in sorted(added_tokens.items()):
        token = AddedToken(spec["content"], special=bool(spec.get("special", False)), normalized=False,
                           lstrip=bool(spec.get("lstrip", False)), rstrip=bool(spec.get("rstrip", False)),
                           single_word=bool(spec.get("single_word", False)))
        (tokenizer.add_special_tokens if token.special else tokenizer.add_tokens)([token])
    # SentencePiece matches its user-defined symbols inside a piece of text, after the dummy prefix and
    # the space clean-up of the whole piece; as added tokens they cut the text first, which is the same
    # only when neither applies.
    user_defined = [piece for index, (piece, _, kind) in enumerate(model.pieces)
                    if kind == USER_DEFINED and index not in renamed]
    if user_defined and (model.add_dummy_prefix or model.remove_extra_whitespaces):
        raise VeraError(f"{model_file}: user-defined SentencePiece symbols ({', '.join(user_defined[:3])}, …) "
                        "together with a dummy prefix or space clean-up cannot be reproduced exactly")
    tokenizer.add_tokens([AddedToken(piece, special=False, normalized=False) for piece in user_defined])
    return tokenizer
