#!/usr/bin/env bash
# Every fine-tuning method on Banking77, measured on the held-out slice, in one table:
# a classifier on MiniLM embeddings, LoRA and prompt tuning of SmolLM2, beside the base.
#
#   examples/banking77/methods.sh        # from the repository root, after `make install`
#
# Settings (environment): PER_INTENT (train messages per intent, default 4: 308 in all),
# HELDOUT (held-out messages scored, default 154: two per intent; 385 for all), BUDGET (the
# time budget for training, default 30m), SETTINGS (more `finetune` flags), HOME_DIR
# (default a fresh examples/banking77/.methods).
set -euo pipefail
cd "$(dirname "$0")"
BIN=$(cd "${BIN:-../../.venv/bin}" && pwd)   # absolute: some steps run in other directories
HOME_DIR=${HOME_DIR:-$PWD/.methods}
export POWERTRAIN_HOME="$HOME_DIR"
export POWERTRAIN_CONFIG="$PWD/powertrain.toml"
rm -rf "$HOME_DIR" && mkdir -p "$HOME_DIR/out"
"$BIN/python" prepare.py
"$BIN/python" flywheel.py rows --per-intent "${PER_INTENT:-4}" \
  --heldout-limit "${HELDOUT:-154}" -o "$HOME_DIR/out/methods.jsonl"
(cd "$HOME_DIR/out" && "$BIN/powertrain" dataset create b77-methods --from-file methods.jsonl \
  --task banking77)
"$BIN/powertrain" finetune --task banking77 --dataset b77-methods --method auto \
  --time-budget "${BUDGET:-30m}" ${SETTINGS:-} --json > "$HOME_DIR/out/auto.json"
echo "the table above is also in $HOME_DIR/out/auto.json"
