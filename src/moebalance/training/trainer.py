"""The training loop, shared by pretraining and SFT.

One optimizer step = ``grad_accum`` micro-batches on each of ``world`` ranks. The
routers count the tokens of every training forward; after the optimizer step the
trainer sums the counts over ranks, records them with the bias that routed the
step, asks the balancing strategies for the next bias and writes it into the routers
(the router only counts; the strategies decide; only the trainer all-reduces and
writes). The batch source is pluggable and labels of -100 are masked.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from moebalance.config import ExecutionSettings, TrainSettings
from moebalance.determinism import deterministic_kernels
from moebalance.maxvio import max_violation
from moebalance.model.balancing import Balancing, StepCounts
from moebalance.model.router import moe_layer_indices, routers_of
from moebalance.training.batches import IGNORE_INDEX, BatchSource
from moebalance.training.checkpoint import Checkpoints
from moebalance.training.lm_loss import TrainingForward
from moebalance.training.telemetry import Telemetry

log = logging.getLogger(__name__)
DEFAULT_EXECUTION = ExecutionSettings()


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_optimizer(model: torch.nn.Module, s: TrainSettings, fused: bool) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, embeddings and biases (the router bias is a buffer),
    nor on the router weights when ``router_weight_decay`` is false."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "embed_tokens" in name or "norm" in name or (
            not s.router_weight_decay and name.endswith("mlp.gate.weight"))
        (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": s.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), fused=fused or None)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
    deterministic_kernels(device)
    return device


class Trainer:
    def __init__(self, model, balancing: Balancing, settings: TrainSettings,
                 train_batches: BatchSource, val_batches: BatchSource | None = None,
                 checkpoint_dir: str | None = None, fingerprint: str = "",
                 execution: ExecutionSettings = DEFAULT_EXECUTION,
                 on_log: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.s, self.execution = settings, execution
        conflicts = balancing.compile_conflicts() if settings.compile else []
        if conflicts:
            raise ValueError("train.compile cannot combine "
                             + ", ".join(f"{first} with {second}" for first, second in conflicts))
        if execution.threads and settings.device != "cuda":
            torch.set_num_threads(execution.threads)
        self.device = resolve_device(settings.device)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        use_bf16 = settings.precision == "bf16" or (
            settings.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.model = model.to(self.device)
        self.model.train()
        if settings.activation_checkpointing:
            # non-reentrant: the router sees the recompute inside backward and does not count twice
            self.model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        self.routers = routers_of(self.model)
        self.layers = moe_layer_indices(self.model)
        self.balancing = balancing
        self.margins = balancing.margin_histogram()
        for router in self.routers if self.margins else []:
            router.track_margins(*self.margins)
        self.train_batches, self.val_batches = train_batches, val_batches
        self.optimizer = build_optimizer(self.model, settings, fused=self.device.type == "cuda")
        # model + cross-entropy + balancing terms: one module, so compile and DDP see it whole
        self.training_forward = TrainingForward(self.model, balancing, self.routers,
                                                settings.loss_chunk_tokens, self._step_counts)
        self.ddp, self.forward_loss = self._wrap(self.training_forward)
        self.checkpoints = Checkpoints(checkpoint_dir) if checkpoint_dir else None
        self.fingerprint = fingerprint  # a checkpoint of other settings or code is not resumed
        self.telemetry = Telemetry(self.layers)
        self.step = 0
        self.progress, self.on_log = execution.progress and self.rank == 0, on_log
        self._logged = 0
        self.resume()

    def _wrap(self, forward: TrainingForward):
        """(the DDP wrapper or None, the forward a training step calls: DDP and/or compiled)."""
        ddp = None
        if self.world > 1:
            # counters are buffers that differ per rank until the all-reduce: never broadcast
            # them in forward (torch >= 2.13 names the option forward_sync_buffers)
            DDP = torch.nn.parallel.DistributedDataParallel
            no_sync_option = ("forward_sync_buffers" if "forward_sync_buffers"
                              in inspect.signature(DDP).parameters else "broadcast_buffers")
            ddp = DDP(forward, **{no_sync_option: False})
        wrapped = forward if ddp is None else ddp
        return ddp, torch.compile(wrapped) if self.s.compile else wrapped

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "fingerprint": self.fingerprint,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "telemetry": self.telemetry.state_dict(),
                "balancing": self.balancing.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.telemetry.load_state_dict(state["telemetry"])
        self.balancing.load_state_dict(state.get("balancing", {}))
        self.step = state["step"]

    def resume(self) -> None:
        path = self.checkpoints.latest() if self.checkpoints else None
        if path is None:
            return
        state = self.checkpoints.load(path)
        if state.get("fingerprint") != self.fingerprint:
            log.warning("not resuming from %s: written under other settings or code", path)
            return
        self.load_state_dict(state)
        log.info("resumed from %s at step %d", path, self.step)

    def save_checkpoint(self) -> None:
        if self.checkpoints and self.rank == 0:
            self.checkpoints.save(self.step, self.state_dict())
        if self.world > 1:
            dist.barrier()

    # ------------------------------------------------------------------ the loop

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def _step_counts(self) -> torch.Tensor:
        """(L, E) assignments of this optimizer step so far: every micro-batch, all ranks."""
        return self._all_reduce(torch.stack([r.counts_E for r in self.routers]))

    def _forward(self, batch: dict[str, torch.Tensor], forward) -> tuple[torch.Tensor, dict]:
        """Summed next-token cross-entropy of a batch and the balancing terms (training only)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._autocast():
            return forward(**batch)

    def _ce_sum(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy of a batch (eager) and its number of unmasked targets."""
        ce_sum, _ = self._forward(batch, self.training_forward)
        return ce_sum, (batch["labels"] != IGNORE_INDEX).sum().to(self.device)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step: forward/backward over the micro-batches, the optimizer step,
        then the after-step block (counts summed over ranks, bias updates, telemetry)."""
        s, step = self.s, self.step
        started = time.perf_counter()
        lr = lr_at(step, s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for router in self.routers:
            router.reset_counts()
        micro = [self.train_batches.micro_batch(step, m * self.world + self.rank)
                 for m in range(s.grad_accum)]
        n_valid = self._all_reduce(torch.tensor(
            sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro),
            dtype=torch.float32, device=self.device))
        ce_total, term_totals = self._forward_backward(micro, n_valid)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        routing = self._after_step(step)
        with torch.no_grad():
            lm_loss = float(self._all_reduce(ce_total) / n_valid)
            terms = {k: float(self._all_reduce(v) / self.world) for k, v in term_totals.items()}
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        n_tokens = int(sum(b["input_ids"].numel() for b in micro)) * self.world
        previous = self.telemetry.metrics[-1]["tokens_seen"] if self.telemetry.metrics else 0
        row = self.telemetry.record_step(
            step, lm_loss=lm_loss, terms=terms, lr=lr, grad_norm=float(grad_norm),
            gamma=self.balancing.gamma_at(step, s.steps), tokens_per_s=n_tokens / seconds,
            tokens_seen=previous + n_tokens, **routing)
        self.step += 1
        return row

    def _forward_backward(self, micro: list[dict[str, torch.Tensor]], n_valid: torch.Tensor
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Accumulate the gradients of the micro-batches; (summed cross-entropy, mean of each
        balancing term over the micro-batches)."""
        ce_total = torch.zeros((), device=self.device)
        term_totals: dict[str, torch.Tensor] = {}
        for m, batch in enumerate(micro):
            last = m == len(micro) - 1
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            with sync:
                ce_sum, terms = self._forward(batch, self.forward_loss)
                # mean over every unmasked target of the global batch; DDP averages over ranks
                loss = ce_sum * self.world / n_valid
                for name, term in terms.items():
                    loss = loss + term / self.s.grad_accum
                    term_totals[name] = (term_totals.get(name, 0.0)
                                         + term.detach() / self.s.grad_accum)
                loss.backward()
            ce_total += ce_sum.detach()
        return ce_total, term_totals

    @torch.no_grad()
    def _after_step(self, step: int) -> dict[str, torch.Tensor]:
        """After the optimizer step: the routers' counts summed over ranks, the bias that
        routed this step, then the next bias from the strategies, written into the routers
        (fp32, in place: torchtitan #1222). Returns the telemetry inputs."""
        counts_LE = self._step_counts()
        score_LE = self._all_reduce(torch.stack([r.score_sum_E for r in self.routers]))
        seen_L1 = self._all_reduce(torch.stack([r.tokens_seen for r in self.routers]))[:, None]
        overridden_L = self._all_reduce(torch.stack([r.overridden_tokens for r in self.routers]))
        bias_LE = torch.stack([r.e_score_correction_bias for r in self.routers]).clone()
        if self.balancing.moves_bias:
            counted = StepCounts(counts_LE, self._all_reduce(torch.stack(
                [r.margin_hist_EQ for r in self.routers])) if self.margins else None)
            new_bias_LE = self.balancing.new_bias(counted, bias_LE, step, self.s.steps)
            for router, bias_E in zip(self.routers, new_bias_LE, strict=True):
                router.e_score_correction_bias.copy_(bias_E)
        return {"counts_LE": counts_LE, "bias_LE": bias_LE,
                "mean_score_LE": score_LE / seen_L1.clamp_min(1),
                "override_rate_L": overridden_L / seen_L1[:, 0].clamp_min(1)}

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Mean validation loss over ``eval_batches`` fixed batches, and the MaxVio_global of
        those batches (Wang et al. 2024, Eq. 4: the expert counts of all their tokens, per MoE
        layer, averaged over layers): a fixed subset, logged as ``val_subset_maxvio`` to
        follow training; held-out balance is the balance set's (analysis.balance). Training
        counts are untouched."""
        self.model.eval()
        for router in self.routers:
            router.start_eval_counts()
        ce, n = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for i in range(self.s.eval_batches):
            ce_sum, n_valid = self._ce_sum(self.val_batches.micro_batch(0, i))
            ce, n = ce + ce_sum, n + n_valid
        for router in self.routers:
            router.stop_eval_counts()
        self.model.train()
        # every rank scores the same validation batches, as for the loss: no all-reduce
        maxvio = math.nan
        if self.routers:
            counts_LE = torch.stack([r.eval_counts_E for r in self.routers])
            maxvio = float(max_violation(counts_LE.cpu().numpy()).mean())
        return float(ce / n), maxvio

    def train(self, stop_after: int | None = None) -> Telemetry:
        """Train to ``settings.steps`` (or stop once ``stop_after`` steps are done)."""

        s = self.s
        end = s.steps if stop_after is None else min(s.steps, stop_after)
        bar = tqdm(total=s.steps, initial=self.step, desc="train", unit="step",
                   disable=not self.progress, mininterval=2.0)
        while self.step < end:
            row = self.train_step()
            done = self.step
            if self.val_batches is not None and s.eval_every and (
                    done % s.eval_every == 0 or done == s.steps):
                self.telemetry.record_val(row["step"], *self.evaluate())
            if self.checkpoints and s.snapshot_every and done % s.snapshot_every == 0 \
                    and done < s.steps and self.rank == 0:
                self.checkpoints.save_snapshot(done, self.model)
            every = self.execution.checkpoint_every
            if self.checkpoints and every and done % every == 0 and done < s.steps:
                self.save_checkpoint()
            if self.on_log and (done % self.execution.log_every == 0 or done == end):
                self.flush_log()
            bar.update(1)
            bar.set_postfix(loss=f"{row['lm_loss']:.3f}", maxvio=f"{row['maxvio_batch']:.2f}",
                            tok_s=f"{row['tokens_per_s']:.0f}")
        bar.close()
        return self.telemetry

    def flush_log(self) -> None:
        """Hand the metrics rows not yet logged to ``on_log`` (rank 0 only)."""
        rows = self.telemetry.metrics[self._logged:]
        if rows and self.rank == 0:
            self.on_log(rows)
        self._logged = len(self.telemetry.metrics)
