#!/usr/bin/env bash
# The self-play lab's leaderboard (experiments/selfplay_lab/README.md): seven data-free and data arms, three
# seeds each, on the shipped toy world, with 95% t-intervals over seeds.
#   experiments/selfplay_lab/run.sh                 # train, evaluate the base, report (see the README for the time)
#   experiments/selfplay_lab/run.sh train           # one stage: train | eval | report
#   SEEDS=0,1,2,3,4 experiments/selfplay_lab/run.sh # more seeds
#   ARMS=lsp_zero,rzero experiments/selfplay_lab/run.sh train   # some arms only
# Extra Hydra overrides for every training job go in TRAIN_ARGS (e.g. TRAIN_ARGS="trainer.max_steps=10"), for
# the base model's evaluation in EVAL_ARGS; EXPERIMENT and OUT name the MLflow experiment and the results folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
SEEDS=${SEEDS:-0,1,2}
JOBS=${JOBS:-2}
TRAIN_ARGS=${TRAIN_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}     # extra overrides for the base model's evaluation
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
    win_rate.enabled=false perplexity.enabled=false diversity=false $EVAL_ARGS
}

report() {
  # Held-out results against the base, LSP-Zero and data RL (Welch intervals of the differences),
  # and the training signals (the proxy beside the truth, pseudo-labels, query diversity) without a baseline.
  local heldout="eval/accuracy,eval/accuracy/one_op,eval/accuracy/two_op,eval/accuracy/precedence"
  heldout="$heldout,eval/accuracy/chain,eval/accuracy/sign,eval/accuracy/unflawed,eval/pass_at_8"
  local signals="train/solver/reward,train/solver/true_accuracy,train/pseudo_label/accuracy"
  signals="$signals,train/pseudo_label/rewarded_true_accuracy,train/query_valid_frac,train/collapse/distinct_2"
  signals="$signals,train/collapse/self_bleu,train/collapse/seen_before_frac,train/queries/chain_frac"
  local signal_percent="train/solver/reward,train/solver/true_accuracy,train/pseudo_label/accuracy"
  signal_percent="$signal_percent,train/pseudo_label/rewarded_true_accuracy,train/query_valid_frac"
  signal_percent="$signal_percent,train/collapse/seen_before_frac,train/queries/chain_frac"
  local order="base,data_rl,lsp_zero,lsp,lsp_learnability,rzero,lsp_zero_vote,lsp_zero_rae"
  local curves="eval/accuracy,eval/accuracy/chain,eval/accuracy/precedence,train/query_valid_frac"
  curves="$curves,train/pseudo_label/accuracy,train/collapse/distinct_2"
  local common="experiment_names=[$EXPERIMENT] group_by=[tags.arm] order=[$order]"
  for baseline in base lsp_zero data_rl; do
    $BIN/lsp-report $common baseline=$baseline "metrics=[$heldout]" "percent=[$heldout]" curves=[] \
      output_dir=$OUT/heldout_vs_$baseline
  done
  $BIN/lsp-report $common "metrics=[$signals]" "percent=[$signal_percent]" "curves=[$curves]" output_dir=$OUT/signals
  $BIN/python experiments/selfplay_lab/pseudo_labels.py --experiment $EXPERIMENT --output $OUT/pseudo_labels.md
}

case $stage in
  train) train ;;
  eval) evaluate ;;
  report) report ;;
  all) start=$(date +%s); train; evaluate; report; echo "self-play lab: $(( $(date +%s) - start )) s" ;;
  *) echo "usage: $0 [all|train|eval|report]" >&2; exit 2 ;;
esac
