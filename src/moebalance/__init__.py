"""moebalance: auxiliary-loss-free vs auxiliary-loss MoE load balancing, as a reproducible study."""

__version__ = "0.1.0"
