#!/usr/bin/env bash
# Sampling of the leaderboards' missing rows on a GPU machine that lacks the FID Inception weights (issue 20).
#
#   bash benchmarks/gpu_leaderboard.sh SECONDS OUTDIR [JOB ...]
#
# A JOB is `<prior>:tune:<method>` (python -m vipaint.tune --samples-only: every configuration of the
# method on the validation split, unscored) or `<prior>:test:<row>` (python -m vipaint.bench --split test
# --no-fid: one row of the spec's test split); without JOBs, the list below, most wanted first. Jobs run
# one after another until SECONDS have passed (a job cut off keeps every finished batch: the writer
# resumes per image). Then the files a later run needs are packed into OUTDIR/<prior>_<kind>.tgz: the
# per-index metrics, timing and uint8 composites and each folder's settings.json / timing.json. Unpack
# them in the repository root (`tar xzf`); there, on a machine with the Inception weights,
#   python -m vipaint.tune --spec benchmarks/leaderboard_<prior>.yaml --only <method>
# scores the configurations without recomputing them, and
#   python -m vipaint.bench --spec benchmarks/leaderboard_<prior>.yaml --split test --report-only
# adds the rows (FID/KID from the uint8 composites). Results do not depend on the batch size (seeds come
# from the dataset index); the device differs from the CPU rows, which timing.json records.
# With a `.whl/` folder of wheels (diffusers, jsonargparse, datasets, ...) they are installed to /tmp/site first.
set -u
budget=${1:?seconds}
out=${2:?output folder}
shift 2
py=${PYTHON:-python3}
accel=${ACCEL:-gpu}
tune_batch=${TUNE_BATCH:-60}
test_batch=${TEST_BATCH:-150}
mkdir -p "$out"
log="$out/gpu_leaderboard.log"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="$PWD:/tmp/site"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
"$py" -c "import torch, lightning, diffusers, jsonargparse, datasets, vipaint
print('torch', torch.__version__, 'lightning', lightning.__version__, 'diffusers', diffusers.__version__,
      'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" \
  2>&1 | tee -a "$log" || exit 1

jobs=("$@")
if [ ${#jobs[@]} -eq 0 ]; then     # what was still missing on 2026-12-04, most wanted first
  jobs=("fashion_mnist_latent:tune:dps" "fashion_mnist_latent:test:dps_published"
        "fashion_mnist_latent:test:reddiff" "fashion_mnist_latent:test:psld"
        "mnist:test:reddiff" "mnist:test:reddiff_published")
  for m in copaint repaint dps; do jobs+=("mnist:tune:$m" "mnist:test:${m}_published"); done
  jobs+=("mnist:test:prior" "fashion_mnist_latent:test:prior")
  jobs+=("fashion_mnist:tune:vipaint_official" "mnist:tune:vipaint" "mnist:tune:vipaint_official"
         "fashion_mnist_latent:tune:vipaint" "fashion_mnist_latent:tune:vipaint_official")
fi
stamp=$(mktemp)
end=$((SECONDS + budget))
for job in "${jobs[@]}"; do
  IFS=: read -r prior kind name <<<"$job"
  left=$((end - SECONDS))
  if [ "$left" -lt 30 ]; then echo "[gpu] $job: not started (${left}s left)" | tee -a "$log"; continue; fi
  spec="benchmarks/leaderboard_$prior.yaml"
  t0=$SECONDS
  if [ "$kind" = tune ]; then
    timeout -k 10 "$left" "$py" -m vipaint.tune --spec "$spec" --only "$name" --samples-only \
      --data.batch_size="$tune_batch" --trainer.accelerator="$accel" --trainer.enable_progress_bar=false \
      >>"$log" 2>&1
  else
    timeout -k 10 "$left" "$py" -m vipaint.bench --spec "$spec" --split test --only "$name" --no-fid \
      --data.batch_size="$test_batch" --trainer.accelerator="$accel" >>"$log" 2>&1
  fi
  echo "[gpu] $job: exit $? after $((SECONDS - t0)) s" | tee -a "$log"
done

for prior in fashion_mnist mnist fashion_mnist_latent; do
  for kind in tune test; do
    if [ "$kind" = tune ]; then root="results/tune/$prior"; else root="benchmarks/runs/$prior"; fi
    [ -d "$root" ] || continue
    find "$root" -newer "$stamp" -type f \( -path '*/metrics/*' -o -path '*/samples_u8/*' -o -path '*/timing/*' \
      -o -name settings.json -o -name timing.json -o -name throughput.json \) >"$stamp.list"
    if [ -s "$stamp.list" ]; then
      tar czf "$out/${prior}_$kind.tgz" -T "$stamp.list"
      echo "[gpu] packed $(wc -l <"$stamp.list") files into $out/${prior}_$kind.tgz" | tee -a "$log"
    fi
  done
done
