#!/bin/bash
# configs/ssl/pretrain-gpu.yaml on a lent GPU machine (#16 item 1), with `make demo-ssl`'s
# probes of the teacher and of the filterbank, in one command of about 10 minutes. Not yet
# run. Carry .whl and .gpu (tools/gpu_medium_on_device.sh says how to make them); run
# tools/gpu_smoke_on_device.sh first at a first loan. On a CPU (the venv's Python on PATH),
# CPU_TEST=1 ACC=cpu STEPS=3 PROBE_EPOCHS=1 PROBE_HOURS=0.05 SID_HOURS=0.05 tries the
# pipeline in minutes: tried so on 2026-12-05 (AMD EPYC, 2 cores, the corpus and alignment
# already made), every step ran, 201 s.
# Usage (repo root): bash tools/gpu_ssl_teacher_on_device.sh
source tools/device_env.sh
C=${C:-data/small}; ACC=${ACC:-gpu}; SD="python3 -m speechdistill.cli"; J=$(nproc); T=exp/ssl/teacher-gpu
run() { local name=$1; shift; if "$@" > $OUT/$name.log 2>&1; then el "OK $name"; else el "FAIL $name"; tail -25 $OUT/$name.log; exit 4; fi; }
run corpus $SD corpus build --preset small --out $C --text /tmp/kjv.txt --jobs $J
run features $SD features compute $C --jobs $J
run align $SD align run $C --backend own --name own --jobs $J
run units $SD units build $C --alignment own --jobs $J
run pretrain $SD pretrain configs/ssl/pretrain-gpu.yaml data.corpus=$C accelerator=$ACC ${STEPS:+optim.max_steps=$STEPS}
grep -h "precision\|device\|parameters" $OUT/pretrain.log | head -4
# the demo's probes (20 epochs; PR on 1 h, SID on all of train), on the CPU cores
for up in $T/hf fbank; do
  run probe-pr-${up%%/*} $SD probe --upstream $up --task pr --corpus $C --epochs ${PROBE_EPOCHS:-20} --max-hours ${PROBE_HOURS:-1.0}
  run probe-sid-${up%%/*} $SD probe --upstream $up --task sid --corpus $C --epochs ${PROBE_EPOCHS:-20} --max-hours ${SID_HOURS:-0}
done
cp $T/summary.json $T/log.csv $T/hf.probe-*.json fbank.probe-*.json $OUT/ 2>/dev/null
tail -n 2 $OUT/probe-*.log
el done
