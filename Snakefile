# The moebalance study: how DeepSeek-V3's auxiliary-loss-free load balancing changes
# expert-utilization diversity and HumanEval accuracy against auxiliary-loss balancing.
# Stages live in workflow/rules/ (in pipeline order: each file uses names of the ones
# before it); `snakemake --workflow-profile workflow/profiles/default` runs the study.

configfile: "config/config.yaml"


# The front page of `snakemake --report`: what the study is and how to read its answer.
report: "workflow/report/study.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/frontier.smk"


rule all:
    default_target: True
    input:
        DATA_TARGETS,
        PRETRAIN_TARGETS,
        EVALUATE_TARGETS,
        ANALYSIS_TARGETS,
