#!/usr/bin/env bash
# The self-play lab's leaderboard (experiments/selfplay_lab/README.md): seven data-free and data arms, three
# seeds each, on the shipped toy world, with 95% t-intervals over seeds.
#   experiments/selfplay_lab/run.sh                 # train, evaluate the base, report (see the README for the time)
#   experiments/selfplay_lab/run.sh train           # one stage: train | eval | report
#   SEEDS=0,1,2,3,4 experiments/selfplay_lab/run.sh # more seeds
#   ARMS=lsp_zero,rzero experiments/selfplay_lab/run.sh train   # some arms only
# Extra Hydra overrides for every training job go in TRAIN_ARGS (e.g. TRAIN_ARGS="trainer.max_steps=10").
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
SEEDS=${SEEDS:-0,1,2}
JOBS=${JOBS:-2}
TRAIN_ARGS=${TRAIN_ARGS:-}
# The arms with the judge (slowest) first, so the two job slots finish together.
ARMS=${ARMS:-lsp,lsp_learnability,lsp_zero,lsp_zero_vote,rzero,lsp_zero_rae,data_rl}
EXPERIMENT=${EXPERIMENT:-selfplay-lab}
OUT=${OUT:-experiments/selfplay_lab/results}
stage=${1:-all}
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false

train() {
  $BIN/lsp-train -m hydra/launcher=local_parallel hydra.launcher.n_jobs=$JOBS trainer.num_threads=1 \
    "experiment=$(echo "$ARMS" | sed 's#\([^,]*\)#lab/\1#g')" seed=$SEEDS logger.experiment_name=$EXPERIMENT $TRAIN_ARGS
}

evaluate() {
  # The base model once, as a run of its own (arm=base): held-out greedy accuracy per slice and pass@8.
  $BIN/lsp-eval +tags.arm=base +tags.table=selfplay_lab logger.experiment_name=$EXPERIMENT heldout.samples=8 \
    win_rate.enabled=false perplexity.enabled=false diversity=false
}

report() {
  local metrics="eval/accuracy,eval/accuracy/one_op,eval/accuracy/two_op,eval/accuracy/precedence,eval/accuracy/chain"
  metrics="$metrics,eval/accuracy/sign,eval/accuracy/unflawed,eval/pass_at_8,train/solver/true_accuracy"
  metrics="$metrics,train/solver/reward,train/pseudo_label/accuracy,train/pseudo_label/rewarded_true_accuracy"
  metrics="$metrics,train/query_valid_frac,train/collapse/distinct_2,train/collapse/self_bleu"
  metrics="$metrics,train/collapse/seen_before_frac,train/queries/chain_frac"
  local percent="eval/accuracy,eval/accuracy/one_op,eval/accuracy/two_op,eval/accuracy/precedence,eval/accuracy/chain"
  percent="$percent,eval/accuracy/sign,eval/accuracy/unflawed,eval/pass_at_8,train/solver/true_accuracy"
  percent="$percent,train/solver/reward,train/pseudo_label/accuracy,train/pseudo_label/rewarded_true_accuracy"
  percent="$percent,train/query_valid_frac,train/collapse/seen_before_frac,train/queries/chain_frac"
  local order="base,data_rl,lsp_zero,lsp,lsp_learnability,rzero,lsp_zero_vote,lsp_zero_rae"
  local curves="eval/accuracy,eval/accuracy/chain,eval/accuracy/precedence,train/query_valid_frac"
  curves="$curves,train/pseudo_label/accuracy,train/collapse/distinct_2"
  for baseline in base lsp_zero; do
    $BIN/lsp-report experiment_names=[$EXPERIMENT] group_by=[tags.arm] baseline=$baseline \
      "metrics=[$metrics]" "percent=[$percent]" "order=[$order]" "curves=[$curves]" output_dir=$OUT/vs_$baseline
  done
  $BIN/python experiments/selfplay_lab/pseudo_labels.py --experiment $EXPERIMENT --output $OUT/pseudo_labels.md
}

case $stage in
  train) train ;;
  eval) evaluate ;;
  report) report ;;
  all) start=$(date +%s); train; evaluate; report; echo "self-play lab: $(( $(date +%s) - start )) s" ;;
  *) echo "usage: $0 [all|train|eval|report]" >&2; exit 2 ;;
esac
