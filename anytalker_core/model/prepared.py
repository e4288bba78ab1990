"""The DiT's conditioning, prepared once per generation instead of in every layer of every step.

Everything the transformer blocks read besides the noisy tokens depends only on the conditioning
(prompt, first-frame CLIP tokens, faces, audio): the text/image/face/audio embeddings and, in every
block, the keys and values computed from them. :meth:`AnyTalkerDiT.condition
<anytalker_core.model.dit.AnyTalkerDiT.condition>` builds a :class:`PreparedConditioning` for ``K`` *branches*
(rows: e.g. the guidance branches ``cond`` and ``uncond``) that a whole sampling run reuses:

* embeddings always (they are small);
* with ``cache_kv=True`` also every block's keys/values (:class:`BlockKV`). Their memory is
  :meth:`PreparedConditioning.nbytes`; at the 1.3B widths in fp32 that is about 9.4 MiB per block per branch for
  text + image, 3.2 MiB per block for each face and ``T x 0.39`` MiB per block for each speaker's
  audio (T video frames: 31 MiB for 81 frames), so ~1 GiB per speaker over 30 blocks. Without the cache
  each block projects them on every call (the reference's cost), bit for bit the same result.

Sharing rules (exact, no approximation): a tensor with batch 1 serves every branch (the image tokens,
the faces and the masks are the same in every guidance branch); an all-zero audio row (the
unconditional branch) is projected once — from one video frame for the fused variant, since every frame
of zero features gives the same tokens — and shared by every identity and branch that has it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KV:
    """Keys and values ``[B, L, heads, head_dim]`` (audio: ``[B, T, tokens, heads, head_dim]``)."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass
class IdentityTokens:
    """One identity's tokens in the width the AFCA projects them from, for ``K`` branches.

    audio: per branch ``[1, T, tokens, dim]`` (fused, per video frame; ``T = 1`` for zero audio,
           broadcast over frames) or ``[1, F_lat, tokens, audio_dim]`` (legacy, per latent frame).
           Branches with equal audio hold the same tensor object.
    face:  ``[1 or K, 257, dim]`` face tokens (``audio_ref_emb`` of the face CLIP tokens).
    mask:  ``[1 or K, S, 1]`` soft token mask in token order.
    """

    audio: list[torch.Tensor]
    face: torch.Tensor
    mask: torch.Tensor


@dataclass
class IdentityKV:
    """One identity's keys/values in one block: ``face`` for all branches, ``audio`` per branch."""

    face: KV
    audio: list[KV]
    mask: torch.Tensor


@dataclass
class BlockKV:
    """One block's keys/values of everything but the video tokens.

    text ``[K, Lt, H, D]``; image ``[1 or K, 257, H, D]``; identities: fused AFCA or legacy audio
    sublayer.
    """

    text: KV
    image: KV
    identities: list[IdentityKV]


@dataclass
class PreparedConditioning:
    """The prepared conditioning of ``branches`` rows (see the module docstring).

    text ``[K, text_len, dim]`` (legacy: ``[K, 257 + text_len, dim]``, image tokens first);
    image ``[1 or K, 257, dim]``; identities; blocks: one :class:`BlockKV` per block, or None when
    the keys/values are computed in each block. With ``blocks`` prepared outside autograd, the
    embeddings are released (``text``/``image`` None, no identities): nothing reads them any more.
    """

    branches: int
    text: torch.Tensor | None
    image: torch.Tensor | None
    identities: list[IdentityTokens]
    blocks: list[BlockKV] | None = None
    _rope: dict = field(default_factory=dict, repr=False)

    def nbytes(self) -> int:
        """Bytes held by this conditioning (each shared tensor counted once)."""
        seen: dict[int, int] = {}

        def add(t: torch.Tensor | None) -> None:
            if t is not None:
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()

        add(self.text)
        add(self.image)
        for ident in self.identities:
            add(ident.face)
            add(ident.mask)
            for a in ident.audio:
                add(a)
        for block in self.blocks or ():
            for kv in (block.text, block.image):
                add(kv.k)
                add(kv.v)
            for ident in block.identities:
                for kv in (ident.face, *ident.audio):
                    add(kv.k)
                    add(kv.v)
        return sum(seen.values())


def branch_row(t: torch.Tensor, b: int) -> torch.Tensor:
    """Row ``b`` of a tensor whose batch is 1 (shared by all branches) or K, keeping the batch dim."""
    return t if t.shape[0] == 1 else t[b:b + 1]
