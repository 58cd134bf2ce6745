"""The caption loss in bounded memory: the decoder's linear head and the token cross-entropy,
chunk by chunk over the (batch x position) rows.

The caption decoders (CLIPS's `CaptionDecoder`, CoCa's text decoder) end in a linear map to the
vocabulary. Their logits are batch x positions x 49,408 floats (1.6 GB at 64 x 128 in fp32), and
autograd keeps several tensors of that size alive (the logits, the log-softmax, their gradients).
`linear_cross_entropy` never holds more than one chunk of rows of them: its forward computes,
per chunk, the loss and the gradients w.r.t. the hidden states and the head (softmax minus
one-hot is the whole derivative of cross-entropy), so its backward only scales them by the
incoming gradient. Peak: O(chunk x vocab) plus one head-sized gradient, whatever the batch.
The arithmetic is the full path's (same dtypes under autocast), summed in a different order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

# Bytes of float32 logits per chunk: large enough that each chunk's matmul runs at full speed,
# small next to any model's own activations (169 rows of a 49,408-token vocabulary).
CHUNK_BYTES = 32 * 2**20


@dataclass
class HeadInputs:
    """What a decoder hands the loss instead of its logits: the states before the vocabulary
    projection, and that projection (weight [vocab, width], optional bias [vocab])."""

    hidden: "torch.Tensor"
    weight: "torch.Tensor"
    bias: Optional["torch.Tensor"] = None

    def logits(self) -> "torch.Tensor":
        import torch.nn.functional as F

        return F.linear(self.hidden, self.weight, self.bias)


def chunk_rows(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    return max(1, chunk_bytes // (4 * vocab))


def caption_cross_entropy(head: "HeadInputs | torch.Tensor", labels: "torch.Tensor",
                          ignore_index: int, mode: str = "chunked",
                          chunk_bytes: int = CHUNK_BYTES) -> "torch.Tensor":
    """Mean token cross-entropy over the targets that are not `ignore_index`.

    `head` is a decoder's HeadInputs (or ready logits, which are always taken whole). `mode`
    "full" materialises the logits as the trainer did before chunking (kept for comparison:
    bench/train_memory.py measures both)."""
    import torch.nn.functional as F

    if isinstance(head, HeadInputs) and mode == "chunked":
        return linear_cross_entropy(head.hidden, head.weight, head.bias, labels, ignore_index,
                                    chunk_rows(head.weight.shape[0], chunk_bytes))
    if mode not in ("chunked", "full"):
        raise ValueError(f"unknown caption loss mode {mode!r}")
    logits = head.logits() if isinstance(head, HeadInputs) else head
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=ignore_index)


def linear_cross_entropy(hidden: "torch.Tensor", weight: "torch.Tensor",
                         bias: Optional["torch.Tensor"], labels: "torch.Tensor",
                         ignore_index: int = -100, rows: int = 1024) -> "torch.Tensor":
    """`F.cross_entropy(F.linear(hidden, weight, bias).float().flatten(0, -2), labels.flatten(),
    ignore_index=ignore_index)`, `rows` rows of logits at a time. Under autocast the matmuls
    run in the autocast dtype, as `F.linear` would."""
    import torch

    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    return _function().apply(hidden, weight, bias, labels, ignore_index, rows, dtype, need_grad)


_FUNCTION = None


def _function():
    """The autograd.Function, built on first use (torch is imported lazily)."""
    global _FUNCTION
    if _FUNCTION is not None:
        return _FUNCTION
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, labels, ignore_index, rows, dtype, need_grad):
            with torch.autocast(hidden.device.type, enabled=False):
                out = _forward(hidden, weight, bias, labels, ignore_index, rows, dtype,
                               need_grad)
            loss, ctx.grads = out[0], out[1:]
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            if ctx.grads is None:  # freed by the first backward, like autograd's saved tensors
                raise RuntimeError("linear_cross_entropy: backward through the graph a "
                                   "second time is not supported")
            grad_hidden, grad_weight, grad_bias = ctx.grads
            ctx.grads = None
            scale = lambda g: None if g is None else g * grad_loss.to(g.dtype)  # noqa: E731
            return (scale(grad_hidden), scale(grad_weight), scale(grad_bias),
                    None, None, None, None, None)

    _FUNCTION = LinearCrossEntropy
    return _FUNCTION


def _forward(hidden, weight, bias, labels, ignore_index: int, rows: int, dtype, need_grad: bool):
    """(loss, d loss/d hidden, d loss/d weight, d loss/d bias); gradients None when not
    needed. Weight and bias gradients are summed in float32 over the chunks."""
    import torch

    shape = hidden.shape
    h2 = hidden.reshape(-1, shape[-1])
    y = labels.reshape(-1)
    valid = y != ignore_index
    count = valid.sum().to(torch.float32)  # 0 targets: nan, as F.cross_entropy gives
    w = weight.to(dtype)
    b = None if bias is None else bias.to(torch.float32)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty_like(h2) if need_grad and hidden.requires_grad else None
    grad_w = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
              if need_grad and weight.requires_grad else None)
    grad_b = (torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
              if need_grad and bias is not None and bias.requires_grad else None)
    for start in range(0, h2.shape[0], rows):
        h = h2[start:start + rows].to(dtype)
        target, keep = y[start:start + rows], valid[start:start + rows]
        logits = (h @ w.T).float()
        if b is not None:
            logits += b
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
        total += torch.where(keep, lse - picked, torch.zeros_like(lse)).sum()
        if not need_grad:
            continue
        # In place: logits -> softmax -> (softmax - one-hot) / targets, 0 on ignored rows.
        grad = logits.sub_(lse.unsqueeze(1)).exp_()
        grad.scatter_add_(1, target.clamp(min=0).unsqueeze(1),
                          -torch.ones_like(picked).unsqueeze(1))
        grad.mul_((keep.to(torch.float32) / count).unsqueeze(1))
        if grad_b is not None:
            grad_b += grad.sum(0)
        grad = grad.to(dtype)
        if grad_h is not None:
            grad_h[start:start + rows] = (grad @ w).to(grad_h.dtype)
        if grad_w is not None:
            grad_w += (grad.T @ h).float()
    loss = total / count
    return (loss, None if grad_h is None else grad_h.reshape(shape),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype))
