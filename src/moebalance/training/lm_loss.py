"""The training forward: the model, its next-token cross-entropy and the balancing loss terms.

One module, so that ``torch.compile`` (and DistributedDataParallel) see the whole forward
of a training micro-batch as one graph: backbone, counting routers, LM head, cross-entropy
and the strategies' loss terms. The bias update after the optimizer step stays outside.

The LM head and its cross-entropy can run in chunks of tokens (``chunk_tokens``), so that
the full (T, V) logits are never materialised: with hidden 128 and an 8,192-token
vocabulary they are most of the step's FLOPs and its largest activation. On the study's
shared 2-core CPU the measurements disagree (benchmarks/lm_head_ce.py, T=2,048, fp32, 1
thread, fastest of 8): 500 ms whole vs 576 ms in chunks of 256 tokens in one run, 1,190 vs
920 ms in another beside a competing job; so it stays off by default (chunk_tokens 0). It
is there for larger vocabularies and GPU memory, where the (T, V) logits dominate.
No library does this on CPU (Liger-Kernel's fused linear cross-entropy and Apple's
cut-cross-entropy are Triton kernels for GPUs), hence the small autograd function below.

Dimension letters: the legend in :mod:`moebalance` (T tokens, M tokens of a chunk, H hidden
size, V vocabulary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moebalance.training.batches import IGNORE_INDEX


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_t CE(h_t W^T, y_t) over the unmasked targets, chunk by chunk of tokens.

    The gradient is computed in the forward, chunk by chunk (as Wijmans et al. 2024,
    "Cut Your Losses in Large-Vocabulary Language Models", arXiv 2411.09009, §3, and
    Liger-Kernel's fused linear cross-entropy do), so only one (chunk, V) block of logits
    exists at a time; backward only scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, h_TH, weight_VH, labels_T, chunk_tokens: int,
                compute_dtype: torch.dtype | None):
        dtype = compute_dtype or h_TH.dtype
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w_VH = weight_VH.to(dtype)
        total = h_TH.new_zeros((), dtype=torch.float32)
        grad_h_chunks, grad_w_VH = [], torch.zeros_like(weight_VH, dtype=torch.float32)
        for start in range(0, h_TH.shape[0], chunk_tokens):
            h_MH = h_TH[start:start + chunk_tokens].to(dtype)
            y_M = labels_T[start:start + chunk_tokens]
            valid_M = y_M != IGNORE_INDEX
            target_M1 = torch.where(valid_M, y_M, 0).unsqueeze(1)
            logits_MV = (h_MH @ w_VH.T).float()
            lse_M = torch.logsumexp(logits_MV, dim=-1)
            # cross-entropy of softmax: CE_t = logsumexp_v z_{t,v} - z_{t,y_t}
            ce_M = lse_M - logits_MV.gather(1, target_M1).squeeze(1)
            total = total + torch.where(valid_M, ce_M, 0.0).sum()
            if need_grad:
                # Bishop, PRML (2006) Eq. 4.109: dCE/dz_{t,v} = softmax(z_t)_v - 1[v = y_t]
                grad_MV = torch.exp(logits_MV - lse_M.unsqueeze(1))
                grad_MV = grad_MV - F.one_hot(target_M1.squeeze(1), grad_MV.shape[1])
                grad_MV = (grad_MV * valid_M.unsqueeze(1)).to(dtype)
                grad_h_chunks.append(grad_MV @ w_VH)              # dz/dh = W
                grad_w_VH = grad_w_VH + (grad_MV.T @ h_MH).float()  # dz/dW = h
        if need_grad:
            ctx.save_for_backward(torch.cat(grad_h_chunks).to(h_TH.dtype),
                                  grad_w_VH.to(weight_VH.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h_TH, grad_w_VH = ctx.saved_tensors
        return grad_h_TH * grad_total, grad_w_VH * grad_total, None, None, None


def linear_cross_entropy_sum(h_TH: torch.Tensor, weight_VH: torch.Tensor, labels_T: torch.Tensor,
                             chunk_tokens: int = 0,
                             compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Summed cross-entropy of the logits ``h W^T`` against ``labels`` (-100: masked), in fp32.

    ``chunk_tokens`` 0: the plain way (whole fp32 logits); > 0: chunked, as above.
    ``compute_dtype``: the dtype of the matmuls (bf16 under autocast); softmax is fp32.
    """
    if chunk_tokens <= 0:
        logits_TV = F.linear(h_TH.to(compute_dtype or h_TH.dtype),
                             weight_VH.to(compute_dtype or h_TH.dtype))
        return F.cross_entropy(logits_TV.float(), labels_T, ignore_index=IGNORE_INDEX,
                               reduction="sum")
    return _ChunkedLinearCrossEntropy.apply(h_TH, weight_VH, labels_T, chunk_tokens,
                                            compute_dtype)


class TrainingForward(torch.nn.Module):
    """``forward(input_ids, labels, ...)`` -> (summed CE, {loss term name: term}).

    Wraps a ``*ForCausalLM`` model (its backbone ``.model`` and its bias-free ``.lm_head``);
    the routers count and record as the backbone runs, and the strategies read the records
    and ``step_counts()``, the trainer's (L, E) counts of the optimizer step so far.
    """

    def __init__(self, model, balancing, routers, chunk_tokens: int, step_counts) -> None:
        super().__init__()
        if model.lm_head.bias is not None:
            raise ValueError("TrainingForward expects an LM head without bias")
        self.model = model
        self.balancing, self.routers = balancing, list(routers)
        self.chunk_tokens, self.step_counts = chunk_tokens, step_counts

    def forward(self, input_ids, labels, **inputs):
        hidden_BSH = self.model.model(input_ids=input_ids, use_cache=False,
                                      **inputs).last_hidden_state
        dtype = torch.get_autocast_dtype(hidden_BSH.device.type) \
            if torch.is_autocast_enabled(hidden_BSH.device.type) else None
        ce_sum = linear_cross_entropy_sum(hidden_BSH.flatten(0, 1), self.model.lm_head.weight,
                                          labels.flatten(), self.chunk_tokens, dtype)
        recording = self.model.training and torch.is_grad_enabled()
        terms = self.balancing.losses([r.record for r in self.routers],
                                      self.step_counts) if recording else {}
        return ce_sum, terms
