#!/bin/bash
# Every training loop once on a lent GPU, on the tiny corpus: which of them run on CUDA?
# Carry .whl and .gpu (tools/gpu_medium_on_device.sh says how to make them). Not yet run to
# the end: the twenty-fourth session's try forgot --text (the device has no `bible`) and
# spent the rest of the loan; each command there took 15-20 s to start (imports), so the
# whole script needs about 6 minutes of device time.
source tools/device_env.sh
# the LM and probe commands have no accelerator option: they run on the CPU
C=${C:-/tmp/tinyc}; ACC=${ACC:-gpu}; SD="python3 -m speechdistill.cli"; J=$(nproc)
run() { local name=$1; shift; if "$@" > $OUT/$name.log 2>&1; then el "OK $name"; else el "FAIL $name"; tail -25 $OUT/$name.log; fi; }
run corpus $SD corpus build --preset tiny --out $C --text /tmp/kjv.txt --jobs $J
run features $SD features compute $C --jobs $J
run units $SD units build $C --vocab-size 128 --num-senones 160 --min-senone-frames 20 --jobs $J
for u in subword phone senone; do
  run lm-$u $SD lm train $C --unit $u --arch lstm --epochs 1 --max-sentences 500
  run teach-$u $SD teach $C --unit $u --top-k 8 --temperature 3
done
run hier $SD train configs/asr/hier.yaml data.corpus=$C "data.alignment=''" optim.max_steps=12 out_dir=/tmp/e/hier accelerator=$ACC
grep -h "precision\|device\|cuda" $OUT/hier.log | head -3
run evaluate $SD evaluate /tmp/e/hier/best --data $C --split dev
run interp $SD train configs/asr/interp.yaml data.corpus=$C "data.alignment=''" optim.max_steps=12 out_dir=/tmp/e/interp accelerator=$ACC
run pretrain $SD pretrain configs/ssl/pretrain.yaml data.corpus=$C data.max_hours=0.05 optim.max_steps=12 out_dir=/tmp/e/teacher accelerator=$ACC
run distill $SD distill-ssl configs/ssl/fithubert.yaml data.corpus=$C teacher=/tmp/e/teacher/hf data.max_hours=0.05 optim.max_steps=12 out_dir=/tmp/e/fit accelerator=$ACC
run probe $SD probe --upstream /tmp/e/fit/student --task pr --corpus $C --epochs 1
grep -h "INFO     device" $OUT/*.log | sort | uniq -c
el done
