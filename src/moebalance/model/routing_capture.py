"""Routing capture: which top-K experts a loaded model's routers pick for each token of
some held-out sequences, and the model's next-token NLL of each token, changing nothing.

The model runs in eval mode under ``torch.inference_mode`` (the routers count only in
training forwards, so neither counters nor biases change; :func:`route` checks the
biases); forward hooks on every MoE layer's ``mlp.gate`` read the selected top-K expert
indices of each token.

It lives in model/ because the pretraining stage's final validation measures held-out
balance with it (moebalance.balance), as the utilization stage does: training must not
import analysis.

Shapes (see :mod:`moebalance.model.balancing`): L MoE layers, K experts per token,
B sequences of S tokens, T tokens, V vocabulary.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from moebalance.model.router import moe_layer_indices, routers_of


def route(model, sequences: list[np.ndarray], eot_id: int, pad_id: int,
          batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Top-K expert ids of every token of ``sequences``, (T, L, K), and its next-token NLL
    in nats, (T,), predicted from the tokens before it (the first from an end-of-text
    prefix, as in training); T = total tokens in sequence order.

    Sequences run right-padded (causal attention: real positions never see the padding);
    the end-of-text prefix and the padding are dropped.
    """
    bias_before = [r.e_score_correction_bias.clone() for r in routers_of(model)]
    model.eval()
    picks, nll = [], []
    with torch.inference_mode(), _top_k_hooks(model, moe_layer_indices(model)) as captured:
        for b in range(0, len(sequences), batch_size):
            ids_BS, keep_BS = _padded_batch(sequences[b:b + batch_size], eot_id, pad_id)
            for slot in captured:
                slot.clear()
            logits_BSV = model(input_ids=ids_BS.to(model.device), use_cache=False).logits
            keep = keep_BS.reshape(-1)
            picks.append(torch.stack([c[0][keep] for c in captured], dim=1).numpy())
            nll.append(_next_token_nll(logits_BSV, ids_BS, keep_BS))
    for router, before in zip(routers_of(model), bias_before, strict=True):
        if not torch.equal(router.e_score_correction_bias, before):
            raise RuntimeError("a router bias changed in an eval forward")
    return np.concatenate(picks).astype(np.int16), np.concatenate(nll).astype(np.float64)


def route_windows(model, input_ids_WS: np.ndarray, batch_size: int = 16
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Top-K expert ids of every routed token of equal-length windows, (W*S', L, K), and
    the NLL in nats of every next token, (W*S',), S' = S - 1, as a training forward sees a
    window of S tokens: positions 0..S-2 are routed and predict tokens 1..S-1. Windows run
    in batches of ``batch_size`` (no padding)."""
    model.eval()
    picks, nll = [], []
    with torch.inference_mode(), _top_k_hooks(model, moe_layer_indices(model)) as captured:
        for b in range(0, len(input_ids_WS), batch_size):
            ids_BS = torch.as_tensor(np.asarray(input_ids_WS[b:b + batch_size], dtype=np.int64))
            for slot in captured:
                slot.clear()
            inputs_BS = ids_BS[:, :-1].to(model.device)
            logits_BSV = model(input_ids=inputs_BS, use_cache=False).logits
            picks.append(torch.stack([c[0] for c in captured], dim=1).numpy())
            logp_BSV = logits_BSV.float().log_softmax(-1).cpu()
            nll.append(-logp_BSV.gather(-1, ids_BS[:, 1:, None])[..., 0].reshape(-1).numpy())
    return np.concatenate(picks).astype(np.int16), np.concatenate(nll).astype(np.float64)


@contextmanager
def routing_bias(model, bias_LE: np.ndarray):
    """Route with ``bias_LE`` (one row per MoE layer) in every router's bias buffer, the
    model's own bias restored on exit."""
    routers = routers_of(model)
    saved = [r.e_score_correction_bias.clone() for r in routers]
    try:
        with torch.no_grad():
            for router, row in zip(routers, bias_LE, strict=True):
                router.e_score_correction_bias.copy_(torch.as_tensor(row))
        yield model
    finally:
        with torch.no_grad():
            for router, before in zip(routers, saved, strict=True):
                router.e_score_correction_bias.copy_(before)


@contextmanager
def _top_k_hooks(model, layers: list[int]):
    """Per MoE layer, a list that each forward of its router appends its (B*S, K) top-K
    expert indices to; the hooks are removed on exit."""
    gates = [model.model.layers[i].mlp.gate for i in layers]
    captured: list[list] = [[] for _ in gates]

    def hook(slot):
        def save(_module, _inputs, output):
            captured[slot].append(output[2].detach().cpu())  # (B*S, K) top-K indices
        return save

    handles = [gate.register_forward_hook(hook(i)) for i, gate in enumerate(gates)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _padded_batch(sequences: list[np.ndarray], eot_id: int, pad_id: int):
    """(B, S) input ids, each row end-of-text then the sequence then padding, and the (B, S)
    mask of the sequence's own tokens."""
    width = 1 + max(len(ids) for ids in sequences)
    ids_BS = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    keep_BS = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, ids in enumerate(sequences):
        ids_BS[row, 0] = eot_id
        ids_BS[row, 1:1 + len(ids)] = torch.from_numpy(ids)
        keep_BS[row, 1:1 + len(ids)] = True
    return ids_BS, keep_BS


def _next_token_nll(logits_BSV, ids_BS, keep_BS) -> np.ndarray:
    """NLL (nats) of every kept token, predicted from the position before it."""
    # position j predicts token j + 1: the NLL of every kept (non-prefix) token
    logp_BSV = logits_BSV[:, :-1].float().log_softmax(-1).cpu()
    nll_BS = -logp_BSV.gather(-1, ids_BS[:, 1:, None])[..., 0]
    return nll_BS[keep_BS[:, 1:]].numpy()
