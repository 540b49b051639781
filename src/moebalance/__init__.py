"""moebalance: auxiliary-loss-free vs auxiliary-loss MoE load balancing, as a reproducible study.

Tensor and array names end in the letters of their dimensions (``counts_LE``: MoE layers x
experts), one legend for the whole package:

    B  sequences of a batch             S  tokens per sequence (sequence length)
    T  tokens, flattened (T = B*S)      M  tokens of one chunk of the LM-head loss
    H  hidden size                      V  vocabulary
    L  MoE layers                       E  routed experts
    K  experts chosen per token         P  expert groups of group-limited routing
    N  logged training steps            R  bootstrap replicates
    D  held-out domains                 C  token classes (keyword, identifier, ...)
    W  windows of held-out text         U  distinct token ids seen
    G  groups of a joint count table (a domain, a token class or a token id)
    Q  bins of a score-margin histogram (Quantile Balancing)

Routing counts are ``counts_*``: assignments of tokens to experts (a token routed to its
top K experts adds 1 to each of them).
"""

__version__ = "0.1.0"
