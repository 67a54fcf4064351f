"""Where a HuBERT-style teacher's CPU time goes: its front end against its blocks.

    python bench/ssl_front_end.py exp/ssl/teacher-pbert-all-e8/hf --seconds 10 --repeats 7

A student that keeps the teacher's front end (the CNN feature extractor, the feature
projection and the convolutional positional embedding; DistilHuBERT does) cannot take
less of the teacher's CPU time than that front end does, whatever it cuts from the
blocks. This prints, on one intra-op thread as ``speechdistill compare`` times (this
process's CPU time, median of ``--repeats``, the variants taking turns): the whole
model, the CNN alone, and the model with no transformer blocks; their shares of the
whole; the cost of one block, (whole - no blocks) / blocks; and each CNN layer's share
(fed the layer below's output). ``--student`` adds a student's whole model beside them
(e.g. ``configs/ssl/distilhubert-cut.yaml``'s, whose first CNN layer is narrower).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import AutoModel

from speechdistill.engine import cpu_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a local Hugging Face HuBERT / wav2vec 2.0 / WavLM directory")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--student", help="a student's Hugging Face directory ({prefix}.hf), timed beside the teacher")
    args = p.parse_args()
    torch.set_num_threads(1)
    whole = AutoModel.from_pretrained(args.model, local_files_only=True).eval()
    front = copy.deepcopy(whole)
    front.encoder.layers = torch.nn.ModuleList()
    wav = torch.randn(1, int(16000 * args.seconds), generator=torch.Generator().manual_seed(0)) * 0.1
    variants = {
        "whole": lambda: whole(wav),
        "CNN": lambda: whole.feature_extractor(wav),
        "no blocks": lambda: front(wav),
    }
    with torch.no_grad():  # each CNN layer's input, made once
        inputs = [wav[:, None]]
        for layer in whole.feature_extractor.conv_layers:
            inputs.append(layer(inputs[-1]))
    for i, layer in enumerate(whole.feature_extractor.conv_layers):
        variants[f"CNN layer {i}"] = lambda layer=layer, x=inputs[i]: layer(x)
    if args.student:
        student = AutoModel.from_pretrained(args.student, local_files_only=True).eval()
        variants["student"] = lambda: student(wav)
    times = {name: [] for name in variants}
    with torch.no_grad():
        for f in variants.values():  # warm-up
            f()
        for _ in range(args.repeats):
            for name, f in variants.items():
                t0 = time.process_time()
                f()
                times[name].append((time.process_time() - t0) / args.seconds)
    med = {name: statistics.median(v) for name, v in times.items()}
    blocks = len(whole.encoder.layers)
    print(f"{cpu_model()}, 1 thread, {args.seconds:g} s of audio, median of {args.repeats}")
    for name, v in med.items():
        print(f"{name:>10}: {v:.5f} CPU s / s audio, {v / med['whole']:.3f} of the whole")
    block = (med["whole"] - med["no blocks"]) / blocks
    print(f"one block: {block / med['whole']:.3f} of the whole ({blocks} blocks)")


if __name__ == "__main__":
    main()
