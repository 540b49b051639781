"""LM head + cross-entropy, forward and backward: whole logits vs chunks of tokens.

    python benchmarks/lm_head_ce.py [--tokens 2048] [--hidden 128] [--vocab 8192]
                                    [--chunks 0 256 512 1024] [--threads 1] [--repeats 8]

Times ``moebalance.training.lm_loss.linear_cross_entropy_sum`` (chunk 0: the whole fp32
logits) on random inputs, interleaving the chunk sizes so that drifting machine load hits
all alike, and prints the fastest and median run of each with its ratio to chunk 0.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moebalance.training.lm_loss import linear_cross_entropy_sum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per micro-batch")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size")
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 256, 512, 1024],
                        help="chunk sizes in tokens (0: whole logits)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=8, help="timed runs per chunk size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h_TD = torch.randn(args.tokens, args.hidden) * 0.1
    w_VD = torch.randn(args.vocab, args.hidden) * 0.02
    labels_T = torch.randint(0, args.vocab, (args.tokens,))

    def run(chunk: int) -> float:
        h, w = h_TD.clone().requires_grad_(), w_VD.clone().requires_grad_()
        started = time.perf_counter()
        linear_cross_entropy_sum(h, w, labels_T, chunk).backward()
        return time.perf_counter() - started

    for chunk in args.chunks:
        run(chunk)  # warm up
    times: dict[int, list[float]] = {chunk: [] for chunk in args.chunks}
    for _ in range(args.repeats):
        for chunk in args.chunks:
            times[chunk].append(run(chunk))
    base = min(times[args.chunks[0]])
    print(f"T={args.tokens} D={args.hidden} V={args.vocab} fp32, {args.threads} thread(s)")
    for chunk, ts in times.items():
        print(f"chunk {chunk:6d}: fastest {1e3 * min(ts):7.1f} ms, median "
              f"{1e3 * statistics.median(ts):7.1f} ms, fastest vs chunk {args.chunks[0]}: "
              f"{min(ts) / base:.2f}x")


if __name__ == "__main__":
    main()
