#!/usr/bin/env bash
# The toy paper table, every arm in order (experiments/toy_paper_table/README.md):
#   experiments/toy_paper_table/run.sh                 # train, evaluate, report (see the README for the time)
#   experiments/toy_paper_table/run.sh train           # one stage: train | eval | report
#   SEEDS=0,1,2,3,4 experiments/toy_paper_table/run.sh # more seeds
#   ARMS=lsp,lsp_zero,rl,lsp_learnability experiments/toy_paper_table/run.sh   # more stage-1 arms
# Extra Hydra overrides for every training job go in TRAIN_ARGS (e.g. TRAIN_ARGS="trainer.max_steps=10").
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
SEEDS=${SEEDS:-0,1,2}
JOBS=${JOBS:-2}
TRAIN_ARGS=${TRAIN_ARGS:-}
ARMS=${ARMS:-lsp,lsp_zero,rl}   # stage 1 (the paper's rows; lsp_learnability is another)
EVAL_ARGS=${EVAL_ARGS:-}
OUT=experiments/toy_paper_table
stage=${1:-all}
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false

train() {
  # Stage 1, from the base: the self-play arms and the data baseline (longest first, JOBS at a time).
  $BIN/lsp-train -m hydra/launcher=local_parallel hydra.launcher.n_jobs=$JOBS trainer.num_threads=1 \
    "experiment=$(echo "$ARMS" | sed 's#\([^,]*\)#toy_table/\1#g')" seed=$SEEDS $TRAIN_ARGS
  # Stage 2, + RL: GRPO from the self-play run of the same seed (init_from in the configs).
  $BIN/lsp-train -m hydra/launcher=local_parallel hydra.launcher.n_jobs=$JOBS trainer.num_threads=1 \
    experiment=toy_table/lsp_rl,toy_table/lsp_zero_rl seed=$SEEDS $TRAIN_ARGS
}

evaluate() {
  # The base model once (held-out accuracy and pass@8 as the runs measured them at their start),
  # then every finished run of the table: win rate vs base, perplexity, BLEU/ROUGE, query diversity
  # (its held-out accuracy is already logged by training at its last step).
  $BIN/lsp-eval +tags.arm=base +tags.table=toy_paper_table logger.experiment_name=toy-paper-table \
    heldout.samples=8 $EVAL_ARGS
  $BIN/lsp-eval "run=\"filter:tags.table = 'toy_paper_table' and tags.arm != 'base'\"" heldout.enabled=false $EVAL_ARGS
}

report() {
  $BIN/lsp-report experiment_names=[toy-paper-table] group_by=[tags.arm] baseline=rl \
    "metrics=[eval/accuracy,eval/accuracy/precedence,eval/accuracy/chain,eval/accuracy/sign,eval/accuracy/unflawed,eval/pass_at_8,eval/win_rate,eval/perplexity,train/queries/chain_frac,train/tokens/solver,train/tokens/challenger]" \
    "curves=[eval/accuracy,eval/accuracy/chain,eval/accuracy/precedence,train/queries/chain_frac,train/query_valid_frac]" \
    "percent=[eval/accuracy,eval/accuracy/precedence,eval/accuracy/chain,eval/accuracy/sign,eval/accuracy/unflawed,eval/pass_at_8,eval/win_rate,train/queries/chain_frac]" \
    "order=[base,rl,lsp_zero,lsp,lsp_learnability,lsp_zero_rl,lsp_rl]" output_dir=$OUT/results
}

case $stage in
  train) train ;;
  eval) evaluate ;;
  report) report ;;
  all) start=$(date +%s); train; evaluate; report; echo "toy paper table: $(( $(date +%s) - start )) s" ;;
  *) echo "usage: $0 [all|train|eval|report]" >&2; exit 2 ;;
esac
