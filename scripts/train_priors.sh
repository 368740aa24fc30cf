#!/usr/bin/env bash
# Train and export the shipped priors (data/priors/<name>/) on CPU, in the order the project needs them.
#
#   scripts/train_priors.sh fashion_mnist        # pixel prior (default prior of `make eval`)
#   scripts/train_priors.sh fashion_mnist_vae    # autoencoder (export: runs/fashion_mnist_vae/export)
#   scripts/train_priors.sh fashion_mnist_latent # latent prior on that autoencoder
#   scripts/train_priors.sh mnist                # MNIST pixel prior
#
# `make train-prior PRIOR=<name> [GPU=1] ARGS='...'` installs the datasets and runs this script.
# The YAMLs in experiments/priors/ are the full (GPU) configurations; this script adds the smaller
# CPU overrides that produced the shipped weights (2 shared cores, one torch thread per run, bf16
# autocast). Pass GPU=1 to run the YAML unchanged. Rerunning the same command resumes from
# runs/<name>/checkpoints/last.ckpt and re-exports. Extra arguments are forwarded, e.g.
#   scripts/train_priors.sh fashion_mnist --trainer.max_steps 2000
# W&B (offline, no key needed):
#   WANDB_MODE=offline scripts/train_priors.sh fashion_mnist --trainer.logger lightning.pytorch.loggers.WandbLogger \
#       --trainer.logger.init_args.save_dir runs/fashion_mnist --trainer.logger.init_args.offline true
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: scripts/train_priors.sh <fashion_mnist|fashion_mnist_vae|fashion_mnist_latent|mnist> [overrides]}"
shift
PY="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1
cpu=()
if [[ "${GPU:-0}" != 1 ]]; then
  case "$name" in
    fashion_mnist) cpu=(--num_threads 1 --trainer.max_steps 4500 --data.init_args.batch_size 64) ;;
    mnist)         cpu=(--num_threads 1 --trainer.max_steps 3000 --data.init_args.batch_size 64) ;;
    fashion_mnist_vae)    cpu=(--num_threads 1 --trainer.max_steps 4000) ;;
    fashion_mnist_latent) cpu=(--num_threads 1 --trainer.max_steps 5000) ;;
    *) echo "unknown prior: $name" >&2; exit 2 ;;
  esac
fi
exec "$PY" -m vipaint.training.cli fit --config "experiments/priors/$name.yaml" "${cpu[@]}" "$@"
