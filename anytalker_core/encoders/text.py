"""UMT5-XXL text encoder (Wan2.1's T5) from ComfyUI's single file or Wan's ``.pth``, run by transformers.

Accepted weights (the layout is read from the key names, the sizes from the tensor shapes):

* ComfyUI / Comfy-Org repackage: ``models/text_encoders/umt5_xxl_fp16.safetensors`` or
  ``umt5_xxl_fp8_e4m3fn_scaled.safetensors`` -- Hugging Face ``UMT5EncoderModel`` key names
  (``encoder.block.{i}.layer.0.SelfAttention.q.weight`` ...), fp8 weights with ``.scale_weight`` scales
  (dequantised to the compute dtype on load), and the SentencePiece tokenizer embedded as the uint8 tensor
  ``spiece_model``.
* Wan / Wan2.1-Fun: ``models_t5_umt5-xxl-enc-bf16.pth`` (``token_embedding``, ``blocks.{i}.attn.q``,
  ``blocks.{i}.ffn.gate.0`` ...), with the ``google/umt5-xxl`` tokenizer folder beside it.

Tokenizer search order: the ``tokenizer`` argument; the ``spiece_model`` tensor inside the file; a folder beside
the weights named ``google/umt5-xxl``, ``umt5-xxl``, ``umt5-xxl-tokenizer`` or ``tokenizer`` holding
``tokenizer.json`` or ``spiece.model``. Otherwise :class:`MissingModelError` says what to put where.

Encoding follows Wan's ``T5EncoderModel``: text cleaned as Wan does (``ftfy`` when installed, HTML unescape,
whitespace collapsed), tokenised with ``</s>`` appended and truncated to ``text_len`` (512) tokens, the encoder
run with an attention mask, and each prompt's states returned up to its own token count ``[L_i, dim]``.
"""

from __future__ import annotations

import html
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError, MissingModelError
from ..io.weights import (WEIGHT_SUFFIXES, LazyStateDict, describe_checkpoint, is_quant_key, leftover_meta,
                          load_into_empty, strip_prefix, to_compute_dtype)

log = logging.getLogger(__name__)

__all__ = ["TEXT_LEN", "TOKENIZER_DIR_NAMES", "TextEncoder", "load_text_encoder", "make_tiny_text_encoder"]

#: Wan's ``text_len``: prompts are cut to this many tokens (``</s>`` included).
TEXT_LEN = 512
#: folders beside the weights searched for the tokenizer, in order
TOKENIZER_DIR_NAMES = ("google/umt5-xxl", "umt5-xxl", "umt5-xxl-tokenizer", "tokenizer")

_WHAT = "UMT5-XXL text encoder"
_HF_SIGNATURE = "encoder.block.0.layer.0.SelfAttention.q.weight"
_WAN_SIGNATURE = "blocks.0.attn.q.weight"
_SPIECE_KEY = "spiece_model"
_PAD_ID = 0
_EOS_ID = 1


# --------------------------------------------------------------------------------------------- tokenizer


class _SentencePieceTokenizer:
    """SentencePiece model (as ComfyUI and ``google/umt5-xxl``'s ``spiece.model``): pieces + ``</s>``."""

    def __init__(self, model_proto: bytes, source: str):
        try:
            import sentencepiece
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingModelError(
                f"the UMT5 tokenizer from {source} needs the 'sentencepiece' package: pip install sentencepiece"
            ) from exc
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.source = source
        self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else _EOS_ID
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text: str, max_length: int) -> list[int]:
        return self._sp.encode(text)[: max_length - 1] + [self.eos_id]


class _JsonTokenizer:
    """A Hugging Face ``tokenizer.json`` (``google/umt5-xxl``); its post-processor appends ``</s>``."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self.source = str(path)
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str, max_length: int) -> list[int]:
        self._tok.enable_truncation(max_length)
        return self._tok.encode(text, add_special_tokens=True).ids


def _tokenizer_from_location(location: Path) -> _SentencePieceTokenizer | _JsonTokenizer | None:
    """A tokenizer from a folder (``tokenizer.json`` preferred, else ``spiece.model``) or one such file."""
    if location.is_file():
        if location.name.endswith(".json"):
            return _JsonTokenizer(location)
        return _SentencePieceTokenizer(location.read_bytes(), str(location))
    if location.is_dir():
        if (location / "tokenizer.json").is_file():
            return _JsonTokenizer(location / "tokenizer.json")
        if (location / "spiece.model").is_file():
            return _SentencePieceTokenizer((location / "spiece.model").read_bytes(), str(location / "spiece.model"))
    return None


def _find_tokenizer(weights: Path, sd: LazyStateDict, tokenizer: str | Path | None):
    if tokenizer is not None:
        found = _tokenizer_from_location(Path(tokenizer))
        if found is None:
            raise MissingModelError(
                f"UMT5 tokenizer: {tokenizer} is neither a tokenizer.json / spiece.model file nor a folder holding "
                f"one (download them from https://huggingface.co/google/umt5-xxl)"
            )
        return found
    embedded = [k for k in sd if k == _SPIECE_KEY or k.endswith("." + _SPIECE_KEY)]
    if embedded:
        proto = sd[embedded[0]].to(torch.uint8).numpy().tobytes()
        return _SentencePieceTokenizer(proto, f"{weights} ('{embedded[0]}')")
    searched = []
    for base in (weights.parent, weights.parent.parent):
        for name in TOKENIZER_DIR_NAMES:
            candidate = base / name
            searched.append(candidate)
            found = _tokenizer_from_location(candidate)
            if found is not None:
                return found
    raise MissingModelError(
        f"UMT5 tokenizer not found for {weights}: the file has no embedded '{_SPIECE_KEY}' tokenizer (ComfyUI's "
        f"umt5_xxl_*.safetensors have one). Put spiece.model (or tokenizer.json) from "
        f"https://huggingface.co/google/umt5-xxl in {weights.parent / 'umt5-xxl'}/ or pass the tokenizer folder "
        f"explicitly. Searched: {', '.join(str(p) for p in searched)}"
    )


def _clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: ftfy fix (when installed), HTML unescape twice, collapse whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


# --------------------------------------------------------------------------------------------- weights


#: Wan ``T5SelfAttention`` block names -> transformers ``UMT5Block`` names (inside ``blocks.{i}`` / ``encoder.block.{i}``)
_WAN_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # Wan: fc1(x) * gelu(gate(x)); HF: gelu(wi_0) * wi_1
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_HF_BLOCK_KEYS = {v: k for k, v in _WAN_BLOCK_KEYS.items()}
_WAN_TOP_KEYS = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_HF_TOP_KEYS = {v: k for k, v in _WAN_TOP_KEYS.items()}


def _rename_key(key: str, top: dict[str, str], block_pattern: str, block_keys: dict[str, str],
                block_prefix: str) -> str | None:
    """``key`` through one direction of the Wan <-> transformers key map (``None``: not in the map)."""
    if key in top:
        return top[key]
    m = re.fullmatch(block_pattern, key)
    if m and m.group(2) in block_keys:
        return f"{block_prefix}.{m.group(1)}.{block_keys[m.group(2)]}"
    return None


def _wan_to_hf_key(key: str) -> str | None:
    """Wan ``T5Encoder`` key -> transformers ``UMT5EncoderModel`` key (``None``: not part of the encoder)."""
    return _rename_key(key, _WAN_TOP_KEYS, r"blocks\.(\d+)\.(.+)", _WAN_BLOCK_KEYS, "encoder.block")


def hf_to_wan_key(key: str) -> str | None:
    """Inverse of :func:`_wan_to_hf_key` (writes Wan-layout files; ``None`` for the tied ``embed_tokens``)."""
    return _rename_key(key, _HF_TOP_KEYS, r"encoder\.block\.(\d+)\.(.+)", _HF_BLOCK_KEYS, "blocks")


def _hf_state_dict(sd: LazyStateDict, weights: Path, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    keys = list(sd.keys())
    prefix = strip_prefix(keys, _HF_SIGNATURE)
    if prefix is not None:
        out = {}
        for key in keys:
            if not key.startswith(prefix) or is_quant_key(key) or key.endswith(_SPIECE_KEY):
                continue
            name = key[len(prefix):]
            if name.startswith(("encoder.", "shared.")):
                out[name] = to_compute_dtype(sd, key, dtype, _WHAT, weights).to(device)
        return out
    prefix = strip_prefix(keys, _WAN_SIGNATURE)
    if prefix is not None and strip_prefix(keys, "token_embedding.weight") == prefix:
        out = {}
        for key in keys:
            if not key.startswith(prefix) or is_quant_key(key):
                continue
            name = _wan_to_hf_key(key[len(prefix):])
            if name is not None:
                out[name] = to_compute_dtype(sd, key, dtype, _WHAT, weights).to(device)
        return out
    raise CheckpointError(
        f"{weights} is not a {_WHAT}: it looks like {describe_checkpoint(keys)}. Expected ComfyUI's "
        f"umt5_xxl_fp16.safetensors / umt5_xxl_fp8_e4m3fn_scaled.safetensors (keys like '{_HF_SIGNATURE}') "
        f"or Wan's models_t5_umt5-xxl-enc-bf16.pth (keys like '{_WAN_SIGNATURE}'), in models/text_encoders/."
    )


def _config_from_state_dict(sd: dict[str, torch.Tensor], weights: Path):
    from transformers import UMT5Config

    try:
        vocab, d_model = sd["shared.weight"].shape
        num_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
        inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
        buckets, heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
        d_ff = sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{_WHAT}: {weights} lacks the weight {exc} needed to infer the model size") from exc
    if inner % heads:
        raise CheckpointError(f"{_WHAT}: {weights}: attention width {inner} is not a multiple of {heads} heads")
    return UMT5Config(
        vocab_size=int(vocab), d_model=int(d_model), d_kv=int(inner // heads), d_ff=int(d_ff),
        num_layers=int(num_layers), num_heads=int(heads), relative_attention_num_buckets=int(buckets),
        relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
        dropout_rate=0.0, is_encoder_decoder=False, use_cache=False, pad_token_id=_PAD_ID, eos_token_id=_EOS_ID,
    )


def _resolve_weights(path: Path) -> Path:
    """A weights file from ``path`` (a file, or a folder holding exactly one T5 weights file)."""
    if not path.exists():
        raise MissingModelError(
            f"{_WHAT} not found: {path}. Put umt5_xxl_fp16.safetensors (or umt5_xxl_fp8_e4m3fn_scaled.safetensors) "
            f"from Comfy-Org/Wan_2.1_ComfyUI_repackaged in ComfyUI's models/text_encoders/."
        )
    if path.is_file():
        return path
    candidates = sorted(
        p for p in path.iterdir()
        if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES and ("t5" in p.name.lower() or "umt5" in p.name.lower())
    )
    if len(candidates) != 1:
        raise MissingModelError(
            f"{_WHAT}: the folder {path} should hold one T5 weights file (e.g. models_t5_umt5-xxl-enc-bf16.pth or "
            f"umt5_xxl_fp16.safetensors); found {len(candidates)}: {', '.join(p.name for p in candidates) or 'none'}"
        )
    return candidates[0]


# --------------------------------------------------------------------------------------------- encoder


class TextEncoder:
    """A loaded UMT5 encoder plus its tokenizer.

    Attributes:
        dim: width of the returned states (4096 for UMT5-XXL; the DiT's ``text_dim``).
        text_len: maximum tokens per prompt (512, ``</s>`` included).
        device, dtype: where and in which precision the encoder runs.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, dtype: torch.dtype, text_len: int = TEXT_LEN):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.text_len = text_len
        self.dim = int(model.config.d_model)

    def to(self, device: str | torch.device) -> TextEncoder:
        """Move the model to ``device`` (for offloading between stages); returns ``self``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> ``(ids [B, L] int64, mask [B, L] int64)``, padded with 0 to the longest prompt."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"text encoder: prompts must be a list of strings, got {type(prompts).__name__}")
        vocab = int(self.model.config.vocab_size)
        rows = []
        for prompt in prompts:
            ids = self.tokenizer.encode(_clean_prompt(prompt), self.text_len)
            if ids and max(ids) >= vocab:
                raise CheckpointError(
                    f"text encoder: the tokenizer ({self.tokenizer.source}) produced token id {max(ids)} but the "
                    f"encoder has only {vocab} embeddings; tokenizer and weights do not belong together"
                )
            rows.append(ids)
        length = max(1, max(len(r) for r in rows)) if rows else 1
        ids = torch.full((len(rows), length), _PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Encode prompts -> one float32 tensor ``[L_i, dim]`` per prompt (``L_i`` its token count, ≤ 512)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            return []
        ids, mask = self.tokenize(prompts)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        lengths = mask.sum(dim=1).tolist()
        return [out[i, : int(n)].float() for i, n in enumerate(lengths)]


def load_text_encoder(
    path: str | Path,
    tokenizer: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TextEncoder:
    """Load UMT5-XXL from a ComfyUI ``umt5_xxl_*.safetensors`` or Wan ``models_t5_umt5-xxl-enc-bf16.pth``.

    Args:
        path: the weights file (or a folder holding one T5 weights file, e.g. a Wan2.1-Fun model folder).
        tokenizer: a folder (or file) with ``tokenizer.json`` / ``spiece.model`` of ``google/umt5-xxl``;
            optional for ComfyUI files, which embed it (see the module docstring for the search order).
        device: where the encoder runs.
        dtype: compute dtype (bf16 on GPU as Wan does). With fp16 the FFN output projections stay in
            float32, as transformers keeps them, because T5 overflows there in fp16.

    Raises:
        MissingModelError: the weights or the tokenizer are not where expected (the message says where to put them).
        CheckpointError: the file is not a UMT5 encoder, is damaged, or uses an unsupported quantisation.
    """
    from transformers import UMT5EncoderModel

    weights = _resolve_weights(Path(path))
    device = torch.device(device)
    sd = LazyStateDict(weights, _WHAT)
    state = _hf_state_dict(sd, weights, dtype, device)
    tok = _find_tokenizer(weights, sd, tokenizer)
    config = _config_from_state_dict(state, weights)
    state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    if dtype == torch.float16:  # as transformers does (_keep_in_fp32_modules): fp16 overflows in T5's `wo`
        for key in [k for k in state if k.endswith("DenseReluDense.wo.weight")]:
            state[key] = state[key].float()
    model = load_into_empty(lambda: UMT5EncoderModel(config), state, what=_WHAT, path=weights)
    if leftover_meta(model):
        raise CheckpointError(f"{_WHAT}: {weights} leaves weights unset: {', '.join(leftover_meta(model)[:4])}")
    if tok.vocab_size > config.vocab_size:
        log.warning("UMT5 tokenizer (%s) has %d pieces but the encoder only %d embeddings",
                    tok.source, tok.vocab_size, config.vocab_size)
    log.info("loaded %s from %s (%d layers, dim %d, tokenizer %s) on %s/%s",
             _WHAT, weights, config.num_layers, config.d_model, tok.source, device, dtype)
    return TextEncoder(model, tok, device, dtype)


# --------------------------------------------------------------------------------------------- tiny model

_TINY_CORPUS = (
    "Two people are talking to each other in a bright room.",
    "A woman smiles and speaks to the camera, then listens to her friend.",
    "A man nods while the woman on the left explains something.",
    "The two speakers take turns; the listener reacts with small head movements.",
    "Close-up of a person talking, natural lighting, realistic video.",
    "blurry, low quality, static, distorted face, extra limbs, watermark, text",
    "An interview between a reporter and a scientist in a laboratory.",
    "Friends laughing and chatting at a cafe table outdoors.",
)


def _train_tiny_spiece(vocab_size: int) -> bytes:
    """A small SentencePiece unigram model (pad 0, eos 1, unk 2 like UMT5), trained deterministically."""
    import sentencepiece

    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_TINY_CORPUS * 4), model_writer=buffer, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, hard_vocab_limit=False, minloglevel=2,
    )
    return buffer.getvalue()


def make_tiny_text_encoder(
    directory: str | Path,
    *,
    layout: str = "comfy",
    d_model: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    d_ff: int = 64,
    vocab_size: int = 128,
    embed_tokenizer: bool = True,
    seed: int = 0,
) -> Path:
    """Write a tiny random UMT5 encoder in a real user file layout; returns the weights file.

    Args:
        directory: created if needed.
        layout: ``"comfy"`` -> ``umt5_xxl_tiny.safetensors`` with HF key names (+ ``spiece_model`` when
            ``embed_tokenizer``); ``"wan"`` -> ``models_t5_umt5-xxl-enc-bf16.pth`` with Wan key names and the
            tokenizer as ``google/umt5-xxl/spiece.model`` beside it (the Wan2.1-Fun layout).
        d_model: the encoder width, i.e. :attr:`TextEncoder.dim` (build the tiny DiT with ``text_dim`` = this).
    """
    from safetensors.torch import save_file
    from transformers import UMT5Config, UMT5EncoderModel

    if layout not in ("comfy", "wan"):
        raise InputError(f"make_tiny_text_encoder: layout must be 'comfy' or 'wan', got {layout!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spiece = _train_tiny_spiece(min(vocab_size, 100))
    config = UMT5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff, num_layers=num_layers,
        num_heads=num_heads, feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
    )
    generator = torch.Generator().manual_seed(seed)
    model = UMT5EncoderModel(config)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "encoder.embed_tokens.weight":
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("layer_norm.weight"):
            state[name] = 1.0 + 0.1 * noise
        elif "relative_attention_bias" in name or name == "shared.weight":
            state[name] = noise
        else:
            state[name] = noise / tensor.shape[-1] ** 0.5
    if layout == "comfy":
        if embed_tokenizer:
            state[_SPIECE_KEY] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8).clone()
        path = directory / "umt5_xxl_tiny.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return path
    wan_state = {hf_to_wan_key(k): v for k, v in state.items() if hf_to_wan_key(k) is not None}
    path = directory / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(wan_state, path)
    if embed_tokenizer:
        tok_dir = directory / "google" / "umt5-xxl"
        tok_dir.mkdir(parents=True, exist_ok=True)
        (tok_dir / "spiece.model").write_bytes(spiece)
    return path
