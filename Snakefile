# The moebalance study: how DeepSeek-V3's auxiliary-loss-free load balancing changes
# expert-utilization diversity and HumanEval accuracy against auxiliary-loss balancing.
# Stages live in workflow/rules/; the default profile (workflow/profiles/default) sets cores.

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/data.smk"


rule all:
    default_target: True
    input:
        DATA_TARGETS,
