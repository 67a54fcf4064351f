"""Monophone GMM-HMM training from a flat start: the own aligner's first stage.

    >>> labels = train_gmm(feats, graphs, flat_labels, iterations=12)   # state per frame

Classic Viterbi training (HTK's HERest in its Viterbi form; Kaldi's ``train_mono.sh``):
per-utterance normalised MFCCs with deltas, one diagonal-covariance Gaussian mixture per
HMM state, re-estimated from the frames the current alignment gives it, the alignment
redone by Viterbi through each utterance's phone graph with the new likelihoods, and the
mixtures split (each component's mean moved by +-0.2 standard deviations) every few
iterations. GMMs learn from few frames and cannot memorise the flat start the way a
network does, so they move the boundaries to where the acoustics change. The trained
mixtures are the own aligner by default; ``own.py`` can train a network on their
alignment (``rounds``), which was worse on the dev voices (docs/notes.md, #13). Written by hand (NumPy): scikit-learn's GaussianMixture fits
one mixture to unlabelled data, not 120 tied to an HMM's alignment.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.special import logsumexp

from speechdistill.align.viterbi import AlignmentGraph, viterbi

log = logging.getLogger(__name__)
VAR_FLOOR = 1e-3


class StateGMMs:
    """One diagonal GMM per state: means/variances (C, D), log weights (C,), state of each component (C,)."""

    def __init__(self, num_states: int, dim: int):
        self.means = np.zeros((num_states, dim))
        self.vars = np.ones((num_states, dim))
        self.log_w = np.zeros(num_states)
        self.state = np.arange(num_states)
        self.num_states = num_states

    def tensors(self) -> dict[str, np.ndarray]:
        return {"means": self.means, "vars": self.vars, "log_w": self.log_w, "state": self.state}

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray]) -> StateGMMs:
        gmm = cls(int(t["state"].max()) + 1, t["means"].shape[1])
        gmm.means, gmm.vars, gmm.log_w = (np.asarray(t[k], np.float64) for k in ("means", "vars", "log_w"))
        gmm.state = np.asarray(t["state"], np.int64)
        return gmm

    def log_likelihoods(self, x: np.ndarray, states: np.ndarray | None = None, dtype=np.float64) -> np.ndarray:
        """(T, D) frames -> (T, states) log-likelihoods; with ``states`` (sorted ids) only
        theirs are computed, the others are -inf (an utterance's graph uses about half).
        ``dtype=np.float32`` is 2x faster (the combined aligner, beside float32 network scores)."""
        # torch in float64: NumPy + scipy's logsumexp to float64 rounding (1e-8 relative), 5x faster
        cols = (
            slice(None)
            if states is None
            else (np.arange(0, len(self.state), self.num_states)[:, None] + states).ravel()
        )
        inv, means, var, log_w = (
            torch.from_numpy(np.asarray(a, dtype))
            for a in (1.0 / self.vars[cols], self.means[cols], self.vars[cols], self.log_w[cols])
        )
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))
        const = (means**2 * inv).sum(1) + torch.log(2 * torch.pi * var).sum(1)
        comp = -0.5 * ((xt * xt) @ inv.T - 2 * xt @ (means * inv).T + const) + log_w
        # components are stored state-major within each copy: (T, copies, states)
        comp = comp.reshape(len(x), -1, self.num_states if states is None else len(states))
        if dtype == np.float32:  # a component 88 nats below its state's best exps to a float32
            # denormal (10x slower on x86) and adds under 1e-38 to a sum of at least 1: floor it
            comp = torch.maximum(comp, comp.amax(1, keepdim=True) - 80)
        ll = torch.logsumexp(comp, dim=1)
        if states is None:
            return ll.numpy()
        out = np.full((len(x), self.num_states), -np.inf, dtype)
        out[:, states] = ll.numpy()
        return out

    def estimate(self, x: np.ndarray, labels: np.ndarray, em_steps: int = 2) -> None:
        """Re-estimate every state's mixture from its frames (``labels``: state per frame)."""
        for s in range(self.num_states):
            cols = np.flatnonzero(self.state == s)
            xs = x[labels == s]
            if len(xs) < 2 * len(cols):  # too few frames: keep the old mixture
                continue
            for _ in range(em_steps if len(cols) > 1 else 1):
                inv = 1.0 / self.vars[cols]
                ll = -0.5 * (
                    (xs * xs) @ inv.T
                    - 2 * xs @ (self.means[cols] * inv).T
                    + (self.means[cols] ** 2 * inv).sum(1)
                    + np.log(2 * np.pi * self.vars[cols]).sum(1)
                )
                ll += self.log_w[cols]
                resp = np.exp(ll - logsumexp(ll, axis=1, keepdims=True))  # (n, k)
                n = resp.sum(0) + 1e-6
                self.means[cols] = (resp.T @ xs) / n[:, None]
                self.vars[cols] = np.maximum((resp.T @ (xs * xs)) / n[:, None] - self.means[cols] ** 2, VAR_FLOOR)
                self.log_w[cols] = np.log(n / n.sum())

    def split(self) -> None:
        """Double every state's mixture: each component becomes two, means +-0.2 std apart."""
        d = 0.2 * np.sqrt(self.vars)
        self.means = np.concatenate([self.means + d, self.means - d])
        self.vars = np.concatenate([self.vars, self.vars])
        self.log_w = np.concatenate([self.log_w, self.log_w]) - np.log(2)
        self.state = np.concatenate([self.state, self.state])


def normalise(x: np.ndarray) -> np.ndarray:
    """Per-utterance mean and variance normalisation."""
    return (x - x.mean(0)) / (x.std(0) + 1e-5)


def train_gmm(
    feats: list[np.ndarray],
    graphs: list[AlignmentGraph],
    labels: list[np.ndarray],
    num_states: int,
    iterations: int = 12,
    split_every: int = 3,
    max_components: int = 8,
    realign: bool = True,
):
    """Viterbi training from ``labels`` (the flat start); returns the final state per frame of
    every utterance and the mixtures. ``feats``: normalised MFCCs with deltas, (T, D) each.
    ``realign=False`` keeps ``labels`` (given timings): the mixtures are estimated and split
    on them, with no Viterbi pass."""
    x = np.concatenate(feats)
    gmm = StateGMMs(num_states, x.shape[1])
    gmm.means[:] = x.mean(0)
    gmm.vars[:] = np.maximum(x.var(0), VAR_FLOOR)
    components = 1
    for it in range(iterations):
        gmm.estimate(x, np.concatenate(labels))
        if it and it % split_every == 0 and components < max_components:
            gmm.split()
            components *= 2
            gmm.estimate(x, np.concatenate(labels))
        if not realign:
            continue
        new = [g.classes[viterbi(g, gmm.log_likelihoods(f))] for f, g in zip(feats, graphs, strict=True)]
        changed = float(np.mean(np.concatenate(new) != np.concatenate(labels)))
        log.info(
            "GMM iteration %d (%d components per state): %.1f%% of frames changed state", it, components, 100 * changed
        )
        labels = new
    return labels, gmm
