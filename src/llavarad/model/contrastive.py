"""The stage-1 contrastive loss: symmetric InfoNCE over the *global* batch.

Embeddings are all-gathered across processes with gradients (:func:`gather_with_grad`), and each
process's share of the loss is weighted so that the mean over processes, which is what DDP's
gradient averaging optimises, equals the loss of one big ``N x N`` batch exactly.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["contrastive_loss", "gather_with_grad"]


def gather_with_grad(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather ``(b_r, E)`` features from every process, keeping gradients; sizes may differ.

    Returns the ``(sum_r b_r, E)`` concatenation in rank order and this rank's row offset. Single
    process (or no process group): returns ``local`` unchanged and offset 0. The backward of the
    gather sums the gradient of every rank's loss into the local rows, which is what makes the
    global-batch loss exact under DDP's gradient averaging (see :func:`contrastive_loss`).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local, 0
    from torch.distributed.nn.functional import all_gather

    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([local.shape[0]], device=local.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_l = [int(s.item()) for s in sizes]
    biggest = max(sizes_l)
    padded = local
    if local.shape[0] < biggest:  # all_gather needs equal shapes: pad, gather, cut the padding off
        padded = torch.cat([local, local.new_zeros(biggest - local.shape[0], *local.shape[1:])])
    with warnings.catch_warnings():
        # torch 2.13 marks this autograd-aware gather deprecated in favour of a private API; it is
        # still the public way to gather with gradients, so keep it and keep the log readable.
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded)
    full = torch.cat([p[:n] for p, n in zip(parts, sizes_l)])
    return full, sum(sizes_l[:rank])


def _local_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, all_img: torch.Tensor, all_txt: torch.Tensor,
                offset: int, world: int, scale: torch.Tensor):
    """This process's share of the global loss: its ``b`` rows against all ``N`` gathered columns,
    weighted ``world / (2N)`` so that the mean over processes is the global-batch loss."""
    n_global = all_img.shape[0]
    b = image_emb.shape[0]
    labels = torch.arange(offset, offset + b, device=image_emb.device)
    logits_i2t = scale * image_emb.float() @ all_txt.float().t()  # (b, N): my images vs every report
    logits_t2i = scale * text_emb.float() @ all_img.float().t()  # (b, N): my reports vs every image
    ce = torch.nn.functional.cross_entropy
    total = ce(logits_i2t, labels, reduction="sum") + ce(logits_t2i, labels, reduction="sum")
    return total * (world / (2.0 * n_global)), logits_i2t, logits_t2i, labels


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
                     gather: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE over the global batch.

    Args:
        image_emb, text_emb: this process's L2-normalised embeddings, shape ``(b, E)``; row ``i``
            of each is a positive pair.
        scale: ``exp(logit_scale)``, a scalar tensor.
        gather: gather the other processes' embeddings (with gradients) as extra negatives.

    Returns:
        ``(loss, stats)``. With ``N`` pairs over all processes and ``W`` processes, this process's
        loss is ``W / (2N) * sum over its rows of (CE_image_to_text + CE_text_to_image)``, so the
        mean over processes (what DDP's gradient averaging optimises) is exactly the loss of one
        big ``N x N`` batch, even when processes hold different numbers of pairs. On one process
        it is the usual ``(CE_i2t + CE_t2i) / 2`` averaged over the batch. ``stats`` has the
        global batch size and in-batch top-1 accuracies of this process's rows.
    """
    import torch.distributed as dist

    world = dist.get_world_size() if gather and dist.is_available() and dist.is_initialized() else 1
    if gather and world > 1:
        all_img, offset = gather_with_grad(image_emb)
        all_txt, _ = gather_with_grad(text_emb)
    else:
        all_img, all_txt, offset = image_emb, text_emb, 0
    loss, logits_i2t, logits_t2i, labels = _local_loss(image_emb, text_emb, all_img, all_txt, offset, world, scale)
    n_global = all_img.shape[0]
    b = image_emb.shape[0]
    with torch.no_grad():
        acc_i2t = (logits_i2t.argmax(-1) == labels).float().mean().item() if b else float("nan")
        acc_t2i = (logits_t2i.argmax(-1) == labels).float().mean().item() if b else float("nan")
    return loss, {"global_batch": float(n_global), "acc_i2t": acc_i2t, "acc_t2i": acc_t2i}
