# Sourced by the tools/*_on_device.sh scripts: a clock for their log lines, $OUT, and on a
# lent machine (unless CPU_TEST is set) the carried wheels (.whl) and Flite (.gpu) put on
# the paths; the KJV text in /tmp/kjv.txt either way.
set -o pipefail
T0=$(date +%s); el() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -z "$CPU_TEST" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD/src
  mkdir -p /tmp/fl && tar xJf .gpu/flite.tar.xz -C /tmp/fl || exit 3
  export PATH=/tmp/fl/flite/bin:$PATH LD_LIBRARY_PATH=/tmp/fl/flite/lib
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
xz -dc .gpu/kjv.txt.xz > /tmp/kjv.txt
