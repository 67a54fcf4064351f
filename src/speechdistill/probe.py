"""SUPERB-style probes (Yang et al. 2021) of an upstream, frozen or fine-tuned.

    speechdistill probe --upstream exp/ssl/teacher/hf --task pr --corpus data/small
    speechdistill probe --upstream exp/ssl/teacher/hf --task accent --tune top --tune-layers 2

A learnable softmax-weighted sum of all the upstream's hidden states feeds a small
head, as in SUPERB:

* ``pr``: phoneme recognition, linear + CTC over ARPAbet-39; PER (%);
* ``asr``: 2-layer BiLSTM + CTC over characters; WER (%), greedy decoding, no LM;
* ``sid``: speaker (voice) identification, mean-pool + linear; accuracy (%);
* ``accent``: accent identification among the eSpeak NG accents the training split has
  (Flite's voices, all American, left out), mean-pool + linear; accuracy (%) on the
  dev and test voices, which training never heard;
* ``rate``: speaking rate, the transcript's phones per second of audio, mean-pool +
  linear regression on the standardised rate; mean absolute error (phones/s).

``pool_conv`` (utterance tasks): a 1-D convolution over 5 frames with ReLU before the
mean-pool, so that the head sees time: a mean of the frames themselves cannot count
changes between them, which is what a speaking rate is (``-conv{N}`` in result names).

PR, ASR, accent and rate train on the train split, pick the epoch on dev and score test
(the built-in corpus's voices are disjoint across splits, so these are unseen voices).
SID needs the same speakers in training and scoring, so it splits the train split's
utterances of every voice 80/10/10 by a hash of the utterance id. Each result carries
its control: the majority class's accuracy, or the error of predicting the training
mean rate, on the same test utterances.

``tune``: ``frozen`` (the probe: the upstream's hidden states are computed once per
utterance and kept in memory as fp16), ``top`` (its top ``tune_layers`` layers train
too, at ``upstream_lr``), ``all`` (every upstream parameter trains), ``adapters``
(bottleneck adapters after its transformer layers, the rest frozen) or ``chapter``
(adapters after its CNN layers too); tune.py.

``learn_rates`` (a seqcomp student, frozen): the task's preferred frame rate is learnt by a
short probe of its own before the probe proper (:class:`RateSearchTask`), instead of a
probe per rate.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from lhotse import CutSet
from matplotlib.figure import Figure
from torch import nn

from speechdistill.data.batching import WaveData, WaveDataset, load_wave_cuts, make_sampler
from speechdistill.data.corpus import load_split
from speechdistill.data.layout import CorpusDir
from speechdistill.decode import error_rates, greedy_decode
from speechdistill.downstream import CLASSIFY, METRICS, POOLED, TASKS
from speechdistill.engine import Engine, EngineConfig, OptimConfig, Task
from speechdistill.masks import padding_mask
from speechdistill.teachers.ssl import FrozenTeacher
from speechdistill.teachers.upstream import load_upstream
from speechdistill.tune import TUNE_MODES, add_adapters, set_trainable
from speechdistill.units.inventory import Units
from speechdistill.utils import DataError, atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

CHARS = " '" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # ids 1.., blank 0


@dataclass
class ProbeConfig:
    task: str = "pr"
    corpus: str = "data/small"
    epochs: int = 20
    lr: float = 5e-3  # linear CTC heads need a high rate to leave the blank plateau in few steps
    max_duration: float = 30.0
    lstm_dim: int = 256
    max_hours: float = 0.0  # training data cap (0: the whole split)
    seed: int = 0
    rate: float = 0.0  # seqcomp students: the frame rate to run at, x 20 ms (0: the student's default)
    tune: str = "frozen"  # frozen (the probe), top (the top tune_layers layers train too), all
    tune_layers: int = 2
    pool_conv: int = 0  # utterance tasks: channels of a 5-frame conv + ReLU before the mean-pool (0: none)
    upstream_lr: float = 1e-4  # the tuned upstream parameters' peak rate (the head's: lr)
    # seqcomp students: learn the rate among these (x 20 ms) in a search of rate_epochs
    # epochs, each rate's dev error plus rate_cost / rate moving the draws by rate_step
    learn_rates: list[float] = field(default_factory=list)
    rate_cost: float = 0.0
    rate_epochs: int = 5
    rate_step: float = 10.0

    @property
    def tune_name(self) -> str:
        """How the upstream was tuned, as results name it: ``frozen``, ``all``, ``top2``..."""
        return self.tune if self.tune != "top" else f"top{self.tune_layers}"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"--task {self.task!r}; valid: {', '.join(TASKS)}")
        if self.tune not in TUNE_MODES:
            raise ValueError(f"tune {self.tune!r}; valid: {', '.join(TUNE_MODES)}")
        if self.epochs < 1 or self.lr <= 0:
            raise ValueError("probe epochs must be >= 1 and lr > 0")
        if self.pool_conv < 0 or (self.pool_conv and self.task not in POOLED):
            raise ValueError(f"pool_conv is for the utterance tasks ({', '.join(POOLED)}), >= 0; got {self.pool_conv}")
        if self.rate and self.rate < 1:
            raise ValueError(f"probe rate must be >= 1 (x 20 ms), got {self.rate}")
        if self.learn_rates:
            if self.rate or self.tune != "frozen":
                raise ValueError("learn_rates searches the rate of a frozen upstream: give no rate and tune=frozen")
            if len(set(self.learn_rates)) < 2 or min(self.learn_rates) < 1:
                raise ValueError(f"learn_rates needs 2+ distinct rates >= 1 (x 20 ms), got {self.learn_rates}")
            if self.rate_cost < 0 or self.rate_step <= 0 or self.rate_epochs < 1:
                raise ValueError("rate_cost must be >= 0, rate_step > 0 and rate_epochs >= 1")

    @property
    def head_name(self) -> str:
        """How result files name a head other than SUPERB's: ``-conv64``."""
        return f"-conv{self.pool_conv}" if self.pool_conv else ""

    @property
    def rate_name(self) -> str:
        """How result files name the rate: '' (the upstream's own), ``@r3``, ``@rlearnt``
        (``@rlearnt-c0.05`` with a frame cost)."""
        if self.learn_rates:
            return f"@rlearnt-c{self.rate_cost:g}" if self.rate_cost else "@rlearnt"
        return f"@r{self.rate:g}" if self.rate else ""


def char_ids(text: str) -> list[int]:
    return [CHARS.index(c) + 1 for c in text.upper() if c in CHARS]


class WeightedSum(nn.Module):
    """softmax(w) . [layer-normed hidden states]: SUPERB's featurizer."""

    def __init__(self, num_states: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_states))

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        w = self.weights.softmax(0)
        return sum(w[i] * F.layer_norm(s, s.shape[-1:]) for i, s in enumerate(states))


class ProbeHead(nn.Module):
    def __init__(self, task: str, num_states: int, dim: int, num_classes: int, lstm_dim: int = 256, pool_conv: int = 0):
        super().__init__()
        self.task = task
        self.featurizer = WeightedSum(num_states)
        if task == "asr":
            self.lstm = nn.LSTM(dim, lstm_dim, num_layers=2, batch_first=True, bidirectional=True)
            dim = 2 * lstm_dim
        self.conv = nn.Conv1d(dim, pool_conv, 5, padding=2) if pool_conv else None
        self.out = nn.Linear(pool_conv or dim, num_classes)

    def forward(self, states: list[torch.Tensor], lens: torch.Tensor) -> torch.Tensor:
        x = self.featurizer(states)
        if self.task == "asr":
            packed = nn.utils.rnn.pack_padded_sequence(x, lens.cpu(), batch_first=True, enforce_sorted=False)
            x = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])[0]
        if self.task in POOLED:
            mask = (~padding_mask(lens, x.shape[1])).to(x.dtype)[..., None]
            if self.conv is not None:  # padding frames are zeros to the conv, as past the ends
                x = F.relu(self.conv((x * mask).transpose(1, 2))).transpose(1, 2)
            x = (x * mask).sum(1) / lens[:, None].clamp(min=1)
        return self.out(x)


class TunedProbe(nn.Module):
    """Upstream and head trained together: waveforms -> the head's output and frame lengths."""

    def __init__(self, upstream: nn.Module, head: ProbeHead):
        super().__init__()
        self.upstream, self.head = upstream, head

    def forward(self, wavs: torch.Tensor, lens: torch.Tensor):
        states, flens = self.upstream(wavs, lens)
        return self.head(states, flens), flens


def plot_layer_weights(result: dict, path: str | Path) -> bool:
    """Bar chart of the learned softmax weights per hidden state (0 = pre-transformer).
    An upstream with one state (the filterbank) has nothing to plot: returns False."""
    w = result["layer_weights"]
    if len(w) < 2:
        return False
    fig = Figure(figsize=(max(4, 0.4 * len(w) + 2), 3))
    ax = fig.subplots()
    ax.bar(range(len(w)), w)
    ax.axhline(1 / len(w), color="grey", lw=0.8, ls="--", label="uniform")
    ax.set_xlabel("hidden state (0 = input of block 1)")
    ax.set_ylabel("softmax weight")
    ax.set_title(
        f"{result['task']} probe of {Path(result['upstream']).name}: test {result['metric']} {result['test']:.1f}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    return True


def _sid_part(utt: str) -> str:
    h = int(hashlib.md5(utt.encode()).hexdigest(), 16) % 10
    return "train" if h < 8 else ("dev" if h == 8 else "test")


def probe_train_hours(task: str, hours: float) -> float:
    """The training audio of a ``task`` probe in a recipe that caps its probes at ``hours``
    (``make demo-ssl``, ``ssl shapes``): SID takes all of the train split (0), since it
    scores held-out utterances of the training voices and an hour leaves about four per
    voice: there the filterbank and the 4- and 8-epoch PBERT teachers of docs/findings.md
    6b scored 14, 14 and 15 of 88 test utterances, on all of it 73, 53 and 68 of 275."""
    return 0.0 if task == "sid" else hours


def probe_result_path(
    upstream: str | Path, task: str, rate: str = "", tune: str = "frozen", head: str = "", seed: int = 0
) -> Path:
    """Where a probe's result is kept, beside the upstream (``rate``: ProbeConfig.rate_name,
    for a seqcomp student run at a chosen or learnt frame rate; ``+{tune}`` when the
    upstream was tuned too, e.g. ``+top2``; ``head``: ProbeConfig.head_name; ``-seed{N}``
    for a seed other than 0); ``speechdistill compare`` reads it from there."""
    upstream = Path(upstream)
    tuned = "" if tune == "frozen" else f"+{tune}"
    seeded = f"-seed{seed}" if seed else ""
    return upstream.parent / f"{upstream.name}.probe-{task}{head}{rate}{tuned}{seeded}.json"


def probe_kept(
    upstream: str | Path, cfg: ProbeConfig, again: bool = False, show_progress: bool = True
) -> tuple[dict, Path]:
    """Probe ``upstream`` and keep the result beside it (JSON, written whole, and the plot
    of its layer weights), or read the result already kept there unless ``again``: a
    recipe stopped between probes resumes at the first probe it lacks."""
    path = probe_result_path(upstream, cfg.task, cfg.rate_name, cfg.tune_name, cfg.head_name, cfg.seed)
    if again or not path.exists():
        result = probe(upstream, cfg, show_progress=show_progress)
        atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    else:
        result = json.loads(path.read_text())
    if again or not path.with_suffix(".png").exists():
        plot_layer_weights(result, path.with_suffix(".png"))
    return result, path


def phone_rate(cut, phones) -> float:
    """The transcript's phones per second of audio."""
    return len(phones.ctc_targets(cut.supervisions[0])) / cut.duration


def probe_splits(cfg: ProbeConfig):
    """-> {"train"/"dev"/"test": CutSet}, class count (1 for a regression), target function."""
    train = load_wave_cuts(WaveData(cfg.corpus, "train", cfg.max_hours))
    if cfg.task == "accent":
        spoken = {
            s: CutSet.from_cuts(c for c in cuts if c.supervisions[0].custom.get("engine") == "espeak")
            for s, cuts in (
                ("train", train),
                ("dev", load_split(cfg.corpus, "dev")),
                ("test", load_split(cfg.corpus, "test")),
            )
        }
        accents = sorted({c.supervisions[0].custom["accent"] for c in spoken["train"]})
        if len(accents) < 2:
            raise DataError(
                f"{cfg.corpus}: accent ID needs eSpeak NG utterances of 2+ accents in train; it has {accents}"
            )
        index = {a: i for i, a in enumerate(accents)}
        for s in ("dev", "test"):  # an accent training never had cannot be scored
            spoken[s] = spoken[s].filter(lambda c: c.supervisions[0].custom["accent"] in index)
        return spoken, len(accents), lambda c: index[c.supervisions[0].custom["accent"]]
    if cfg.task == "sid":
        parts = {p: CutSet.from_cuts([c for c in train if _sid_part(c.id) == p]) for p in ("train", "dev", "test")}
        speakers = sorted({c.supervisions[0].speaker for c in train})
        index = {s: i for i, s in enumerate(speakers)}
        return parts, len(speakers), lambda c: index[c.supervisions[0].speaker]
    parts = {"train": train, "dev": load_split(cfg.corpus, "dev"), "test": load_split(cfg.corpus, "test")}
    if cfg.task in ("pr", "rate"):
        phones = Units(CorpusDir(cfg.corpus).units)["phone"]
        if cfg.task == "rate":
            return parts, 1, lambda c: phone_rate(c, phones)
        return parts, phones.num_classes, lambda c: phones.ctc_targets(c.supervisions[0])
    return parts, len(CHARS) + 1, lambda c: char_ids(c.supervisions[0].text)


class StateCache:
    """Hidden states of a frozen upstream per utterance (fp16 in memory), computed on first use."""

    def __init__(self, upstream, enabled: bool = True):
        self.upstream, self.enabled, self.store = upstream, enabled, {}

    def batch(self, cuts, wavs, lens):
        ids = [c.id for c in cuts]
        if self.enabled and all(u in self.store for u in ids):
            rows = [self.store[u] for u in ids]
        else:
            with torch.no_grad():
                states, flens = self.upstream(wavs, lens)
            rows = [[s[i, : int(flens[i])].half() for s in states] for i in range(len(ids))]
            if self.enabled:
                self.store.update(zip(ids, rows, strict=True))
        flens = torch.tensor([r[0].shape[0] for r in rows])
        states = [
            nn.utils.rnn.pad_sequence([r[k].float() for r in rows], batch_first=True) for k in range(len(rows[0]))
        ]
        return states, flens


def _batches(cuts, max_duration: float, shuffle: bool, seed: int, epoch: int):
    sampler = make_sampler(cuts, max_duration, shuffle, seed)
    sampler.set_epoch(epoch)
    ds = WaveDataset()
    for batch in sampler:
        _, wavs, lens = ds[batch]
        yield list(batch), wavs, lens


def _score(model, predict, cuts, target, task, max_duration, scale=(0.0, 1.0)) -> float:
    """Error rate, accuracy or mean absolute error of ``predict(cuts, wavs, lens) -> (y, lens)``."""
    model.eval()
    refs, hyps, correct, n, abs_err = [], [], 0, 0, 0.0
    with torch.no_grad():
        for batch, wavs, lens in _batches(cuts, max_duration, False, 0, 0):
            y, flens = predict(batch, wavs, lens)
            y, flens = y.float().cpu(), flens.cpu()  # scored on the CPU, wherever the model ran
            if task in CLASSIFY:
                correct += int((y.argmax(-1) == torch.tensor([target(c) for c in batch])).sum())
                n += len(batch)
                continue
            if task == "rate":
                pred = y[:, 0] * scale[1] + scale[0]
                abs_err += float((pred - torch.tensor([target(c) for c in batch])).abs().sum())
                n += len(batch)
                continue
            for c, h in zip(batch, greedy_decode(y.log_softmax(-1), flens), strict=True):
                ref = target(c)
                if task == "pr":
                    refs.append(" ".join(map(str, ref)))
                    hyps.append(" ".join(map(str, h)))
                else:
                    refs.append("".join(CHARS[i - 1] for i in ref).strip())
                    hyps.append("".join(CHARS[i - 1] for i in h).strip())
    model.train()
    if task in CLASSIFY:
        return 100.0 * correct / max(1, n)
    if task == "rate":
        return abs_err / max(1, n)
    return error_rates(refs, hyps)["wer"]  # PER for phone-id "words"; WER for char strings


def control(task: str, train: CutSet, test: CutSet, target) -> float:
    """What a probe that ignores the audio scores on ``test``: the training majority
    class's accuracy, or the error of predicting the training mean rate; none for PR/ASR."""
    if task in CLASSIFY:
        counts = torch.bincount(torch.tensor([target(c) for c in train]))
        return 100.0 * sum(target(c) == int(counts.argmax()) for c in test) / max(1, len(test))
    if task == "rate":
        mean = sum(target(c) for c in train) / len(train)
        return sum(abs(target(c) - mean) for c in test) / max(1, len(test))
    return float("nan")


class ProbeTask(Task):
    """A head on an upstream's hidden states (the upstream frozen, or partly or wholly
    tuned with it); the best dev epoch is kept."""

    kind = "probe"
    monitor = "dev"

    def __init__(self, cfg: ProbeConfig, engine: Engine, upstream, parts, num_classes: int, target, cache: bool):
        self.cfg, self.engine, self.parts, self.target = cfg, engine, parts, target
        self.higher_is_better = cfg.task in CLASSIFY
        self.head = ProbeHead(cfg.task, upstream.num_layers + 1, upstream.dim, num_classes, cfg.lstm_dim, cfg.pool_conv)
        self.tuned = cfg.tune != "frozen"
        self.model = TunedProbe(upstream, self.head) if self.tuned else self.head
        self.states = StateCache(upstream, cache and not self.tuned)
        self.scale = (0.0, 1.0)
        if cfg.task == "rate":  # regress the standardised rate
            y = torch.tensor([target(c) for c in parts["train"]])
            self.scale = (float(y.mean()), float(y.std().clamp(min=1e-3)))
        self.best_state: dict | None = None

    def param_groups(self) -> list[dict]:
        groups = [{"params": list(self.head.parameters())}]
        if self.tuned:  # adapters are new, like the head, and take its rate; tuned upstream weights their own
            named = [(n, p) for n, p in self.model.upstream.named_parameters() if p.requires_grad]
            adapters = [p for n, p in named if n.startswith("adapters.")]
            tuned = [p for n, p in named if not n.startswith("adapters.")]
            groups += [{"params": adapters}] if adapters else []
            groups += [{"params": tuned, "lr": self.cfg.upstream_lr}] if tuned else []
        return groups

    def batches(self, epoch: int, skip: int):
        return _batches(self.parts["train"], self.cfg.max_duration, True, self.cfg.seed, epoch)

    def predict(self, model, cuts, wavs, lens):
        device = self.engine.fabric.device
        if self.tuned:
            return model(wavs.to(device), lens.to(device))
        states, flens = self.states.batch(cuts, wavs, lens)  # a frozen upstream stays where it was loaded
        return model([s.to(device) for s in states], flens.to(device)), flens

    def step(self, model, batch):
        cuts, wavs, lens = batch
        loss = self.loss(*self.predict(model, cuts, wavs, lens), cuts)
        return loss, {"loss": float(loss.detach())}

    def loss(self, y: torch.Tensor, flens: torch.Tensor, cuts) -> torch.Tensor:
        """The head's training loss on a batch of ``cuts``: cross-entropy, the standardised
        rate's squared error, or CTC (per target token, as ``F.ctc_loss`` means it)."""
        if self.cfg.task in CLASSIFY:
            return F.cross_entropy(y, torch.tensor([self.target(c) for c in cuts], device=y.device))
        if self.cfg.task == "rate":
            z = (torch.tensor([self.target(c) for c in cuts], device=y.device) - self.scale[0]) / self.scale[1]
            return F.mse_loss(y[:, 0], z.to(y.dtype))
        tg = [torch.tensor(self.target(c)) for c in cuts]
        return F.ctc_loss(
            y.log_softmax(-1).transpose(0, 1),
            torch.cat(tg).to(y.device),
            flens,
            torch.tensor([len(t) for t in tg]),
            zero_infinity=True,
        )

    def score(self, split: str) -> float:
        def predict(cuts, wavs, lens):
            return self.predict(self.model, cuts, wavs, lens)

        return _score(
            self.model, predict, self.parts[split], self.target, self.cfg.task, self.cfg.max_duration, self.scale
        )

    def validate(self, model) -> dict[str, float]:
        return {"dev": self.score("dev")}

    def on_best(self, engine: Engine) -> None:
        self.best_state = {k: v.clone() for k, v in self.model.state_dict().items()}


def hedge(logits: torch.Tensor, errors, rates, cost: float, step: float) -> torch.Tensor:
    """One exponentiated-gradient (Hedge) step of the draws' log-odds: rate r loses
    ``step`` x (its dev error + ``cost`` / r), 1 / r being the share of 20 ms frames its
    transformer still runs on. Written out because it is one line no library keeps."""
    objective = torch.as_tensor(errors, dtype=torch.float64) + cost / torch.as_tensor(rates, dtype=torch.float64)
    return logits - step * objective


def most_probable(p: torch.Tensor, rates) -> float:
    """The rate of highest probability; of rates equally probable (to 1e-9: a task that
    cannot tell them apart, as accuracy on a few hundred utterances often cannot), the
    highest, which costs least."""
    return max(zip((round(float(x), 9) for x in p), rates, strict=True))[1]


def rated(upstream: nn.Module, path: str | Path, option: str) -> nn.Module:
    """``upstream`` if it runs at a chosen frame rate (a seqcomp student), else a DataError
    naming ``path`` and the ``option`` that asked for a rate."""
    if not hasattr(upstream, "rate"):
        raise DataError(f"{path} runs at one frame rate; {option} is for seqcomp students")
    return upstream


def set_rate(upstream: nn.Module, rate: float) -> None:
    """The frame rate of a seqcomp student, frozen (in a FrozenTeacher) or not."""
    getattr(upstream, "upstream", upstream).rate = rate


def _at_rate(upstream, rate: float, wavs, lens):
    set_rate(upstream, rate)
    return upstream(wavs, lens)


class RateSearchTask(ProbeTask):
    """A task's preferred frame rate, learnt (#16 item 3; Chen et al. 2023 learn it rather
    than search a grid): the probe's head trains with each step's rate drawn from p, a
    softmax over the candidate rates, starting uniform; after each epoch every rate's dev
    error under the shared head moves p by :func:`hedge`, so the head trains more on the
    rates the task does well at. The error is PER or WER, 1 - accuracy, or the rate
    probe's MAE over its control's, each a fraction."""

    monitor = None  # the search keeps its last head and its draws

    def __init__(self, cfg: ProbeConfig, engine: Engine, upstream, parts, num_classes: int, target):
        super().__init__(cfg, engine, upstream, parts, num_classes, target, cache=True)
        self.rates = cfg.learn_rates
        self.caches = {r: StateCache(partial(_at_rate, upstream, r)) for r in self.rates}
        self.states = self.caches[self.rates[0]]
        self.logits = torch.zeros(len(self.rates), dtype=torch.float64)
        self.draws = torch.Generator().manual_seed(cfg.seed)
        self.drawn = [0] * len(self.rates)
        self.history: list[dict] = []
        self.unit = control(cfg.task, parts["train"], parts["dev"], target) if cfg.task == "rate" else 100.0

    def step(self, model, batch):
        k = int(torch.multinomial(self.logits.softmax(0), 1, generator=self.draws))
        self.states, self.drawn[k] = self.caches[self.rates[k]], self.drawn[k] + 1
        return super().step(model, batch)

    def validate(self, model) -> dict[str, float]:
        errors = []
        for r in self.rates:
            self.states = self.caches[r]
            dev = self.score("dev")
            errors.append(round((100.0 - dev if self.cfg.task in CLASSIFY else dev) / self.unit, 6))
        p = self.logits.softmax(0)
        self.history.append({"p": [round(float(x), 4) for x in p], "drawn": list(self.drawn), "dev_error": errors})
        self.logits = hedge(self.logits, errors, self.rates, self.cfg.rate_cost, self.cfg.rate_step)
        return {"expected_dev_error": float(p @ torch.tensor(errors, dtype=torch.float64))}


def learn_rate(upstream_path: str | Path, cfg: ProbeConfig, show_progress: bool = True) -> dict:
    """Search ``cfg.learn_rates`` for the rate ``upstream_path`` (a seqcomp student) does
    the task best at (less ``rate_cost`` per frame): -> the draws' history and the rate."""
    start = time.time()
    upstream = rated(load_upstream(upstream_path), upstream_path, "learn_rates")
    engine = Engine(EngineConfig(out_dir="", seed=cfg.seed, optim=_optim(cfg, cfg.rate_epochs), progress=show_progress))
    torch.manual_seed(cfg.seed)
    task = RateSearchTask(cfg, engine, FrozenTeacher(upstream), *probe_splits(cfg))
    engine.fit(task)
    p = task.logits.softmax(0)
    return {
        "rates": task.rates,
        "cost": cfg.rate_cost,
        "step": cfg.rate_step,
        "epochs": task.history,
        "p": [round(float(x), 4) for x in p],
        "rate": most_probable(p, task.rates),
        "seconds": round(time.time() - start, 1),
    }


def _optim(cfg: ProbeConfig, epochs: int) -> OptimConfig:
    return OptimConfig(
        lr=cfg.lr,
        weight_decay=0.01,
        warmup_steps=0,
        grad_clip=0.0 if cfg.tune == "frozen" else 5.0,
        max_epochs=epochs,
        schedule="constant",
        early_stop_patience=0,
    )


def probe(
    upstream_path: str | Path,
    cfg: ProbeConfig,
    out: str | Path | None = None,
    cache: bool = True,
    show_progress: bool = True,
) -> dict:
    """Train the probe head (and the tuned part of the upstream); returns (and writes to
    ``out``/probe-{task}.json) the scores."""
    result, _ = train_probe(upstream_path, cfg, cache, show_progress)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / f"probe-{cfg.task}.json", json.dumps(result, indent=1) + "\n")
    return result


def train_probe(
    upstream_path: str | Path, cfg: ProbeConfig, cache: bool = True, show_progress: bool = True
) -> tuple[dict, ProbeTask]:
    """The probe's scores, and the task with its trained head at the best dev epoch. With
    ``learn_rates``, the rate is learnt first and then probed as ``rate`` would be."""
    if cfg.learn_rates:
        search = learn_rate(upstream_path, cfg, show_progress)
        result, task = train_probe(
            upstream_path, replace(cfg, rate=search["rate"], learn_rates=[]), cache, show_progress
        )
        result |= {"rate": search["rate"], "rate_search": search, "config": asdict(cfg)}
        result["seconds"] += search["seconds"]
        return result, task
    start = time.time()
    engine = Engine(EngineConfig(out_dir="", seed=cfg.seed, optim=_optim(cfg, cfg.epochs), progress=show_progress))
    torch.manual_seed(cfg.seed)
    upstream = load_upstream(upstream_path)
    if cfg.rate:
        rated(upstream, upstream_path, "--rate").rate = cfg.rate
    counts = set_trainable(upstream, cfg.tune, cfg.tune_layers)
    if cfg.tune in ("adapters", "chapter"):
        adapters = add_adapters(upstream, cnn=cfg.tune == "chapter")
        counts["trainable"] = sum(p.numel() for p in adapters.parameters())
    if cfg.tune == "frozen":
        upstream = FrozenTeacher(upstream)
    parts, num_classes, target = probe_splits(cfg)
    task = ProbeTask(cfg, engine, upstream, parts, num_classes, target, cache)
    st = engine.fit(task)
    task.model.load_state_dict(task.best_state)
    test = task.score("test")
    result = {
        "upstream": str(upstream_path),
        "task": cfg.task,
        "metric": METRICS[cfg.task],
        "dev": st["best"],
        "test": test,
        "control": control(cfg.task, parts["train"], parts["test"], target),
        "tune": cfg.tune_name,
        "upstream_params_trained": counts["trainable"],
        "upstream_params": counts["total"],
        "head_params": sum(p.numel() for p in task.head.parameters()),
        "layer_weights": [round(float(w), 4) for w in task.head.featurizer.weights.detach().softmax(0)],
        "train_utterances": len(parts["train"]),
        "seconds": round(time.time() - start, 1),
        "history": st["history"],
        "config": asdict(cfg),
    }
    return result, task
