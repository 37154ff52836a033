"""Padding-free forwards (ppo.packing): the real tokens of several samples packed into one row,
position ids restarting at 0 for each sample, so that no forward computes a padding token (the
way OpenRLHF's packing_samples and verl's remove-padding feed their models).

The padded layout (varpo.ppo.experience) holds every sample in a [P + T] row: left-padded prompt,
right-padded response. Packed, sample b is its p_b real prompt tokens then its r_b real response
tokens, at positions 0 .. p_b + r_b − 1, and the samples of a row follow one another. HF models
(transformers ≥ 4.53) see the restarts in `position_ids` when no attention mask is passed and
attend within each sample only (masking_utils.find_packed_sequence_indices: a block-diagonal
causal mask for sdpa and eager, cumulative sequence lengths for flash-attention's varlen kernel);
GPT-2's learned position embeddings read the same restarting positions. Response token t of
sample b is predicted at row position o_b + p_b − 1 + t (o_b: where the sample starts): those
positions alone go through the LM head (`keep`), and the outputs go back to their [B, T] places.

Rows: with flash-attention one row holds the whole micro-batch (its kernel attends per sample).
sdpa and eager attend densely over a row (a masked C×C score matrix for a row of C tokens), so
there a row is capped (`row_capacity`) where that dense attention stays within a quarter of the
blocks' linear-layer FLOPs per token (`DENSE_ATTENTION_SHARE`, from the model's shape), and never
below the longest sample; samples share rows first-fit decreasing. Each row is one forward: a cap
at the longest sample alone would cost a forward per sample, and on a small model that per-call
overhead outweighs the padding it saves. A micro-batch without any padding stays in the padded
layout (it is already padding-free)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .experience import Experience

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")  # kernels that attend per packed sample
DENSE_ATTENTION_SHARE = 0.25  # dense attention over a row ≤ this share of the blocks' linear FLOPs per token


@dataclass(frozen=True)
class PackedRow:
    """Some samples of an Experience as one padding-free row."""

    input_ids: torch.Tensor  # [1, n] the samples' real tokens, one after the other
    position_ids: torch.Tensor  # [1, n] 0 .. len − 1 within each sample
    keep: torch.Tensor  # [m] row positions that predict a response token (sample by sample, in order)
    response_ids: torch.Tensor  # [1, m] the response token each kept position predicts
    rows: torch.Tensor  # [m] its sample in the Experience
    cols: torch.Tensor  # [m] its response index t


def sample_lengths(exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
    """(real prompt tokens [B], real response tokens [B]) of each sample."""
    return exp.prompt_mask.sum(-1), exp.response_mask.sum(-1)


def padding_fraction(exp: Experience) -> float:
    """Share of the padded [B, P + T] layout that is padding."""
    total = exp.prompt_mask.numel() + exp.response_mask.numel()
    real = int(exp.prompt_mask.sum()) + int(exp.response_mask.sum())
    return 1.0 - real / total if total else 0.0


def first_fit_decreasing(lengths: list[int], capacity: int | None) -> list[list[int]]:
    """Sample indices in rows of at most `capacity` tokens (None: one row), longest first, each into
    the first row it fits; a sample longer than the capacity gets a row of its own. Within a row the
    samples keep their original order."""
    if capacity is None:
        return [list(range(len(lengths)))] if lengths else []
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return [sorted(r) for r in rows]


def balanced_chunks(lengths: list[int], size: int) -> list[list[int]]:
    """The samples in ceil(B / size) chunks of at most `size` samples whose token counts are as even
    as greedy allows (longest first, each to the chunk with the fewest tokens that has room): the
    micro-batches of the no-grad forwards, balanced by tokens rather than by samples."""
    if size < 1:
        raise ValueError(f"chunk size must be ≥ 1, got {size}")
    n = len(lengths)
    k = -(-n // size)
    chunks: list[list[int]] = [[] for _ in range(k)]
    tokens = [0] * k
    for i in sorted(range(n), key=lambda j: (-lengths[j], j)):
        c = min((c for c in range(k) if len(chunks[c]) < size), key=lambda c: (tokens[c], c))
        chunks[c].append(i)
        tokens[c] += lengths[i]
    return [sorted(c) for c in chunks]


def attn_implementation(module: torch.nn.Module) -> str | None:
    """The attention kernel an HF model (or a module wrapping one: a value head, peft) runs."""
    for m in module.modules():
        config = getattr(m, "config", None)
        impl = getattr(config, "_attn_implementation", None)
        if isinstance(impl, str):
            return impl
    return None


def row_capacity(lengths: list[int], attn_implementation: str | None, row_tokens: int | None,
                 shape=None) -> int | None:
    """Tokens per packed row: `row_tokens` when set; else one row (None) for a varlen attention
    kernel; for dense attention (sdpa, eager) the longest sample, or more when the model's shape
    (varpo.models.flops.ModelShape) allows rows of C tokens whose attention, 4·heads·head_dim·C
    FLOPs per token and layer, stays within DENSE_ATTENTION_SHARE of the layer's linear FLOPs."""
    if row_tokens is not None:
        return row_tokens
    if attn_implementation in VARLEN_ATTENTION:
        return None
    longest = max(lengths) if lengths else None
    if shape is None or longest is None:
        return longest
    budget = int(DENSE_ATTENTION_SHARE * 2 * shape.layer_matmul_params / (4 * shape.heads * shape.head_dim))
    return max(longest, budget)


def pack(exp: Experience, samples: list[int]) -> PackedRow:
    """The samples `samples` of exp (in that order) as one padding-free row."""
    idx = torch.as_tensor(samples, dtype=torch.long, device=exp.prompt_ids.device)
    seq = torch.cat([exp.prompt_ids[idx], exp.response_ids[idx]], 1)
    att = torch.cat([exp.prompt_mask[idx], exp.response_mask[idx]], 1).bool()
    prompt_len = exp.prompt_mask[idx].sum(-1)
    if bool((prompt_len == 0).any()):
        raise ValueError("packing needs at least one prompt token per sample (the position that predicts "
                         "the first response token)")
    P = exp.prompt_ids.shape[1]
    # flat position in the row of every real token of the padded layout (row-major = sample by sample)
    flat = att.flatten().long().cumsum(0).reshape(att.shape) - 1
    resp = exp.response_mask[idx].bool()
    local_rows, cols = resp.nonzero(as_tuple=True)
    keep = flat[:, P:][local_rows, cols] - 1  # the position before response token t predicts it
    return PackedRow(
        input_ids=seq[att][None],
        position_ids=(att.long().cumsum(-1) - 1)[att][None],
        keep=keep,
        response_ids=exp.response_ids[idx][local_rows, cols][None],
        rows=idx[local_rows],
        cols=cols,
    )


def plan(exp: Experience, attn_implementation: str | None, row_tokens: int | None = None,
         shape=None) -> list[PackedRow] | None:
    """exp's samples as packed rows, or None when the padded layout holds no padding (packing
    would change nothing). `shape`: the model's ModelShape, for the dense-attention row cap."""
    prompt_len, response_len = sample_lengths(exp)
    if bool((prompt_len == exp.prompt_mask.shape[1]).all() and (response_len == exp.response_mask.shape[1]).all()):
        return None
    lengths = (prompt_len + response_len).tolist()
    rows = first_fit_decreasing(lengths, row_capacity(lengths, attn_implementation, row_tokens, shape))
    return [pack(exp, r) for r in rows]


def unpack(rows: list[PackedRow], parts: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """Per-row outputs [1, m] (or [m]) at the kept positions -> [B, T], 0 at padding; differentiable."""
    flat = torch.cat([p.reshape(-1) for p in parts])
    out = flat.new_zeros(shape)
    rows_idx = torch.cat([r.rows for r in rows])
    cols_idx = torch.cat([r.cols for r in rows])
    return out.index_put((rows_idx, cols_idx), flat)
