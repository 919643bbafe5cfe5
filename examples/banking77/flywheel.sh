#!/usr/bin/env bash
# The whole flywheel on Banking77, from nothing to a promoted tuned model:
#   serve → trace → feedback → dataset → fine-tune → eval against the base → promote.
# Every step is a powertrain command (or, for the traffic and its labeller, the Python API).
#
#   examples/banking77/flywheel.sh            # from the repository root, after `make install`
#
# Settings (environment): PER_INTENT (messages per intent, default 5: 385 in all, of which the
# dataset's hash split keeps about 80% for training and 20% for its test split),
# EPOCHS, HOME_DIR (where the store goes; default a fresh examples/banking77/.flywheel),
# HELDOUT_LIMIT (held-out messages to evaluate on; default all 385).
set -euo pipefail
cd "$(dirname "$0")"
BIN=$(cd "${BIN:-../../.venv/bin}" && pwd)   # absolute: some steps run in other directories
PT="$BIN/powertrain"
PY="$BIN/python"
PER_INTENT=${PER_INTENT:-5}
HOME_DIR=${HOME_DIR:-$PWD/.flywheel}
OUT="$HOME_DIR/out"
export POWERTRAIN_HOME="$HOME_DIR"
export POWERTRAIN_CONFIG="$PWD/powertrain.toml"
rm -rf "$HOME_DIR" && mkdir -p "$OUT"
started=$(date +%s)
step() { printf '\n\033[1m== %s\033[0m  (%ss)\n' "$1" "$(( $(date +%s) - started ))"; }

step "0. prepare: the held-out slice, the schema and the few-shot block"
"$PY" prepare.py

step "1-2. serve and trace: $PER_INTENT train messages per intent through the task, each answer labelled"
"$PY" flywheel.py traffic --per-intent "$PER_INTENT"

step "3. dataset: the traces with feedback (a correction replaces a wrong answer)"
"$PT" dataset create b77-feedback --from-traces --task banking77 --feedback any --test-fraction 0.2
(cd "$OUT" && "$PT" dataset export b77-feedback --format openai --split train -o train-openai.jsonl)  # for hosted APIs

step "4. fine-tune: LoRA on the CPU, exported as a GGUF adapter for llama.cpp"
"$PT" finetune --task banking77 --dataset b77-feedback --method lora ${EPOCHS:+--epochs "$EPOCHS"} \
  --json > "$OUT/job.json"
job=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$OUT/job.json")
variant=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["variant"])' "$OUT/job.json")
"$PT" finetune show "$job"

step "5. eval: base (zero_shot) against the tuned variant ($variant) on the held-out slice"
cp data/heldout.jsonl "$OUT/heldout.jsonl"   # suites read files beside them, never by absolute path
cat > "$OUT/flywheel-eval.yaml" <<YAML
name: banking77-flywheel
description: Intent accuracy on the held-out slice, base against the fine-tuned variant.
dataset:
  file: heldout.jsonl
  expected: intent
  vars: [text]
  ${HELDOUT_LIMIT:+limit: $HELDOUT_LIMIT}
targets:
  - task: banking77
    variants: [zero_shot, $variant]
assert:
  - type: json-path
    path: \$.intent
concurrency: 1
timeout: 120
YAML
(cd "$OUT" && "$PT" eval run flywheel-eval.yaml --json --report eval-report.html > run.json)

step "6. promote: a 10% canary, then all traffic; the history keeps both"
"$PT" promote banking77 --variant "$variant" --canary 10% --note "held-out eval passed"
"$PT" promote banking77 --full
"$PT" promote banking77 --history

step "the loop, measured"
"$PT" finetune show "$job" --json > "$OUT/job-final.json"
"$PY" flywheel.py summary --job "$OUT/job-final.json" --run "$OUT/run.json"
echo "total wall time: $(( $(date +%s) - started )) s; store and artifacts in $HOME_DIR"
